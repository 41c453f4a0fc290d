"""The servers of a fleet: who they are (`Server`), from `--ollama-url` and from a servers file.

Three ways to say which Ollama servers ollama-gitops keeps in line (issue 12, "The servers"):

- `--ollama-url`, any number of times, each `URL` or `NAME=URL` (`parse_ollama_urls`);
- `OLLAMA_GITOPS_OLLAMA_URL`, the same as a comma-separated list (`parse_ollama_url_list`);
- a servers file, YAML, re-read when it changes (`parse_servers_file`, `ServersFile`):

  ```yaml
  servers:
    - {name: gpu-1, url: "http://gpu-1:11434", labels: {gpu: a100, zone: eu}}
    - {name: gpu-2, url: "http://gpu-2:11434", labels: {gpu: l4}}
  ```

Names are DNS-1123 labels (they name servers in the API, in metrics and in Kubernetes), unique in
a fleet; URLs are unique too (two names for one server would pull and prune twice). Labels follow
Kubernetes's rules (`models.selector`), as `servers:` selectors match them.

**The name of one server given the old way is `default`.** A single `--ollama-url URL` without a
name (or `$OLLAMA_HOST`, or nothing: the default URL) is the server ollama-gitops has always had,
and it keeps behaving exactly as before only if its identity does not depend on its URL: what was
recorded for it (which models ollama-gitops pulled there, and so may prune) stays attached when the
URL is spelled another way (`localhost` to `127.0.0.1`) or the server moves. `default=URL` names it
so explicitly; any other name makes it a new server. With several servers, a bare URL is named after
its host and port (`http://gpu-1:11434` is `gpu-1-11434`), stable as long as they are.

URLs: `http://` or `https://` with a host, no query or fragment. A URL without a scheme is read as
Ollama reads `OLLAMA_HOST`: `gpu-1` is `http://gpu-1:11434`. A URL with a user name or password is
refused (the official client drops them, so some calls would carry them and others not), and no
message repeats them.

A servers file is parsed as strictly as a model file: duplicate keys, unknown fields (with a "did
you mean"), anchors and aliases, several documents, non-string keys, and values YAML silently
retypes (`zone: 1`) are errors with their line. `ServersFile` keeps the last good inventory when the
file becomes broken, unreadable or empty, with the problems beside it: a typo never empties the
fleet, and so never makes servers vanish (nothing is pruned on a server that left the inventory,
but nothing would be kept in line on it either).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ..models.naming import dns1123_label_error
from ..models.selector import (
    LabelSelector,
    label_key_errors,
    label_value_errors,
    not_a_string_message,
    type_name,
    unknown_field_message,
)

DEFAULT_SERVER_NAME = "default"
"""The name of the one server given without a name (see the module docstring)."""

OLLAMA_DEFAULT_PORT = 11434
MAX_SERVERS_FILE_BYTES = 1024 * 1024
"""A servers file larger than this is refused before it is parsed (thousands of servers fit in far less)."""

_SERVER_FIELDS = ("name", "url", "labels")
_FILE_FIELDS = ("servers",)


class InventoryError(ValueError):
    """Servers given on the command line or in the environment that cannot be used; the message
    says which value and why (without credentials)."""


@dataclass(frozen=True)
class Server:
    """One Ollama server of the fleet.

    `url` is what the Ollama edge is given (`OllamaServer(url)`), never with credentials; `labels`
    is a read-only mapping, matched by `servers:` selectors (`LabelSelector.matches(server.labels)`).
    """

    name: str
    url: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(sorted(self.labels.items()))))
        # Checked here too, so a server made by other code (discovery) holds to the same rules.
        if error := dns1123_label_error(self.name):
            raise InventoryError(f"server name {self.name!r} {error}")
        try:
            if normalize_url(self.url) != self.url:
                raise ValueError(f"{_masked(self.url)!r} is not in its normal form ({_masked(normalize_url(self.url))!r})")
        except ValueError as exc:
            raise InventoryError(f"server '{self.name}': {exc}") from None
        for key, value in self.labels.items():
            if problems := label_key_errors(key) + label_value_errors(value):
                raise InventoryError(f"server '{self.name}': label {key}={value!r}: {'; '.join(problems)}")

    def __repr__(self) -> str:
        return f"Server(name={self.name!r}, url={self.url!r}, labels={dict(self.labels)!r})"


@dataclass(frozen=True)
class Inventory:
    """The servers of a fleet, sorted by name; names and URLs unique (checked on construction)."""

    servers: tuple[Server, ...] = ()

    def __post_init__(self) -> None:
        servers = tuple(sorted(self.servers, key=lambda s: s.name))
        object.__setattr__(self, "servers", servers)
        problem = _duplicate(servers)
        if problem:
            raise InventoryError(problem)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(server.name for server in self.servers)

    def get(self, name: str) -> Server | None:
        """The server called `name`, if there is one."""
        return next((server for server in self.servers if server.name == name), None)

    def select(self, selector: LabelSelector | None) -> tuple[Server, ...]:
        """The servers a `servers:` selector places a model on, by name; None (no `servers:`) is all."""
        if selector is None:
            return self.servers
        return tuple(server for server in self.servers if selector.matches(server.labels))

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)


def combine(*inventories: Inventory) -> Inventory:
    """The servers of several sources together (e.g. `--ollama-url` and a servers file);
    `InventoryError` when a name or a URL is in more than one."""
    return Inventory(tuple(server for inventory in inventories for server in inventory))


def _duplicate(servers: Sequence[Server]) -> str | None:
    names: dict[str, Server] = {}
    endpoints: dict[tuple[str, str, int, str], Server] = {}
    for server in servers:
        if server.name in names:
            return f"two servers are named '{server.name}' ({names[server.name].url} and {server.url}); names must be unique"
        names[server.name] = server
        endpoint = _endpoint(server.url)
        if endpoint in endpoints:
            return (f"servers '{endpoints[endpoint].name}' and '{server.name}' are the same server ({server.url}); "
                    "give each server once")
        endpoints[endpoint] = server
    return None


# --------------------------------------------------------------------------- URLs

def normalize_url(text: str) -> str:
    """The URL the Ollama edge is given for `text`, or `ValueError` saying why there is none.

    A URL with a scheme is kept as written (trailing '/' aside), so one server given the old way
    talks to exactly the same URL as before; one without a scheme is completed as Ollama completes
    `OLLAMA_HOST` (`http://`, port 11434).
    """
    text = text.strip()
    if not text:
        raise ValueError("the URL is empty")
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{_masked(text)!r} is not a valid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{_masked(text)!r} has a user name or password in it; Ollama's client drops them, "
                         "so ollama-gitops refuses them rather than send them on some calls only: remove them")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{text!r} must not have a query or a fragment")
    if "://" not in text and port is None:
        host = parts.netloc
        url = f"http://{host}:{OLLAMA_DEFAULT_PORT}{parts.path}"
    return url.rstrip("/")


def _endpoint(url: str) -> tuple[str, str, int, str]:
    """What makes two URLs the same server: scheme, host (case-insensitive), port, path."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    return parts.scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def derived_name(url: str) -> str:
    """The name of a bare URL among several: its host and port as a DNS-1123 label
    (`http://gpu-1:11434` -> `gpu-1-11434`, `http://10.0.0.5:11434` -> `10-0-0-5-11434`); over 63
    characters, cut and ended with a hash of the host and port, so it stays unique and stable."""
    _, host, port, _ = _endpoint(url)
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", f"{host}-{port}")).strip("-")
    if len(name) > 63:
        import hashlib  # (~3.5 ms, OpenSSL's) for a name this long only

        name = name[:54].rstrip("-") + "-" + hashlib.sha256(f"{host}:{port}".encode()).hexdigest()[:8]
    return name


