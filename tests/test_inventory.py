"""The servers of a fleet: `--ollama-url` values, the environment's list, and the servers file."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from ollama_gitops.reconciler.models.naming import dns1123_label_error
from ollama_gitops.reconciler.models.selector import IN, LabelSelector, Requirement
from ollama_gitops.reconciler.ollama.inventory import (
    DEFAULT_SERVER_NAME,
    MAX_SERVERS_FILE_BYTES,
    FileProblem,
    Inventory,
    InventoryError,
    Server,
    ServersFile,
    Snapshot,
    combine,
    derived_name,
    normalize_url,
    parse_ollama_url_list,
    parse_ollama_urls,
    parse_servers_file,
)
from ollama_gitops.reconciler.ollama.server import OllamaServer
from standins.ollama_server import OllamaStandin

# --------------------------------------------------------------------------- --ollama-url


@pytest.mark.parametrize("url", ["http://localhost:11434", "http://127.0.0.1:11434", "https://ollama.example.com",
                                 "http://gpu-1:11434/ollama", "http://[::1]:11434"])
def test_one_bare_url_is_the_default_server_with_its_url_as_given(url: str) -> None:
    assert parse_ollama_urls([url]) == Inventory((Server(DEFAULT_SERVER_NAME, url),))


def test_the_default_servers_name_does_not_depend_on_its_url() -> None:
    # Spelling the one server's URL another way keeps its identity (and so what was recorded for it).
    names = {parse_ollama_urls([url]).names for url in ("http://localhost:11434", "http://127.0.0.1:11434/")}
    assert names == {(DEFAULT_SERVER_NAME,)}


def test_one_server_given_the_old_way_talks_to_the_same_url_as_before() -> None:
    with OllamaStandin({"llama3.2:1b": 1_000}).start() as ollama:
        ollama.install("llama3.2:1b")
        [server] = parse_ollama_urls([ollama.url])
        assert server.url == ollama.url  # what the reconciler hands OllamaServer today
        assert list(OllamaServer(server.url, timeout=10).installed()) == ["llama3.2:1b"]


@pytest.mark.parametrize(("values", "expected"), [
    (["gpu-1=http://gpu-1:11434"], [("gpu-1", "http://gpu-1:11434")]),
    (["default=http://gpu-1:11434"], [("default", "http://gpu-1:11434")]),
    (["http://gpu-1:11434", "http://gpu-2:11434"], [("gpu-1-11434", "http://gpu-1:11434"), ("gpu-2-11434", "http://gpu-2:11434")]),
    (["http://gpu-1:11434", "big=http://gpu-2:11434/"], [("big", "http://gpu-2:11434"), ("gpu-1-11434", "http://gpu-1:11434")]),
    (["gpu-1", "gpu-2:8080"], [("gpu-1-11434", "http://gpu-1:11434"), ("gpu-2-8080", "http://gpu-2:8080")]),
    ([" a = http://a:1 ", "b=https://b"], [("a", "http://a:1"), ("b", "https://b")]),
    (["http://x:1/"], [("default", "http://x:1")]),
])
def test_named_and_several_servers(values: list[str], expected: list[tuple[str, str]]) -> None:
    assert [(s.name, s.url) for s in parse_ollama_urls(values)] == expected


@pytest.mark.parametrize(("url", "name"), [
    ("http://gpu-1:11434", "gpu-1-11434"),
    ("http://10.0.0.5:11434", "10-0-0-5-11434"),
    ("https://GPU.Example.com", "gpu-example-com-443"),
    ("http://gpu-1", "gpu-1-80"),
    ("http://[fd00::1]:11434", "fd00-1-11434"),
    ("http://ollama_1:11434", "ollama-1-11434"),
])
def test_derived_names(url: str, name: str) -> None:
    assert derived_name(url) == name
    assert dns1123_label_error(name) is None


def test_a_long_host_gets_a_short_stable_unique_name() -> None:
    one = derived_name("http://" + "a" * 70 + ".example.com:11434")
    other = derived_name("http://" + "a" * 70 + ".example.org:11434")
    assert len(one) <= 63 and dns1123_label_error(one) is None
    assert one == derived_name("http://" + "a" * 70 + ".example.com:11434")
    assert one != other


@pytest.mark.parametrize(("url", "expected"), [
    ("gpu-1", "http://gpu-1:11434"),
    ("gpu-1:8080", "http://gpu-1:8080"),
    ("gpu-1/ollama/", "http://gpu-1:11434/ollama"),
    ("[::1]", "http://[::1]:11434"),
    ("http://gpu-1", "http://gpu-1"),
    ("https://gpu-1:8443/", "https://gpu-1:8443"),
])
def test_urls_without_a_scheme_are_read_as_ollama_reads_ollama_host(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(("values", "fragment"), [
    (["GPU=http://a:1"], "the server name 'GPU' must consist of lower case letters"),
    (["=http://a:1"], "the server name '' must not be empty"),
    ([("a" * 64) + "=http://a:1"], "must be at most 63 characters"),
    (["ftp://a:1"], "must start with http:// or https://"),
    (["http://"], "has no host"),
    (["http://a:1/?x=1"], "must not have a query or a fragment"),
    (["http://a:1/#top"], "must not have a query or a fragment"),
    (["http://a:1/?"], "must not have a query or a fragment"),
    (["http://a:99999"], "is not a valid URL"),
    ([""], "the URL is empty"),
    ([], "no Ollama server given"),
    (["a=http://x:1", "a=http://y:1"], "two servers are named 'a'"),
    (["a=http://x:1", "b=http://X:1/"], "servers 'a' and 'b' are the same server"),
    (["http://x:1", "http://x:1"], "name servers with NAME=URL"),
    (["http://a.b:1", "http://a-b:1"], "two servers are named 'a-b-1'"),
])
def test_unusable_values_are_clear_errors(values: list[str], fragment: str) -> None:
    with pytest.raises(InventoryError) as raised:
        parse_ollama_urls(values)
    assert fragment in str(raised.value)
    assert str(raised.value).startswith("--ollama-url")


@pytest.mark.parametrize("value", ["http://admin:s3cret@gpu-1:11434", "gpu=https://admin:s3cret@gpu-1",
                                   "admin:s3cret@gpu-1:11434", "gpu = admin:s3cret@gpu-1", "http://admin@gpu-1"])
def test_credentials_are_refused_and_never_repeated(value: str) -> None:
    with pytest.raises(InventoryError) as raised:
        parse_ollama_urls([value])
    assert "user name or password" in str(raised.value)
    assert "s3cret" not in str(raised.value) and "admin" not in str(raised.value)


def test_the_environment_list() -> None:
    assert parse_ollama_url_list("http://localhost:11434").names == ("default",)
    inventory = parse_ollama_url_list("gpu-1=http://gpu-1:11434, gpu-2=http://gpu-2:11434")
    assert [(s.name, s.url) for s in inventory] == [("gpu-1", "http://gpu-1:11434"), ("gpu-2", "http://gpu-2:11434")]
    for text in ("http://a:1,", "http://a:1,,http://b:1", ""):
        with pytest.raises(InventoryError, match="^OLLAMA_GITOPS_OLLAMA_URL: an empty entry"):
            parse_ollama_url_list(text)
    with pytest.raises(InventoryError, match="^OLLAMA_GITOPS_OLLAMA_URL 'ftp://a'"):
        parse_ollama_url_list("http://a:1,ftp://a")
    with pytest.raises(InventoryError) as raised:
        parse_ollama_url_list("http://a:1,,http://admin:s3cret@b:1")
    assert "s3cret" not in str(raised.value) and "'http://a:1,,http://***@b:1'" in str(raised.value)


# --------------------------------------------------------------------------- Server and Inventory

def test_servers_are_frozen_and_hashable_with_read_only_labels() -> None:
    labels = {"zone": "eu", "gpu": "a100"}
    server = Server("gpu-1", "http://gpu-1:11434", labels)
    labels["zone"] = "us"  # the caller's dict is copied
    assert server.labels == {"gpu": "a100", "zone": "eu"}
    with pytest.raises(TypeError):
        server.labels["zone"] = "us"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.name = "x"  # type: ignore[misc]
    assert server == Server("gpu-1", "http://gpu-1:11434", {"zone": "eu", "gpu": "a100"})
    assert server != Server("gpu-1", "http://gpu-1:11434", {"zone": "us"})
    assert len({server, Server("gpu-1", "http://gpu-1:11434", {"gpu": "a100", "zone": "eu"})}) == 1


@pytest.mark.parametrize(("name", "url", "labels", "fragment"), [
    ("GPU", "http://gpu:11434", {}, "server name 'GPU' must consist of"),
    ("gpu", "ftp://gpu", {}, "must start with http:// or https://"),
    ("gpu", "http://u:secret@gpu:11434", {}, "user name or password"),
    ("gpu", "http://gpu:11434/", {}, "is not in its normal form ('http://gpu:11434')"),
    ("gpu", "gpu", {}, "is not in its normal form ('http://gpu:11434')"),
    ("gpu", "http://gpu:11434", {"-x": "y"}, "label -x='y'"),
    ("gpu", "http://gpu:11434", {"x": "y z"}, "label x='y z'"),
])
def test_a_server_made_directly_holds_to_the_same_rules(name: str, url: str, labels: dict, fragment: str) -> None:
    with pytest.raises(InventoryError) as raised:
        Server(name, url, labels)
    assert fragment in str(raised.value) and "secret" not in str(raised.value)


def test_inventory_sorts_selects_and_combines() -> None:
    fleet = Inventory((Server("gpu-2", "http://gpu-2:11434", {"gpu": "l4"}),
                       Server("gpu-1", "http://gpu-1:11434", {"gpu": "a100", "zone": "eu"}),
                       Server("cpu-1", "http://cpu-1:11434")))
    assert fleet.names == ("cpu-1", "gpu-1", "gpu-2")
    assert fleet.get("gpu-2") is not None and fleet.get("nope") is None
    assert [s.name for s in fleet.select(None)] == ["cpu-1", "gpu-1", "gpu-2"]
    assert [s.name for s in fleet.select(LabelSelector.everything())] == ["cpu-1", "gpu-1", "gpu-2"]
    assert [s.name for s in fleet.select(LabelSelector.of(None, Requirement("gpu", IN, ("a100", "h100"))))] == ["gpu-1"]
    assert fleet.select(LabelSelector.of({"zone": "us"})) == ()
    more = Inventory((Server("gpu-3", "http://gpu-3:11434"),))
    assert combine(fleet, more).names == ("cpu-1", "gpu-1", "gpu-2", "gpu-3")
    with pytest.raises(InventoryError, match="two servers are named 'gpu-1'"):
        combine(fleet, Inventory((Server("gpu-1", "http://other:1"),)))
    with pytest.raises(InventoryError, match="are the same server"):
        combine(fleet, Inventory((Server("other", "http://GPU-1:11434"),)))


# --------------------------------------------------------------------------- the servers file

GOOD_FILE = b"""\
# the fleet
servers:
  - {name: gpu-1, url: "http://gpu-1:11434", labels: {gpu: a100, zone: eu}}
  - name: gpu-2
    url: http://gpu-2:11434
    labels:
      gpu: l4
      nvidia.com/gpu.product: NVIDIA-L4
  - {name: cpu-1, url: "cpu-1"}
