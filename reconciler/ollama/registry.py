"""What a pull would download: a model's manifest from its registry, and the bytes a server lacks.

Ollama pulls a model by fetching its manifest from a registry speaking the OCI distribution API,
then every blob the manifest names (its layers, then its config) that the server does not hold yet
(server/images.go `PullModel`, `pullModelManifest`, Ollama 0.13). This module asks the same
registry for the same manifest, so a plan can say how many bytes a pull would fetch
(`download_bytes`) and whether a tag has moved upstream (`Manifest.ollama_digest` against the digest
`/api/tags` reports), without pulling anything.

Where the manifest is (types/model/name.go, server/modelpath.go):

- a reference is `[host/][namespace/]model[:tag]`, with the defaults `registry.ollama.ai`,
  `library` and `latest`: `llama3.2` is
  `https://registry.ollama.ai/v2/library/llama3.2/manifests/latest`, `hf.co/bartowski/x:Q4_K_M` is
  `https://hf.co/v2/bartowski/x/manifests/Q4_K_M`;
- the scheme is https; `insecure=True` makes it http, as Ollama's pull option `insecure` does;
- `registry_url` (a mirror, `--registry-url` to be) replaces `https://registry.ollama.ai` for the
  models of the default registry; a model that names its own host is looked up there.
- the request is `GET` with `Accept: application/vnd.docker.distribution.manifest.v2+json`, the one
  media type Ollama asks for; redirects are followed, as Go's client does.

Lookups never raise for what the network or the registry does: the answer is a `Manifest`, a
`ManifestNotFound` (the registry said 404: no such model or tag) or a `ManifestUnknown`
(unreachable, timed out, refused, 5xx, or an answer that is not a manifest), so a plan shows sizes
as unknown instead of failing. No credentials are sent except those a `registry_url` carries, and
no message or field shows them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ..models.naming import DEFAULT_HOST, DEFAULT_NAMESPACE, OllamaName, parse_name
from .server import ModelOperationFailed, ServerUnreachable

DEFAULT_REGISTRY = DEFAULT_HOST

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
"""The only manifest media type Ollama accepts (its `Accept` header), and the one it writes."""
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE_PREFIX = "application/vnd.ollama.image."
"""Ollama's layers: `.model`, `.template`, `.params`, `.system`, `.license`, `.adapter`, `.projector`, `.messages`."""

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""A manifest is a few kilobytes; anything over this is refused as garbage before it is parsed."""

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")  # what Ollama's GetBlobsPath accepts
_CONTENT_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")  # the OCI digest grammar
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- references

@dataclass(frozen=True)
class RegistryReference:
    """A model reference resolved the way Ollama resolves it for a pull."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """Ollama's shortest spelling (`DisplayShortest`): `llama3.2:1b`, `acme/x:latest`, `hf.co/a/b:Q4`."""
        return OllamaName(self.host, self.namespace, self.model, self.tag).display_shortest()

    @property
    def repository(self) -> str:
        """`namespace/model`, the distribution API's repository name."""
        return f"{self.namespace}/{self.model}"


def parse_reference(reference: str) -> RegistryReference | None:
    """`reference` split and defaulted as Ollama's `model.ParseName` does (`naming.parse_name`); None
    when Ollama would refuse it as an invalid model name."""
    name = parse_name(reference)
    # Ollama pulls by the shortest display name (`DisplayShortest`), which leaves out a default host
    # or namespace whatever its case: they come back as the defaults, lowercase.
    host = DEFAULT_REGISTRY if name.host.lower() == DEFAULT_REGISTRY else name.host
    namespace = name.namespace
    if host == DEFAULT_REGISTRY and namespace.lower() == DEFAULT_NAMESPACE:
        namespace = DEFAULT_NAMESPACE
    resolved = RegistryReference(host, namespace, name.model, name.tag)
    if not (_valid_part(resolved.host, 350, ".:") and _valid_part(resolved.namespace, 80, "")
            and _valid_part(resolved.model, 80, ".") and _valid_part(resolved.tag, 80, ".")):
        return None  # a part promised by a separator but empty is naming.MISSING_PART: never valid
    return resolved