def _masked(text: str) -> str:
    """`text` with the user and password of a URL (with a scheme or without) replaced by `***`."""
    return re.sub(r"^(\s*(?:[^=:/]*=)?\s*(?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@", r"\1***@", text)


_NAME_PREFIX = re.compile(r"([^=:/]*)=(.*)", re.DOTALL)


def parse_ollama_urls(values: Iterable[str], *, source: str = "--ollama-url") -> Inventory:
    """The servers of `--ollama-url` values, each `URL` or `NAME=URL`; `InventoryError` naming the
    `source` and the value when one cannot be used. One value without a name is `default`."""
    given: list[tuple[str | None, str]] = []
    for value in values:
        match = _NAME_PREFIX.fullmatch(value.strip())
        name, text = (match.group(1).strip(), match.group(2)) if match else (None, value)
        if name is not None:
            error = dns1123_label_error(name) if name else "must not be empty"
            if error:
                raise InventoryError(f"{source} {_masked(value)!r}: the server name {name!r} {error}")
        try:
            url = normalize_url(text)
        except ValueError as exc:
            raise InventoryError(f"{source} {_masked(value)!r}: {exc}") from None
        given.append((name, url))
    if not given:
        raise InventoryError(f"{source}: no Ollama server given")
    if len(given) == 1 and given[0][0] is None:
        return Inventory((Server(DEFAULT_SERVER_NAME, given[0][1]),))
    servers = [Server(name if name is not None else derived_name(url), url) for name, url in given]
    try:
        return Inventory(tuple(servers))
    except InventoryError as exc:
        raise InventoryError(f"{source}: {exc} (name servers with NAME=URL)") from None