"""


def test_a_good_servers_file() -> None:
    result = parse_servers_file(GOOD_FILE)
    assert result == Inventory((
        Server("cpu-1", "http://cpu-1:11434"),
        Server("gpu-1", "http://gpu-1:11434", {"gpu": "a100", "zone": "eu"}),
        Server("gpu-2", "http://gpu-2:11434", {"gpu": "l4", "nvidia.com/gpu.product": "NVIDIA-L4"}),
    ))


def _problems(content: bytes) -> list[tuple[int | None, str]]:
    result = parse_servers_file(content)
    assert isinstance(result, tuple), result
    return [(p.line, p.message) for p in result]


@pytest.mark.parametrize(("content", "line", "fragment"), [
    (b"servers:\n  - {name: a, url: 'http://a:1'}\nservers: []\n", 3, "duplicate key 'servers' (first at line 1)"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    name: b\n", 4, "duplicate key 'name' (first at line 2)"),
    (b"server:\n  - {name: a, url: 'http://a:1'}\n", 1, "unknown field 'server'; did you mean 'servers'?"),
    (b"servers:\n  - {name: a, url: 'http://a:1'}\n  - {name: b, url: 'http://b:1', lables: {}}\n", 3,
     "unknown field 'servers[1].lables'; did you mean 'labels'?"),
    (b"servers:\n  - {name: a, url: 'http://a:1', weight: 2}\n", 2, "unknown field 'servers[0].weight' (allowed: name, url, labels)"),
    (b"servers:\n  - {url: 'http://a:1'}\n", 2, "'servers[0]' is missing its required field 'name'"),
    (b"servers:\n  - name: a\n", 2, "'servers[0]' is missing its required field 'url'"),
    (b"servers:\n  - {name: 123, url: 'http://a:1'}\n", 2, "'servers[0].name' must be a string, not a number: quote it (\"123\")"),
    (b"servers:\n  - {name: GPU, url: 'http://a:1'}\n", 2, "'servers[0].name' 'GPU' must consist of lower case letters"),
    (b"servers:\n  - name: a\n    url: ftp://a\n", 3, "'servers[0].url': 'ftp://a' must start with http:// or https://"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      zone: 1\n", 5,
     "'servers[0].labels.zone' must be a string, not a number: quote it (\"1\") to keep it as written"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      cuda: 12.10\n", 5,
     "YAML reads 12.10 as 12.1; quote it (\"12.10\")"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      spot: yes\n", 5, "must be a string, not a boolean"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      zone:\n", 5, "must be a string, not empty (null)"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      -zone: eu\n", 5, "has an invalid label key '-zone'"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels:\n      zone: eu west\n", 5,
     "'servers[0].labels.zone' has an invalid label value 'eu west'"),
    (b"servers:\n  - name: a\n    url: http://a:1\n    labels: [gpu]\n", 4, "'servers[0].labels' must be a mapping"),
    (b"servers:\n  - {name: a, url: 'http://a:1'}\n  - {name: a, url: 'http://b:1'}\n", 3,
     "'servers[1].name': a server named 'a' is already listed (at servers[0]); names must be unique"),
    (b"servers:\n  - {name: a, url: 'http://a:1'}\n  - {name: b, url: 'http://A:1/'}\n", 3,
     "'servers[1].url': http://A:1 is already listed as 'a' (at servers[0]); give each server once"),
    (b"servers:\n  - &one {name: a, url: 'http://a:1'}\n  - *one\n", 2, "anchors and aliases ('&', '*') are not allowed in a servers file (anchor at line 2)"),
    (b"base: &b {url: 'http://a:1'}\nservers:\n  - {<<: *b, name: a}\n", 3, "merge keys"),
    (b"servers:\n  - {name: a, url: 'http://a:1'}\n---\nservers: []\n", 3, "more than one YAML document"),
    (b"", None, "the servers file is empty"),
    (b"# nothing\n", None, "the servers file is empty"),
    (b"- {name: a}\n", 1, "a servers file must be a mapping with 'servers', not a list"),
    (b"servers: {name: a}\n", 1, "'servers' must be a list of {name, url, labels}, not a mapping"),
    (b"servers: []\n", 1, "'servers' lists no server"),
    (b"servers:\n", 1, "'servers' must be a list of {name, url, labels}, not empty (null)"),
    (b"servers:\n  - gpu-1\n", 2, "'servers[0]' must be a mapping with name, url and labels, not a string"),
    (b"servers:\n  - {name: a, url: 'http://a:1'\n", 3, "YAML syntax error"),
    (b"1: x\nservers: []\n", 1, "keys must be strings; quote the key '1'"),
    (b"servers:\n  - {name: a, url: \xff}\n", None, "not valid UTF-8"),
    (b"#" * (MAX_SERVERS_FILE_BYTES + 1), None, "over the 1048576-byte limit"),
])
def test_servers_file_problems_have_their_line(content: bytes, line: int | None, fragment: str) -> None:
    problems = _problems(content)
    assert any(fragment in message and found == line for found, message in problems), problems


def test_credentials_in_the_servers_file_are_refused_and_not_repeated() -> None:
    problems = _problems(b"servers:\n  - name: a\n    url: http://admin:s3cret@a:11434\n")
    assert problems[0][0] == 3 and "user name or password" in problems[0][1]
    assert "s3cret" not in repr(problems) and "admin" not in repr(problems)


def test_every_problem_of_a_file_at_once() -> None:
    problems = _problems(b"servers:\n  - {name: A, url: 'http://a:1'}\n  - {name: b, url: 'ftp://b'}\n")
    assert [line for line, _ in problems] == [2, 3]


def test_file_problems_format_like_validate() -> None:
    assert FileProblem("bad", 3).format("servers.yaml") == "servers.yaml:3: bad"
    assert FileProblem("bad").format("servers.yaml") == "servers.yaml: bad"


# --------------------------------------------------------------------------- ServersFile

def _write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def test_the_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, b"servers:\n  - {name: gpu-1, url: 'http://gpu-1:11434'}\n")
    servers = ServersFile(path)
    first = servers.snapshot
    assert first.inventory.names == ("gpu-1",) and first.problems == ()
    assert servers.refresh() is first  # unchanged: nothing parsed, the same snapshot

    _write(path, GOOD_FILE)
    changed = servers.refresh()
    assert changed.inventory.names == ("cpu-1", "gpu-1", "gpu-2") and changed.problems == ()
    assert changed.inventory.get("gpu-1").labels == {"gpu": "a100", "zone": "eu"}  # type: ignore[union-attr]


def test_a_broken_file_keeps_the_last_good_inventory(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, GOOD_FILE)
    servers = ServersFile(path)
    good = servers.snapshot.inventory

    for broken in (GOOD_FILE.replace(b"labels: {gpu: a100", b"lables: {gpu: a100"),  # a typo
                   b"",  # an editor that truncates before it writes
                   b"servers: []\n",
                   b"servers:\n  - {name: gpu-1, url: 'http://gpu-1:11434'\n"):
        _write(path, broken)
        snapshot = servers.refresh()
        assert snapshot.inventory == good, broken
        assert snapshot.problems, broken
    assert snapshot.problems[0].line == 3 and "YAML syntax error" in snapshot.problems[0].message

    _write(path, b"servers:\n  - {name: gpu-9, url: 'http://gpu-9:11434'}\n")
    fixed = servers.refresh()
    assert fixed.inventory.names == ("gpu-9",) and fixed.problems == ()


def test_a_missing_file_keeps_the_last_good_inventory_until_it_is_back(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, GOOD_FILE)
    servers = ServersFile(path)
    good = servers.snapshot.inventory
    path.unlink()
    gone = servers.refresh()
    assert gone.inventory == good
    assert [p.message for p in gone.problems] == ["cannot read the servers file: No such file or directory"]
    _write(path, GOOD_FILE)  # back with the very same content: in use again, no problem
    assert servers.refresh() == Snapshot(good)


def test_a_change_of_the_same_size_and_time_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, b"servers:\n  - {name: gpu-1, url: 'http://gpu-1:11434'}\n")
    servers = ServersFile(path)
    before = os.stat(path)
    with path.open("r+b") as file:  # same inode, same size
        file.write(b"servers:\n  - {name: gpu-2, url: 'http://gpu-2:11434'}\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same modification time
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert servers.refresh().inventory.names == ("gpu-2",)


def test_a_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, b"servers:\n  - {name: GPU, url: 'http://gpu:11434'}\n")
    with pytest.raises(InventoryError, match=re.escape(f"{path}:2: 'servers[0].name' 'GPU'")):
        ServersFile(path)
    with pytest.raises(InventoryError, match="cannot read the servers file: No such file"):
        ServersFile(tmp_path / "nope.yaml")


def test_servers_alongside_the_file_must_not_clash(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    _write(path, b"servers:\n  - {name: gpu-1, url: 'http://gpu-1:11434'}\n")
    alongside = parse_ollama_urls(["cpu=http://cpu:11434"])
    servers = ServersFile(path, alongside=alongside)
    assert servers.snapshot.inventory.names == ("gpu-1",)
    _write(path, b"servers:\n  - {name: cpu, url: 'http://gpu-1:11434'}\n")
    clash = servers.refresh()
    assert clash.inventory.names == ("gpu-1",)
    assert "two servers are named 'cpu'" in clash.problems[0].message
    with pytest.raises(InventoryError, match="named 'cpu'"):
        ServersFile(path, alongside=alongside)


def test_a_servers_file_nested_too_deep_is_a_problem_with_its_line_not_a_crash() -> None:
    """The servers file is read as strictly as a model file, nesting bound included (900 levels
    recursed past Python's limit in a builder of its own)."""
    from ollama_gitops.reconciler.ollama.inventory import parse_servers_file

    deep = b"servers:\n  - {name: a, url: 'http://a:1', labels: " + b"{x: " * 900 + b"y" + b"}" * 900 + b"}\n"
    (problem,) = parse_servers_file(deep)
    assert "nested more than 16 levels deep" in problem.message and problem.line == 2
