"""A stand-in for an Ollama model registry (registry.ollama.ai, or a mirror), for tests.

A real HTTP server on loopback that speaks the part of the OCI distribution API Ollama's pulls use
(server/images.go, server/download.go, Ollama 0.13), answering as a distribution registry does:

* ``GET /v2/``                                  -> 200 ``{}`` (the API version check)
* ``GET|HEAD /v2/<ns>/<model>/manifests/<tag>`` -> 200, the manifest as Ollama pushed it (Go's
  compact ``json.Marshal``), ``Content-Type`` its media type, ``Docker-Content-Digest`` the sha256
  of those bytes; a manifest can be fetched by that digest too. The request's ``Accept`` must allow
  ``application/vnd.docker.distribution.manifest.v2+json`` (Ollama sends exactly that; ``*/*``
  does too), else 404 ``MANIFEST_UNKNOWN``, as a distribution registry answers a client that does
  not accept the manifest's type.
* unknown repository or tag -> 404 ``{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",...}]}``
* ``GET|HEAD /v2/<ns>/<model>/blobs/<digest>``  -> 200 with the bytes (``Range: bytes=a-b`` gives
  206, as Ollama's chunked download asks), ``Docker-Content-Digest``; unknown: 404 ``BLOB_UNKNOWN``
* anything else -> 404 ``404 page not found``; a method other than GET/HEAD -> 405 ``UNSUPPORTED``

Every response carries ``Docker-Distribution-Api-Version: registry/2.0``. Repository names and tags
are matched case-insensitively, as Ollama compares names.

Models are seeded from a catalogue ``{"name:tag": total bytes}``; each gets Ollama's layer kinds: a
``.model`` layer (most of the bytes), ``.template`` and ``.license`` layers shared by every tag of
the same model (as real tags share them), a ``.params`` layer, and a config blob, totalling exactly
the given size. Blob contents are real bytes held in memory (their digests are their sha256), so
keep sizes small (kilobytes to a few megabytes). ``add_model(..., manifest_bytes=...)`` serves
exact bytes instead, e.g. a mirror's reformatted manifest or garbage.

Test hooks: ``requests`` (method, path, headers of every request), ``content_digest`` (``""``:
the true digest, the default; ``None``: no ``Docker-Content-Digest`` header on manifests, as some
proxies leave it out; any other string: sent as the header), ``fail_requests`` (answer
every request with a status, e.g. 503), ``hold_requests`` (block answers until released: a
registry that does not answer in time), ``stop``/``restart`` (connection refused, then back).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["RegistryRequest", "RegistryStandin", "StandinBlob"]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"

_MANIFESTS = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOBS = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class StandinBlob:
    """A blob the registry serves: its media type and its bytes."""

    media_type: str
    content: bytes

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.content).hexdigest()}"

    @property
    def size(self) -> int:
        return len(self.content)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class RegistryRequest:
    """One request the registry received; header names lower-cased."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Model:
    manifest: bytes
    media_type: str


def _split(reference: str) -> tuple[str, str]:
    """``name:tag`` -> (``namespace/model``, tag), with Ollama's defaults, lower-cased for lookups."""
    name, _, tag = reference.rpartition(":") if reference.rfind(":") > reference.rfind("/") else (reference, "", "")
    parts = name.split("/")
    repository = "/".join(parts[-2:]) if len(parts) >= 2 else f"library/{name}"
    return repository.lower(), (tag or "latest").lower()