def _valid_part(text: str, longest: int, extra: str) -> bool:
    """Ollama's `isValidPart`: 1 to `longest` bytes, a letter, digit or '_' first, then those and
    '-' and the kind's `extra` characters."""
    if not 1 <= len(text) <= longest or not _word_char(text[0]):
        return False
    return all(_word_char(c) or c == "-" or c in extra for c in text[1:])


def _word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def manifest_url(reference: RegistryReference, registry_url: str | None = None, *, insecure: bool = False) -> str:
    """Where Ollama would fetch the manifest of `reference` (see the module docstring)."""
    return _base_url(reference, registry_url, insecure) + (
        f"/v2/{quote(reference.repository)}/manifests/{quote(reference.tag)}")


def _base_url(reference: RegistryReference, registry_url: str | None, insecure: bool) -> str:
    if registry_url is not None and reference.host == DEFAULT_REGISTRY:
        return registry_url.rstrip("/")
    return f"{'http' if insecure else 'https'}://{reference.host}"


def redact(url: str) -> str:
    """`url` without the user and password it may carry, for messages and fields."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Blob:
    """One blob of a manifest: a layer or the config."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Manifest:
    """A model's manifest as its registry serves it.

    `digest` is the registry's content digest: its `Docker-Content-Digest` header when it sends one,
    else `sha256:` of the bytes as served. `ollama_digest` is what Ollama would record after pulling
    it, the 64 hex digits `/api/tags` reports: Ollama writes the manifest it decoded re-encoded with
    Go's `json.Marshal` and hashes that file. For registry.ollama.ai the two agree (it serves the
    bytes Ollama pushed, which were written the same way); a mirror that reformats a manifest changes
    `digest`, never `ollama_digest`. Compare `ollama_digest` with a server's digest to see whether a
    tag has moved upstream.
    """

    reference: str
    url: str
    digest: str
    ollama_digest: str
    media_type: str
    layers: tuple[Blob, ...]
    config: Blob | None

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """What a pull fetches, in Ollama's order (the layers, then the config), each digest once."""
        seen: dict[str, Blob] = {}
        for blob in (*self.layers, *((self.config,) if self.config is not None else ())):
            seen.setdefault(blob.digest, blob)
        return tuple(seen.values())

    @property
    def total_bytes(self) -> int:
        """The bytes of every blob: what a pull onto an empty server fetches."""
        return sum(blob.size for blob in self.blobs)


@dataclass(frozen=True)
class ManifestNotFound:
    """The registry answered 404: it has no such model, or no such tag of it."""

    reference: str
    url: str
    message: str


@dataclass(frozen=True)
class ManifestUnknown:
    """No answer to rely on: the registry could not be reached, timed out, refused, failed, or sent
    something that is not a manifest. `reason` says which, without credentials."""

    reference: str
    url: str
    reason: str


ManifestLookup = Manifest | ManifestNotFound | ManifestUnknown
"""What `RegistryClient.manifest` answers."""


def download_bytes(manifest: Manifest, present: Set[str]) -> int:
    """The bytes a pull of `manifest` would fetch onto a server that holds the blobs `present`
    (digests as `sha256:<hex>`): the layers and config it lacks, each once."""
    return sum(blob.size for blob in manifest.blobs if blob.digest not in present)


class BlobHolder(Protocol):
    def has_blob(self, digest: str) -> bool:
        """Does the server hold this blob (Ollama's `HEAD /api/blobs/:digest`)?"""


def held_blobs(manifest: Manifest, server: BlobHolder) -> frozenset[str] | None:
    """The blobs of `manifest` that `server` already holds, asked one by one; None when the server
    could not answer (unreachable, or an error), so a caller leaves the size unknown."""
    try:
        return frozenset(blob.digest for blob in manifest.blobs if server.has_blob(blob.digest))
    except (ServerUnreachable, ModelOperationFailed):
        return None


# --------------------------------------------------------------------------- the client