def parse_ollama_url_list(text: str, *, source: str = "OLLAMA_GITOPS_OLLAMA_URL") -> Inventory:
    """`parse_ollama_urls` of a comma-separated list (the environment variable's form)."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        shown = ",".join(_masked(item) for item in text.split(","))
        raise InventoryError(f"{source}: an empty entry in {shown!r} (two commas in a row, or one at an end?)")
    return parse_ollama_urls(items, source=source)


# --------------------------------------------------------------------------- the servers file

@dataclass(frozen=True)
class FileProblem:
    """Something wrong in a servers file: a message and, where known, the 1-based line."""

    message: str
    line: int | None = None

    def format(self, path: str | Path) -> str:
        """`path:line: message`, as `validate` prints problems."""
        return f"{path}:{self.line}: {self.message}" if self.line else f"{path}: {self.message}"


ParseResult = Inventory | tuple[FileProblem, ...]
"""What `parse_servers_file` gives: the inventory, or every problem that stops it."""


def parse_servers_file(content: bytes) -> ParseResult:
    """The inventory a servers file's bytes describe, or its problems. Never raises for bad input."""
    if len(content) > MAX_SERVERS_FILE_BYTES:
        return (FileProblem(f"the file is {len(content)} bytes, over the {MAX_SERVERS_FILE_BYTES}-byte limit "
                            "for a servers file"),)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (FileProblem(f"the file is not valid UTF-8 (byte {exc.start})"),)
    from ..models import strictyaml  # PyYAML, ~20 ms to import: only when there is a servers file to read

    try:
        loaded = strictyaml.load(text, strictyaml.Wording(**_WORDING))
    except strictyaml.Rejected as rejected:
        return (FileProblem(rejected.message, rejected.line),)
    document, lines, raw = loaded.value, loaded.lines, loaded.raw_scalars
    problems: list[FileProblem] = []

    def problem(path: tuple[str | int, ...], message: str) -> None:
        problems.append(FileProblem(message, strictyaml.line_for(path, lines)))

    if not isinstance(document, dict):
        return (FileProblem(f"a servers file must be a mapping with 'servers', not {type_name(document)}", strictyaml.line_for((), lines)),)
    _unknown_fields(document, _FILE_FIELDS, (), problem)
    entries = document.get("servers")
    if "servers" not in document:
        problem((), "missing required field 'servers'")
    elif not isinstance(entries, list):
        problem(("servers",), f"'servers' must be a list of {{name, url, labels}}, not {type_name(entries)}")
    elif not entries:
        problem(("servers",), "'servers' lists no server; a fleet needs at least one")
    servers: list[tuple[Server, tuple[str | int, ...]]] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        server = _server_entry(entry, ("servers", index), raw, problem)
        if server is not None:
            servers.append((server, ("servers", index)))
    _duplicates(servers, problem)
    if problems:
        return tuple(problems)
    return Inventory(tuple(server for server, _ in servers))