def _pattern(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class RegistryStandin:
    """The registry stand-in (see the module docstring). ``catalogue``: ``{"name:tag": bytes}``."""

    def __init__(self, catalogue: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Model] = {}
        self._by_digest: dict[tuple[str, str], _Model] = {}
        self._blobs: dict[str, StandinBlob] = {}
        self._failure: tuple[int, bytes, str] | None = None
        self._held = threading.Event()
        self._held.set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.requests: list[RegistryRequest] = []
        self.content_digest: str | None = ""
        for reference, size in (catalogue or {}).items():
            self.add_model(reference, size)

    # -- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; stays valid after ``stop()`` (then refused)."""
        if self._port is None:
            raise RuntimeError("the registry stand-in has not been started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the host part of a model reference that names this registry."""
        return self.url.removeprefix("http://")

    def start(self) -> RegistryStandin:
        server = _Server(("127.0.0.1", self._port or 0), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"registry-standin-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket and cut open connections: connecting is refused afterwards. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._held.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join()

    def restart(self) -> None:
        """Serve again on the same port, with the same models."""
        self.stop()
        self.start()

    def __enter__(self) -> RegistryStandin:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- content

    def add_model(self, reference: str, size: int | None = None, *, layers: list[StandinBlob] | None = None,
                  config: StandinBlob | None = None, manifest_bytes: bytes | None = None) -> str:
        """Serve a manifest for ``reference`` (``name:tag``, a tag moves when added again) and return
        its digest. Give ``size`` for generated layers, or ``layers`` and ``config``, or the exact
        ``manifest_bytes`` to serve (its blobs are then not served)."""
        blobs: list[StandinBlob] = []
        if manifest_bytes is None:
            if layers is None:
                if size is None:
                    raise ValueError("give size, layers or manifest_bytes")
                layers, config = self._generated(reference, size)
            blobs = [*layers, *([config] if config else [])]
            document = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                        "config": config.descriptor() if config else {"mediaType": "", "digest": "", "size": 0},
                        "layers": [layer.descriptor() for layer in layers]}
            manifest_bytes = json.dumps(document, separators=(",", ":")).encode()
        model = _Model(manifest_bytes, MANIFEST_MEDIA_TYPE)
        digest = f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}"
        repository, tag = _split(reference)
        with self._lock:
            self._models[(repository, tag)] = model
            self._by_digest[(repository, digest)] = model
            for blob in blobs:
                self._blobs[blob.digest] = blob
        return digest

    def remove_model(self, reference: str) -> None:
        """Stop serving the tag ``reference`` (its blobs stay)."""
        with self._lock:
            del self._models[_split(reference)]

    def manifest(self, reference: str) -> bytes:
        """The manifest bytes served for ``reference``."""
        with self._lock:
            return self._models[_split(reference)].manifest

    def manifest_digest(self, reference: str) -> str:
        """``sha256:<hex>`` of the manifest served for ``reference`` (its ``Docker-Content-Digest``)."""
        return f"sha256:{hashlib.sha256(self.manifest(reference)).hexdigest()}"

    def layers(self, reference: str) -> list[dict[str, Any]]:
        """The layer descriptors (``mediaType``, ``digest``, ``size``) of ``reference``'s manifest."""
        return json.loads(self.manifest(reference))["layers"]

    def config(self, reference: str) -> dict[str, Any]:
        """The config descriptor of ``reference``'s manifest."""
        return json.loads(self.manifest(reference))["config"]

    @staticmethod
    def _generated(reference: str, size: int) -> tuple[list[StandinBlob], StandinBlob]:
        name = reference.rpartition(":")[0] if reference.rfind(":") > reference.rfind("/") else reference
        template = StandinBlob(TEMPLATE_MEDIA_TYPE, f"{{{{ .Prompt }}}} ({name})".encode())
        license_ = StandinBlob(LICENSE_MEDIA_TYPE, f"License of {name}".encode())
        params = StandinBlob(PARAMS_MEDIA_TYPE, json.dumps({"stop": [f"<|{reference}|>"]}).encode())
        config = StandinBlob(CONFIG_MEDIA_TYPE, json.dumps({
            "model_format": "gguf", "model_family": "llama", "model_type": reference,
            "file_type": "Q4_K_M", "rootfs": {"type": "layers"}}, separators=(",", ":")).encode())
        rest = size - template.size - license_.size - params.size - config.size
        if rest < 1:
            raise ValueError(f"{size} bytes is too small for {reference}'s layers (at least {size - rest + 1})")
        model = StandinBlob(MODEL_MEDIA_TYPE, _pattern(reference, rest))
        return [model, template, license_, params], config

    # -- fault injection

    def fail_requests(self, status: int | None, body: bytes = b"", content_type: str = "text/plain") -> None:
        """Answer every request with ``status`` and ``body`` from now on; None: answer normally again."""
        with self._lock:
            self._failure = None if status is None else (status, body, content_type)

    def hold_requests(self) -> None:
        """Hold every answer until ``release()``: a registry that does not answer in time."""
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    # -- used by the handler

    def _log(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        with self._lock:
            self.requests.append(RegistryRequest(method, path, dict(headers)))

    def _lookup(self, name: str, reference: str) -> _Model | None:
        with self._lock:
            if reference.startswith("sha256:"):
                return self._by_digest.get((name.lower(), reference))
            return self._models.get((name.lower(), reference.lower()))

    def _blob(self, digest: str) -> StandinBlob | None:
        with self._lock:
            return self._blobs.get(digest)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], standin: RegistryStandin) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._connections_lock:
            self._connections.discard(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections, so a pooled client sees the registry gone."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the stand-in's `requests` log is the record

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        standin = self.server.standin
        path = unquote(urlsplit(self.path).path)
        standin._log(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        standin._held.wait()
        try:
            with standin._lock:
                failure = standin._failure
            if failure is not None:
                self._send(failure[0], failure[1], failure[2])
            elif self.command not in ("GET", "HEAD"):
                self._error(405, "UNSUPPORTED", "The operation is unsupported.")
            elif path in ("/v2", "/v2/"):
                self._send(200, b"{}", "application/json; charset=utf-8")
            elif match := _MANIFESTS.fullmatch(path):
                self._manifest(match["name"], match["reference"])
            elif match := _BLOBS.fullmatch(path):
                self._serve_blob(match["digest"])
            else:
                self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _manifest(self, name: str, reference: str) -> None:
        model = self.server.standin._lookup(name, reference)
        if model is None:
            self._error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": reference, "Name": name})
            return
        accept = ",".join(self.headers.get_all("Accept") or [])
        accepted = {part.split(";")[0].strip() for part in accept.split(",") if part.strip()}
        if model.media_type not in accepted and "*/*" not in accepted:
            self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: the Accept header does not allow {model.media_type}",
                        {"Tag": reference, "Name": name})
            return
        digest = f"sha256:{hashlib.sha256(model.manifest).hexdigest()}"
        header = self.server.standin.content_digest
        headers = {"Etag": f'"{digest}"'}
        if header is not None:
            headers["Docker-Content-Digest"] = header or digest
        self._send(200, model.manifest, model.media_type, headers)

    def _serve_blob(self, digest: str) -> None:
        blob = self.server.standin._blob(digest)
        if blob is None:
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
            return
        headers = {"Docker-Content-Digest": blob.digest, "Accept-Ranges": "bytes"}
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match and int(match[1]) < blob.size:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else blob.size - 1, blob.size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
            self._send(206, blob.content[start:end + 1], "application/octet-stream", headers)
            return
        self._send(200, blob.content, "application/octet-stream", headers)

    def _error(self, status: int, code: str, message: str, detail: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if detail is not None:
            error["detail"] = detail
        self._send(status, json.dumps({"errors": [error]}).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