class RegistryClient:
    """Looks up manifests in the registries models name (or a mirror of the default one).

    Thread-safe (one `httpx.Client`, whose pool is). `timeout` bounds each phase of a request
    (connect, read, write, pool), so a stalled registry costs at most about that much per lookup.
    """

    def __init__(self, registry_url: str | None = None, *, timeout: float = 10.0, insecure: bool = False,
                 user_agent: str = "ollama-gitops") -> None:
        if registry_url is not None:
            parts = urlsplit(registry_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"registry URL must be http:// or https:// with a host, not {_scrub(registry_url)!r}")
        self.registry_url = registry_url.rstrip("/") if registry_url is not None else None
        self.insecure = insecure
        self._http = httpx.Client(timeout=timeout, follow_redirects=True,
                                  headers={"Accept": MANIFEST_MEDIA_TYPE, "User-Agent": user_agent})

    def manifest(self, reference: str) -> ManifestLookup:
        """The manifest of `reference` in its registry; never raises for what the registry does."""
        resolved = parse_reference(reference)
        if resolved is None:
            return ManifestUnknown(reference, "", "invalid model name")
        url = manifest_url(resolved, self.registry_url, insecure=self.insecure)
        shown = redact(url)
        display = resolved.display
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code == 404:
                    return ManifestNotFound(display, shown, _error_detail(response) or "manifest unknown")
                if response.status_code in (401, 403):
                    return ManifestUnknown(display, shown, f"the registry refused access (HTTP {response.status_code}); "
                                                           "private models are not looked up")
                if response.status_code != 200:
                    detail = _error_detail(response)
                    return ManifestUnknown(display, shown, f"the registry answered HTTP {response.status_code}"
                                                           + (f": {detail}" if detail else ""))
                body = _read_bounded(response)
                header_digest = response.headers.get("Docker-Content-Digest", "").strip()
        except _TooLarge:
            return ManifestUnknown(display, shown, f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
        except httpx.TimeoutException:
            return ManifestUnknown(display, shown, "the registry did not answer in time")
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            return ManifestUnknown(display, shown, f"the registry is not reachable: {_reason(exc)}")
        except httpx.HTTPError as exc:  # the connection broke, a protocol error, too many redirects
            return ManifestUnknown(display, shown, f"the request to the registry failed: {_reason(exc)}")
        except httpx.InvalidURL as exc:  # a host Ollama's names allow but a URL cannot hold
            return ManifestUnknown(display, shown, f"not a usable registry URL: {_reason(exc)}")
        parsed = _decode_manifest(body)
        if isinstance(parsed, str):
            return ManifestUnknown(display, shown, f"the registry's answer is not a manifest: {parsed}")
        media_type, config, layers, ollama_bytes = parsed
        digest = header_digest if _CONTENT_DIGEST.fullmatch(header_digest) else f"sha256:{hashlib.sha256(body).hexdigest()}"
        return Manifest(display, shown, digest, hashlib.sha256(ollama_bytes).hexdigest(), media_type, layers, config)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _TooLarge(Exception):
    pass


def _read_bounded(response: httpx.Response, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _error_detail(response: httpx.Response) -> str:
    """The distribution error of an error answer, read no further than 64 KiB."""
    try:
        return _distribution_error(_read_bounded(response, 65536))
    except _TooLarge:
        return ""


def _reason(exc: BaseException) -> str:
    return _scrub(str(exc)) or type(exc).__name__


def _scrub(text: str) -> str:
    """`text` with any `user:password@` of a URL in it taken out."""
    return _USERINFO.sub(lambda m: m.group(1), text)


_USERINFO = re.compile(r"(^|//)[^/@\s]*@")


def _distribution_error(body: bytes) -> str:
    """The messages of a distribution error body, `{"errors": [{"code", "message"}]}`, else ''."""
    try:
        errors = json.loads(body).get("errors")
        return _scrub("; ".join(f"{e['code']}: {e['message']}" for e in errors))
    except (ValueError, AttributeError, TypeError, KeyError):
        return ""


# --------------------------------------------------------------------------- decoding as Go does

# Ollama's `Manifest` and `Layer` structs (server/manifest.go, server/layer.go): JSON names in field
# order, and whether the field is left out when empty (`omitempty`).
_MANIFEST_FIELDS = ("schemaVersion", "mediaType", "config", "layers")
_LAYER_FIELDS = ("mediaType", "digest", "size", "from")


def _decode_manifest(body: bytes) -> tuple[str, Blob | None, tuple[Blob, ...], bytes] | str:
    """(media type, config, layers, the bytes Ollama would write) or why the body is not a manifest.

    Decodes like Go's `encoding/json` into Ollama's structs: field names match case-insensitively,
    the last of repeated keys wins, unknown keys and nulls are ignored, a wrongly typed value is an
    error; the bytes are what `json.Marshal` makes of the result.
    """
    try:
        document = json.loads(body, object_pairs_hook=_Object)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not JSON ({exc})"
    try:
        fields = _go_struct(document, _MANIFEST_FIELDS, "manifest")
        schema_version = _go_int(fields.get("schemaVersion", 0), "schemaVersion")
        media_type = _go_string(fields.get("mediaType", ""), "mediaType")
        config = _go_layer(fields["config"], "config") if "config" in fields else None
        layers_value = fields.get("layers")
        if layers_value is not None and (not isinstance(layers_value, list) or isinstance(layers_value, _Object)):
            raise _NotAManifest("'layers' is not a list")
        layers = None if layers_value is None else [_go_layer(item, f"layers[{i}]") for i, item in enumerate(layers_value)]
    except _NotAManifest as exc:
        return str(exc)
    if "layers" not in fields and "config" not in fields:
        return "no layers and no config (an index or another kind of document?)"
    empty = {"mediaType": "", "digest": "", "size": 0}
    marshalled = _go_marshal({"schemaVersion": schema_version, "mediaType": media_type,
                              "config": _layer_document(config) if config else empty,
                              "layers": None if layers is None else [_layer_document(layer) for layer in layers]})
    blobs = tuple(Blob(layer["digest"], layer["size"], layer["mediaType"]) for layer in layers or [])
    config_blob = Blob(config["digest"], config["size"], config["mediaType"]) if config and config["digest"] else None
    for blob in (*blobs, *((config_blob,) if config_blob else ())):
        if not _DIGEST.fullmatch(blob.digest):
            return f"{blob.digest!r} is not a sha256 digest"
        if blob.size < 0:
            return f"blob {blob.digest} has a negative size"
    return media_type, config_blob, blobs, marshalled


class _NotAManifest(Exception):
    pass


class _Object(list):  # type: ignore[type-arg]
    """A decoded JSON object: its (key, value) pairs in order, repeated keys kept, as Go sees them."""


def _go_struct(value: Any, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, _Object):
        raise _NotAManifest(f"{what} is not a JSON object")
    fields: dict[str, Any] = {}
    for key, item in value:
        name = key if key in names else next((n for n in names if n.lower() == key.lower()), None)
        if name is not None and item is not None:
            fields[name] = item
    return fields


def _go_layer(value: Any, what: str) -> dict[str, Any]:
    fields = _go_struct(value, _LAYER_FIELDS, what)
    return {"mediaType": _go_string(fields.get("mediaType", ""), f"{what}.mediaType"),
            "digest": _go_string(fields.get("digest", ""), f"{what}.digest"),
            "size": _go_int(fields.get("size", 0), f"{what}.size"),
            "from": _go_string(fields.get("from", ""), f"{what}.from")}


def _layer_document(layer: dict[str, Any]) -> dict[str, Any]:
    document = {"mediaType": layer["mediaType"], "digest": layer["digest"], "size": layer["size"]}
    if layer["from"]:  # `json:"from,omitempty"`
        document["from"] = layer["from"]
    return document


def _go_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise _NotAManifest(f"'{what}' is not an integer")
    return value


def _go_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _NotAManifest(f"'{what}' is not a string")
    return value


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_marshal(document: Any) -> bytes:
    """Go's `json.Marshal` of `document` (dicts in the order given): compact, HTML-safe escapes,
    invalid UTF-16 replaced by U+FFFD."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    text = _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group(0)], _SURROGATE.sub("\ufffd", text))
    return text.encode("utf-8")


def unique_digests(manifests: Iterable[Manifest]) -> frozenset[str]:
    """Every blob digest of `manifests`: what a caller asks a server about once for several pulls."""
    return frozenset(blob.digest for manifest in manifests for blob in manifest.blobs)