def _server_entry(entry: Any, path: tuple[str | int, ...], raw: Mapping[tuple[str | int, ...], str],
                  problem: Any) -> Server | None:
    where = f"servers[{path[-1]}]"
    if not isinstance(entry, dict):
        problem(path, f"'{where}' must be a mapping with name, url and labels, not {type_name(entry)}")
        return None
    before = len(_unknown_fields(entry, _SERVER_FIELDS, path, problem))
    ok = before == 0
    values: dict[str, str] = {}
    for name in ("name", "url"):
        if name not in entry:
            problem(path, f"'{where}' is missing its required field '{name}'")
            ok = False
        elif not isinstance(entry[name], str):
            problem(path + (name,), not_a_string_message(f"'{where}.{name}'", entry[name], raw.get(path + (name,))))
            ok = False
        else:
            values[name] = entry[name]
    if "name" in values and (error := dns1123_label_error(values["name"])):
        problem(path + ("name",), f"'{where}.name' {values['name']!r} {error}")
        ok = False
    url = None
    if "url" in values:
        try:
            url = normalize_url(values["url"])
        except ValueError as exc:
            problem(path + ("url",), f"'{where}.url': {exc}")
            ok = False
    labels: dict[str, str] = {}
    if "labels" in entry:
        if not isinstance(entry["labels"], dict):
            problem(path + ("labels",), f"'{where}.labels' must be a mapping of label keys to values, "
                                        f"not {type_name(entry['labels'])}")
            ok = False
        else:
            for key, value in entry["labels"].items():
                key_path = path + ("labels", key)
                if key_errors := label_key_errors(key):
                    problem(key_path, f"'{where}.labels' has an invalid label key {key!r}: {'; '.join(key_errors)}")
                    ok = False
                if not isinstance(value, str):
                    problem(key_path, not_a_string_message(f"'{where}.labels.{key}'", value, raw.get(key_path)))
                    ok = False
                elif value_errors := label_value_errors(value):
                    problem(key_path, f"'{where}.labels.{key}' has an invalid label value {value!r}: "
                                      f"{'; '.join(value_errors)}")
                    ok = False
                else:
                    labels[key] = value
    if not ok or url is None:
        return None
    return Server(values["name"], url, labels)


def _duplicates(servers: list[tuple[Server, tuple[str | int, ...]]], problem: Any) -> None:
    names: dict[str, tuple[str | int, ...]] = {}
    endpoints: dict[tuple[str, str, int, str], tuple[Server, tuple[str | int, ...]]] = {}
    for server, path in servers:
        if server.name in names:
            problem(path + ("name",), f"'{_path_text(path)}.name': a server named '{server.name}' is already listed "
                                      f"(at {_path_text(names[server.name])}); names must be unique")
        else:
            names[server.name] = path
        endpoint = _endpoint(server.url)
        if endpoint in endpoints:
            first, first_path = endpoints[endpoint]
            problem(path + ("url",), f"'{_path_text(path)}.url': {server.url} is already listed as '{first.name}' "
                                     f"(at {_path_text(first_path)}); give each server once")
        else:
            endpoints[endpoint] = (server, path)


def _path_text(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else part for part in path)


def _unknown_fields(document: dict[str, Any], allowed: tuple[str, ...], path: tuple[str | int, ...],
                    problem: Any) -> list[str]:
    unknown = [name for name in document if name not in allowed]
    for name in unknown:
        where = f"{_path_text(path)}.{name}" if path else name
        problem(path + (name,), unknown_field_message(f"'{where}'", name, allowed))
    return unknown


_WORDING = dict(  # strictyaml.Wording's
    files="a servers file",
    several="more than one YAML document ('---') in the servers file",
    empty="the servers file is empty; it needs 'servers:' and at least one server",
    depth="a servers file needs four (the file, its list of servers, a server, its labels)",
)


# --------------------------------------------------------------------------- a file that changes

@dataclass(frozen=True)
class Snapshot:
    """The servers file as `ServersFile.refresh` last saw it.

    `inventory` is the last good inventory (what to use); `problems` say why the file's current
    content is not used (empty when it is): a caller reports them and carries on with `inventory`.
    """

    inventory: Inventory
    problems: tuple[FileProblem, ...] = ()


class ServersFile:
    """A servers file, re-read when its content changes; never worse than its last good content.

    The first read happens on construction and must succeed (`InventoryError`: a service does not
    start on a broken servers file). After that, `refresh()` re-reads the file: good new content
    replaces the inventory; broken, empty, unreadable or missing content keeps the last good one
    and is reported in the snapshot's `problems`. The content is compared with the last on every
    refresh (it is at most `MAX_SERVERS_FILE_BYTES`), so a change is seen even when the size and the
    modification time stay the same (an edit within the file system's clock tick); a refresh of an
    unchanged file parses nothing. Thread-safe.

    `alongside` are servers given elsewhere (`--ollama-url`): new content whose names or URLs clash
    with theirs is a problem like any other.
    """

    def __init__(self, path: str | Path, *, alongside: Inventory | None = None) -> None:
        self.path = Path(path)
        self._alongside = alongside or Inventory()
        self._lock = threading.Lock()
        content = self._read()
        if isinstance(content, FileProblem):
            raise InventoryError(content.format(self.path))
        result = self._parse(content)
        if not isinstance(result, Inventory):
            raise InventoryError("\n".join(p.format(self.path) for p in result))
        self._content: bytes | None = content
        self._snapshot = Snapshot(result)

    @property
    def snapshot(self) -> Snapshot:
        """What the last `refresh` (or the construction) found, without reading the file."""
        with self._lock:
            return self._snapshot

    def refresh(self) -> Snapshot:
        """Read the file again; see the class docstring."""
        with self._lock:
            content = self._read()
            if isinstance(content, FileProblem):
                self._content = None  # whatever comes back next is read in full
                self._snapshot = Snapshot(self._snapshot.inventory, (content,))
                return self._snapshot
            if content == self._content:
                return self._snapshot
            self._content = content
            result = self._parse(content)
            if isinstance(result, Inventory):
                self._snapshot = Snapshot(result)
            else:
                self._snapshot = Snapshot(self._snapshot.inventory, result)
            return self._snapshot

    def _read(self) -> bytes | FileProblem:
        try:
            with self.path.open("rb") as file:
                content = file.read(MAX_SERVERS_FILE_BYTES + 1)
        except OSError as exc:
            return FileProblem(f"cannot read the servers file: {exc.strerror or exc}")
        return content

    def _parse(self, content: bytes) -> ParseResult:
        result = parse_servers_file(content)
        if isinstance(result, Inventory) and len(self._alongside):
            try:
                combine(self._alongside, result)
            except InventoryError as exc:
                return (FileProblem(f"{exc} (with the servers given by --ollama-url)"),)
        return result


# --------------------------------------------------------------------------- where the inventory comes from

@runtime_checkable
class InventorySource(Protocol):
    """Where the fleet's servers come from; asked at the start of every cycle. `refresh()` is cheap
    when nothing changed, and never worse than the last good inventory (its `problems` say why the
    newest content is not used)."""

    def refresh(self) -> Snapshot: ...


class StaticInventory:
    """Servers given once (`--ollama-url`): the same inventory at every refresh."""

    def __init__(self, inventory: Inventory) -> None:
        self._snapshot = Snapshot(inventory)

    def refresh(self) -> Snapshot:
        return self._snapshot


class FileInventory:
    """A servers file (re-read when it changes), plus the servers given by `--ollama-url` beside it.

    Its problems come formatted (`path:line: message`), as a cycle reports them."""

    def __init__(self, path: str | Path, *, alongside: Inventory | None = None) -> None:
        self._alongside = alongside or Inventory()
        self.file = ServersFile(path, alongside=self._alongside)

    @property
    def path(self) -> Path:
        return self.file.path

    def refresh(self) -> Snapshot:
        snapshot = self.file.refresh()
        problems = tuple(FileProblem(p.format(self.file.path)) for p in snapshot.problems)
        return Snapshot(combine(self._alongside, snapshot.inventory), problems)
