"""A protocol-faithful stand-in for the Ollama HTTP API, for tests.

There is no Ollama binary (nor network, nor Docker) where the tests run, so the
product's tests talk to this small in-process HTTP server instead.  It speaks
the subset of the Ollama API that the reconciler uses, with the same wire
format as the real server (checked against Ollama's server code and the
official ``ollama`` Python client 0.6.x):

* ``GET|HEAD /``            -> 200 ``Ollama is running`` (text/plain)
* ``GET|HEAD /api/version`` -> ``{"version": "0.12.0"}``
* ``POST /api/pull``        -> NDJSON progress stream (chunked, flushed per line)
                               or, with ``"stream": false``, one JSON object
* ``GET|HEAD /api/tags``    -> installed models
* ``POST /api/show``        -> model details, 404 when not installed
* ``DELETE /api/delete``    -> 200 with an empty body, 404 when not installed
* ``GET|HEAD /api/ps``      -> ``{"models": []}`` (nothing is ever loaded)
* ``HEAD /api/blobs/<digest>`` -> 200 when the blob is held, 404 when not, 400
                               ``{"error":"invalid digest format"}`` unless ``sha256[:-]<64 hex>``
                               (the upload, ``POST``, is not served)
* anything else             -> 404 ``404 page not found`` / 405 on a wrong method

Model references follow Ollama's rules (types/model/name.go, v0.13.5):
``[[scheme://]host/][namespace/]model[:tag]``, a missing tag means ``:latest``,
``/api/tags`` lists a model by its shortest form in both ``name`` and ``model``
(the default ``registry.ollama.ai`` host, then the ``library`` namespace, dropped:
``DisplayShortest``), lookups are case-insensitive, and a pull stores each part
in the spelling an installed model already has for it (``getExistingName``).

Typical use::

    with OllamaStandin({"llama3.2:latest": 2_000_000}).start() as server:
        client = ollama.Client(host=server.url, timeout=10)
        client.pull("llama3.2")
        assert server.installed() == {"llama3.2:latest": 2_000_000}

Test hooks: ``fail_next_pulls`` (pulls fail mid-stream), ``hold_pulls`` (pulls
block mid-stream until released, to observe concurrency deterministically),
``hold_listings`` (``/api/tags`` blocks until released: a reconcile cycle held mid-way),
``stop``/``restart`` (connection refused, then back on the same port),
``install``/``remove`` (changes made by hand on the host), ``add_blob`` (a blob
on disk that no installed model uses, e.g. left by another model), and the
``pull_count``/``delete_count``/``requests`` logs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Callable, Generator
from urllib.parse import unquote, urlsplit

__all__ = ["CONFIG_SIZE", "ListingGate", "OllamaStandin", "PullGate"]

# Error texts exactly as the real server words them.
INVALID_NAME_ERROR = "invalid model name"
MANIFEST_NOT_FOUND_ERROR = "pull model manifest: file does not exist"
DEFAULT_PULL_FAILURE = "max retries exceeded: unexpected EOF"

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"

# Name parts as Ollama's types/model/name.go accepts them (first character
# alphanumeric or underscore, bounded lengths).
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")

# Progress of one layer, as fractions of its size: the first line carries only
# the total (a zero `completed` is left out, like Go's omitempty), then it grows.
_PROGRESS_STEPS = (0, 1, 2, 3, 4)
_PROGRESS_DIVISOR = 4
# A pull scheduled to fail emits this many progress lines first.
_LINES_BEFORE_FAILURE = 3
# The size of a model's config blob (a small JSON document in real Ollama), counted in its size.
CONFIG_SIZE = 487


# The lines of one pull, produced lazily as the handler writes them.
_PullEvents = Generator[dict[str, Any], None, None]


# --------------------------------------------------------------------------- names


def _split_ref(ref: str) -> tuple[str | None, str | None, str, str | None] | None:
    """Split ``[[scheme://]host/][namespace/]model[:tag]`` as Ollama's ``ParseNameBare`` does
    (types/model/name.go): from the right, a colon before the last slash belonging to the host
    (a port), everything before the namespace being the host, less a ``scheme://``.

    Returns ``(host, namespace, model, tag)`` (``None`` for a part not given) or ``None`` when
    ``IsValid`` would say no.
    """
    if not isinstance(ref, str) or not ref:
        return None
    rest, tag = ref, None
    if ref.rfind(":") > ref.rfind("/"):
        rest, _, tag = ref.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            return None
    host = namespace = None
    head, slash, model = rest.rpartition("/")
    if slash:
        before, slash, namespace = head.rpartition("/")
        if slash:
            host = before.split("://", 1)[-1]
    if not _MODEL_RE.fullmatch(model):
        return None
    if namespace is not None and not _NAMESPACE_RE.fullmatch(namespace):
        return None
    if host is not None and not _HOST_RE.fullmatch(host):
        return None
    return host, namespace, model, tag


def _parts(ref: str) -> tuple[str, str, str, str] | None:
    """``ref``'s four parts with Ollama's defaults filled in (``ParseName``), ``None`` if invalid."""
    split = _split_ref(ref)
    if split is None:
        return None
    host, namespace, model, tag = split
    return host or _DEFAULT_HOST, namespace or _DEFAULT_NAMESPACE, model, tag or "latest"


def _display(parts: tuple[str, str, str, str]) -> str:
    """Ollama's ``DisplayShortest``: the default host, then the default namespace, left out
    (compared with ``EqualFold``); what ``/api/tags`` gives in both ``name`` and ``model``."""
    host, namespace, model, tag = parts
    if host.lower() != _DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != _DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _normalise(ref: str) -> str | None:
    """The display name of ``ref`` as given (``None`` if invalid).

    ``llama3.2`` -> ``llama3.2:latest``; ``registry.ollama.ai/library/llama3.2`` too.
    Case is kept: lookups use ``.lower()`` of this.
    """
    parts = _parts(ref)
    return None if parts is None else _display(parts)


def _key(ref: str) -> str:
    """Normalised, lower-cased lookup key; ``ValueError`` for an invalid reference."""
    name = _normalise(ref)
    if name is None:
        raise ValueError(f"invalid model reference: {ref!r}")
    return name.lower()


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rfc3339_ns(ns: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds, like Go's time.RFC3339Nano output."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def _details(name: str, size: int) -> dict[str, Any]:
    """Plausible, deterministic ``details`` for a model (family from its name)."""
    base = name.rsplit("/", 1)[-1].split(":", 1)[0]
    family_match = re.match(r"[a-z]+", base.lower())
    family = family_match.group(0) if family_match else "llama"
    tag = name.rsplit(":", 1)[-1]
    size_match = re.fullmatch(r"(\d+(?:\.\d+)?)([bBmM])", tag)
    if size_match:
        parameter_size = size_match.group(1) + size_match.group(2).upper()
    else:
        params = size / 0.6  # a Q4 quantisation is about 0.6 bytes per parameter
        parameter_size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": "Q4_K_M",
    }


# --------------------------------------------------------------------------- state


@dataclass
class _Installed:
    parts: tuple[str, str, str, str]  # host, namespace, model, tag: the manifest's path
    size: int
    digest: str  # 64 hex, no "sha256:" prefix
    modified_ns: int

    @property
    def name(self) -> str:
        return _display(self.parts)


class PullGate:
    """Holds pulls mid-stream until released; returned by ``OllamaStandin.hold_pulls()``.

    A pull reaching the gate (right after the first progress line of its first
    layer) blocks until ``release()``.  Use it as a context manager to be sure
    the pulls are released even when the test fails.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._released = False
        self._reached = 0  # pulls that reached the gate while it was closed
        self._waiting = 0  # pulls blocked on it right now

    @property
    def held(self) -> int:
        """Number of pulls blocked on the gate right now."""
        with self._cond:
            return self._waiting

    def wait_for_pulls(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``n`` pulls have reached the gate; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._reached >= n, timeout)

    def release(self) -> None:
        """Let every held pull (and any later one) go on; idempotent."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def _hold(self) -> None:
        """Called by a pull: block while the gate is closed."""
        with self._cond:
            if self._released:
                return
            self._reached += 1
            self._waiting += 1
            self._cond.notify_all()  # wake wait_for_pulls
            self._cond.wait_for(lambda: self._released)
            self._waiting -= 1

    def __enter__(self) -> "PullGate":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ListingGate(PullGate):
    """Holds ``GET /api/tags`` until released; returned by ``OllamaStandin.hold_listings()``."""

    def wait_for_listings(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``n`` listings have reached the gate; False on timeout."""
        return self.wait_for_pulls(n, timeout)


class _PullAborted(Exception):
    """The stand-in was stopped while a pull was running: the pull installs nothing."""


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server that remembers its open connections.

    With HTTP/1.1 keep-alive, a handler thread keeps serving its connection
    after ``shutdown()``; ``stop()`` must cut those too, or a client reusing a
    pooled connection would still get answers from a "stopped" server.
    """

    daemon_threads = True  # a held/slow pull must never keep the process alive
    allow_reuse_address = True  # restart() binds the same port again at once

    def __init__(self, address: tuple[str, int], standin: "OllamaStandin") -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the accept loop, so that after shutdown() returns
        # every accepted connection is known to close_connections().
        with self._connections_changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        # Called by the handler thread once it is done with the connection.
        super().shutdown_request(request)
        with self._connections_changed:
            self._connections.discard(request)
            self._connections_changed.notify_all()

    def close_connections(self, timeout: float) -> None:
        """Cut every open connection and wait (up to ``timeout``) for their
        handlers to finish, so no request is still being served afterwards."""
        with self._connections_changed:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        with self._connections_changed:
            self._connections_changed.wait_for(lambda: not self._connections, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client going away is normal, not a stand-in bug
        self.standin._handler_errors.append(exc)  # lets the self-tests see it
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, like Go's net/http
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
    # algorithm plus delayed ACKs stalls every response by ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the stand-in's `requests` log is the record

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    # -- plumbing

    def _dispatch(self, method: str) -> None:
        standin = self.server.standin
        path = urlsplit(self.path).path
        standin._log_request(method, path)
        try:
            body = self._read_body()
            routes = _BLOB_ROUTES if path.startswith(_BLOBS) else _ROUTES.get(path)
            if routes is None:
                self._send_text(404, "404 page not found")
                return
            # HEAD is served wherever GET is (Go's router does the same for Ollama).
            handler = routes.get("GET" if method == "HEAD" and "GET" in routes else method)
            if handler is None:
                self._send_text(405, "405 method not allowed")
                return
            handler(self, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client went away: nothing to answer
        except OSError:
            # stop() shuts the socket down under a running handler.
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status: int, content_type: str | None, data: bytes) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        self._send_bytes(status, "text/plain; charset=utf-8", text.encode("utf-8"))

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self._send_bytes(status, "application/json; charset=utf-8", data)

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    @staticmethod
    def _parse_object(body: bytes) -> dict[str, Any] | None:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    def _model_field(self, body: bytes) -> str | None:
        """The valid model reference of a request body (``name`` is the old spelling)."""
        payload = self._parse_object(body)
        if payload is None:
            return None
        ref = payload.get("model") or payload.get("name")
        if not isinstance(ref, str) or _normalise(ref) is None:
            return None
        return ref

    # -- routes

    def _root(self, body: bytes) -> None:
        self._send_text(200, "Ollama is running")

    def _version(self, body: bytes) -> None:
        self._send_json(200, {"version": self.server.standin._version})

    def _ps(self, body: bytes) -> None:
        self._send_json(200, {"models": []})

    def _tags(self, body: bytes) -> None:
        standin = self.server.standin
        with standin._lock:
            gate = standin._listing_gate
        if gate is not None:
            gate._hold()
        self._send_bytes(200, "application/json; charset=utf-8", standin._tags_body())

    def _show(self, body: bytes) -> None:
        ref = self._model_field(body)
        if ref is None:
            self._send_error_json(400, INVALID_NAME_ERROR)
            return
        payload = self.server.standin._show_payload(ref)
        if payload is None:
            self._send_error_json(404, f"model '{ref}' not found")  # named as asked (server/routes.go)
            return
        self._send_json(200, payload)

    def _delete(self, body: bytes) -> None:
        ref = self._model_field(body)
        if ref is None:
            self._send_error_json(400, INVALID_NAME_ERROR)
            return
        if not self.server.standin._delete(ref):
            self._send_error_json(404, f"model '{ref}' not found")  # named as asked (server/routes.go)
            return
        self._send_bytes(200, None, b"")  # Ollama writes no body at all here

    def _head_blob(self, body: bytes) -> None:
        # server/routes.go HeadBlobHandler: GetBlobsPath's check, then whether the file exists.
        digest = unquote(urlsplit(self.path).path[len(_BLOBS):])
        if not digest or "/" in digest:
            self._send_text(404, "404 page not found")  # no route matches
        elif not _BLOB_DIGEST_RE.fullmatch(digest):
            self._send_error_json(400, "invalid digest format")
        elif not self.server.standin._holds_blob(digest):
            self._send_error_json(404, f"blob {json.dumps(digest)} not found")
        else:
            self._send_bytes(200, None, b"")

    def _pull(self, body: bytes) -> None:
        payload = self._parse_object(body)
        ref = self._model_field(body)
        if payload is None or ref is None:
            self._send_error_json(400, INVALID_NAME_ERROR)
            return
        events = self.server.standin._pull_events(ref)
        if payload.get("stream") is False:
            self._pull_blocking(events)
        else:
            self._pull_streaming(events)

    def _pull_blocking(self, events: _PullEvents) -> None:
        last: dict[str, Any] = {}
        try:
            for last in events:
                pass
        except _PullAborted:
            self.close_connection = True
            return
        if "error" in last:
            self._send_error_json(500, last["error"])
        else:
            self._send_json(200, {"status": "success"})

    def _pull_streaming(self, events: _PullEvents) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                line = json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n"
                # One chunk per line, written straight to the socket (wfile is
                # unbuffered), so the client sees progress as it happens.
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
        except _PullAborted:
            self.close_connection = True  # no terminating chunk: the stream is cut
            return
        finally:
            events.close()  # a failed write leaves the generator suspended: end it now
        self.wfile.write(b"0\r\n\r\n")


_RouteHandler = Callable[[_Handler, bytes], None]
_ROUTES: dict[str, dict[str, _RouteHandler]] = {
    "/": {"GET": _Handler._root},
    "/api/version": {"GET": _Handler._version},
    "/api/pull": {"POST": _Handler._pull},
    "/api/tags": {"GET": _Handler._tags},
    "/api/show": {"POST": _Handler._show},
    "/api/delete": {"DELETE": _Handler._delete},
    "/api/ps": {"GET": _Handler._ps},
}
_BLOBS = "/api/blobs/"
_BLOB_ROUTES: dict[str, _RouteHandler] = {"HEAD": _Handler._head_blob}
_BLOB_DIGEST_RE = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


# --------------------------------------------------------------------------- stand-in


class OllamaStandin:
    """An in-process Ollama server for tests (see the module docstring).

    ``catalogue`` maps pullable ``"name:tag"`` references to their total size in
    bytes, as ``/api/tags`` shows it: the manifest's ``layers`` layers plus its
    config blob (``CONFIG_SIZE`` bytes, less for a tiny model), as Ollama's
    ``Manifest.Size`` adds them.  Every model's digest is the sha256 of
    its normalised, lower-cased ``"name:tag"`` (``digest_of``), so it is the
    same in every stand-in and tests can predict it.

    ``pull_count`` and ``delete_count`` are keyed by the normalised, lower-cased
    ``"name:tag"`` and count every request with a valid name, whatever its
    outcome.  ``requests`` logs ``(method, path)`` of every HTTP request.
    """

    def __init__(
        self,
        catalogue: dict[str, int] | None = None,
        *,
        layers: int = 2,
        version: str = "0.12.0",
    ) -> None:
        if layers < 1:
            raise ValueError("layers must be >= 1")
        self._layers = layers
        self._version = version
        # One lock guards all mutable state; handlers run on many threads.
        self._lock = threading.Lock()
        self._catalogue: dict[str, tuple[str, int]] = {}  # key -> (name, size)
        self._models: dict[str, _Installed] = {}  # key -> installed model
        # Per part (host, namespace, model, tag): lower-cased -> spellings installed -> how many models,
        # so that a pull finds an existing spelling without reading every model (100,000 in benchmarks).
        self._spellings: tuple[dict[str, dict[str, int]], ...] = ({}, {}, {}, {})
        self._failures: dict[str, tuple[int, str]] = {}  # key -> (times left, message)
        self._gate: PullGate | None = None  # the gate new pulls stop at
        self._gates: list[PullGate] = []  # every gate handed out, released by stop()
        self._listing_gate: ListingGate | None = None  # the gate listings stop at
        self._pull_delay = 0.0
        # Bumped by stop(): a pull started under an older generation is cut off.
        self._generation = 0
        self._stopped = threading.Event()  # wakes pulls sleeping on the pull delay
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._handler_errors: list[BaseException] = []  # unexpected handler exceptions
        self.pull_count: collections.Counter[str] = collections.Counter()
        self.delete_count: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self._models_version = 0  # bumped whenever `_models` changes: the cached `/api/tags` body is stale
        self._tags_cache: tuple[int, bytes] | None = None  # (models version, body)
        self._extra_blobs: set[str] = set()  # "sha256:<hex>" held besides the installed models' layers
        # "sha256:<hex>" -> how many installed models use it: a pull asks per blob, without a scan.
        self._blob_users: collections.Counter[str] = collections.Counter()
        for ref, size in (catalogue or {}).items():
            self.add_to_catalogue(ref, size)

    # -- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; stays valid after ``stop()`` (then refused)."""
        if self._port is None:
            raise RuntimeError("the stand-in has not been started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> "OllamaStandin":
        """Bind 127.0.0.1 (a free port the first time, the same port later) and serve."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the stand-in is already running")
            server = _Server(("127.0.0.1", self._port or 0), self)
            self._port = server.server_address[1]
            self._server = server
            self._stopped.clear()
        # A short poll interval keeps stop() fast (shutdown() waits for one poll).
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"ollama-standin-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and cut open connections.

        Running pulls are interrupted and install nothing; held pulls are
        released to die.  Returns once the handlers have finished, so the
        state no longer changes.  Connecting afterwards is refused.  Idempotent.
        """
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return  # not running: nothing to do
            gates, self._gates, self._gate, self._listing_gate = self._gates, [], None, None
            self._generation += 1
            self._stopped.set()
        for gate in gates:
            gate.release()  # held pulls wake, see the new generation and abort
        server.shutdown()
        server.server_close()
        # Handlers wake promptly once their socket is cut (pulls see the new
        # generation); waiting for them means no request outlives stop().
        server.close_connections(timeout=5.0)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def restart(self) -> None:
        """Serve again on the same port, keeping models, catalogue and counters.

        Stops first if still running.
        """
        if self._port is None:
            raise RuntimeError("the stand-in has never been started")
        self.stop()
        self.start()

    def __enter__(self) -> "OllamaStandin":
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state set-up and inspection

    def add_to_catalogue(self, ref: str, size: int) -> None:
        """Make ``ref`` pullable, ``size`` bytes in total (replaces an existing entry)."""
        key = _key(ref)
        with self._lock:
            self._catalogue[key] = (_normalise(ref) or ref, size)

    def install(self, ref: str, size: int | None = None) -> None:
        """Install ``ref`` as if pulled by hand on the host (``ollama pull``).

        ``size`` defaults to the catalogue size; it is required for a model not
        in the catalogue.  The catalogue itself is not changed.
        """
        key = _key(ref)
        with self._lock:
            if size is None:
                if key not in self._catalogue:
                    raise ValueError(f"{ref!r} is not in the catalogue: give its size")
                size = self._catalogue[key][1]
            self._install_locked(key, ref, size)

    def remove(self, ref: str) -> None:
        """Remove ``ref`` as if by ``ollama rm`` on the host; ``KeyError`` if absent."""
        key = _key(ref)
        with self._lock:
            if key not in self._models:
                raise KeyError(ref)
            self._forget_locked(key)

    def installed(self) -> dict[str, int]:
        """Installed models: display ``"name:tag"`` -> size in bytes."""
        with self._lock:
            return {m.name: m.size for m in self._models.values()}

    def add_blob(self, digest: str) -> None:
        """Put blob ``digest`` (``sha256:<64 hex>``) on the server's disk, used by no model."""
        with self._lock:
            self._extra_blobs.add(digest)

    def layer_digests(self, ref: str) -> list[str]:
        """The ``sha256:<hex>`` digests a pull of ``ref`` streams (and, once installed, holds), in
        the order it streams them: the manifest's layers, then its config blob (Ollama's PullModel
        pulls ``mf.Layers`` then ``mf.Config``)."""
        return [f"sha256:{digest}" for digest, _ in self._blobs(_key(ref), 0)]

    def _blobs(self, key: str, size: int) -> list[tuple[str, int]]:
        """(hex digest, size) of each blob of the model ``key`` of ``size`` bytes, layers then config."""
        config = min(CONFIG_SIZE, size // 2)
        base, rest = divmod(size - config, self._layers)
        sizes = [base] * (self._layers - 1) + [base + rest]
        blobs = [(_sha256_hex(f"{key}#layer{index}"), total) for index, total in enumerate(sizes)]
        return blobs + [(_sha256_hex(f"{key}#config"), config)]

    def _holds_blob(self, digest: str) -> bool:
        # Blob files are named sha256-<lowercase hex> on a case-sensitive disk, as Ollama writes them.
        wanted = "sha256:" + digest[len("sha256:"):]
        with self._lock:
            return wanted in self._extra_blobs or self._blob_users[wanted] > 0

    def digest_of(self, ref: str) -> str:
        """The 64-hex digest ``/api/tags`` reports for ``ref`` (installed or not)."""
        return _sha256_hex(_key(ref))

    # -- fault injection and pacing

    def fail_next_pulls(self, ref: str, times: int, message: str = DEFAULT_PULL_FAILURE) -> None:
        """Make the next ``times`` pulls of ``ref`` fail mid-stream with ``message``.

        The failing pull sends some progress lines of its first layer, then an
        ``{"error": message}`` line (HTTP 500 ``{"error": message}`` when not
        streaming), and installs nothing.  Replaces earlier scheduled failures.
        """
        key = _key(ref)
        with self._lock:
            if times > 0:
                self._failures[key] = (times, message)
            else:
                self._failures.pop(key, None)

    def hold_pulls(self) -> PullGate:
        """Make pulls block mid-stream (after the first progress line of the
        first layer) until the returned gate is released.

        Pulls already held by an earlier gate stay held until that gate is released.
        """
        gate = PullGate()
        with self._lock:
            self._gate = gate
            self._gates.append(gate)
        return gate

    def hold_listings(self) -> ListingGate:
        """Make ``GET /api/tags`` block until the returned gate is released: a
        reconcile cycle that lists Ollama stays in the middle of its run."""
        gate = ListingGate()
        with self._lock:
            self._listing_gate = gate
            self._gates.append(gate)
        return gate

    def set_pull_delay(self, seconds: float) -> None:
        """Sleep ``seconds`` between progress lines (for manual runs and benchmarks;
        tests should synchronise with ``hold_pulls`` instead)."""
        with self._lock:
            self._pull_delay = max(0.0, seconds)

    # -- internals used by the handler (all thread-safe)

    def _log_request(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _install_locked(self, key: str, ref: str, size: int) -> None:
        parts = self._existing_name_locked(ref)
        self._forget_locked(key)
        self._models[key] = _Installed(parts=parts, size=size, digest=_sha256_hex(key), modified_ns=time.time_ns())
        self._models_version += 1
        self._blob_users.update(self.layer_digests(key))
        for index, part in enumerate(parts):
            spellings = self._spellings[index].setdefault(part.lower(), {})
            spellings[part] = spellings.get(part, 0) + 1

    def _forget_locked(self, key: str) -> bool:
        model = self._models.pop(key, None)
        if model is None:
            return False
        self._models_version += 1
        self._blob_users.subtract(self.layer_digests(key))
        for index, part in enumerate(model.parts):
            spellings = self._spellings[index][part.lower()]
            spellings[part] -= 1
            if not spellings[part]:
                del spellings[part]
                if not spellings:
                    del self._spellings[index][part.lower()]
        return True

    def _existing_name_locked(self, ref: str) -> tuple[str, str, str, str]:
        """The parts a pull of ``ref`` is stored under: Ollama's ``getExistingName`` gives each part
        the spelling of any installed model's part that equals it but for case, so a model pulled
        again keeps its first spelling (and ``Org/b`` pulled after ``org/a`` becomes ``org/b``)."""
        parts = _parts(ref)
        assert parts is not None, "callers pass valid references"
        canonical = list(parts)
        for index, part in enumerate(parts):
            spellings = self._spellings[index].get(part.lower())
            if spellings:  # the latest spelling installed, as the last model of a scan in install order was
                canonical[index] = next(reversed(spellings))
        return (canonical[0], canonical[1], canonical[2], canonical[3])

    def _tags_body(self) -> bytes:
        """``/api/tags``'s body, built again only once the models changed. Real Ollama is Go on
        another machine: building a hundred servers' JSON in Python, one after another, would time
        the stand-in, not the reconciler (the bytes are the same either way)."""
        with self._lock:
            version, cached = self._models_version, self._tags_cache
            if cached is not None and cached[0] == version:
                return cached[1]
            models = sorted(self._models.values(), key=lambda m: m.modified_ns, reverse=True)
        body = json.dumps({"models": self._tags_payload(models)}, separators=(",", ":")).encode("utf-8")
        with self._lock:
            if self._models_version == version:  # else it changed meanwhile: a later listing builds anew
                self._tags_cache = (version, body)
        return body

    @staticmethod
    def _tags_payload(models: list[_Installed]) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": _rfc3339_ns(m.modified_ns),
                "size": m.size,
                "digest": m.digest,
                "details": _details(m.name, m.size),
            }
            for m in models
        ]

    def _show_payload(self, ref: str) -> dict[str, Any] | None:
        with self._lock:
            model = self._models.get(_key(ref))
        if model is None:
            return None
        details = _details(model.name, model.size)
        first_layer = _sha256_hex(f"{_key(ref)}#layer0")
        return {
            "modelfile": (
                '# Modelfile generated by "ollama show"\n'
                "# To build a new Modelfile based on this, replace FROM with:\n"
                f"# FROM {model.name}\n\n"
                f"FROM /root/.ollama/models/blobs/sha256-{first_layer}\n"
                'TEMPLATE """{{ .Prompt }}"""\n'
            ),
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": {
                "general.architecture": details["family"],
                "general.file_type": 15,
                "general.parameter_count": int(model.size / 0.6),
                "general.quantization_version": 2,
            },
            "capabilities": ["completion"],
            "modified_at": _rfc3339_ns(model.modified_ns),
        }

    def _delete(self, ref: str) -> bool:
        key = _key(ref)
        with self._lock:
            self.delete_count[key] += 1
            return self._forget_locked(key)

    def _check_alive(self, generation: int) -> None:
        if self._generation != generation:
            raise _PullAborted()

    def _pace(self, generation: int) -> None:
        """Between progress lines: optional delay, and abort if stopped meanwhile."""
        delay = self._pull_delay
        if delay > 0:
            self._stopped.wait(delay)
        self._check_alive(generation)

    def _pull_events(self, ref: str) -> _PullEvents:
        """The lines of one pull, in order; the last is ``{"status": "success"}``
        or ``{"error": ...}``.  Raises ``_PullAborted`` if the stand-in is stopped.

        A generator, so a pull advances only as fast as its lines are written:
        if the client goes away, the next write fails, the generator is closed
        and the model is not installed.
        """
        key = _key(ref)
        with self._lock:
            generation = self._generation
            self.pull_count[key] += 1
            entry = self._catalogue.get(key)
            failure: str | None = None
            if entry is not None and key in self._failures:
                # Decided at the start, so concurrent pulls fail in arrival order.
                times, failure = self._failures[key]
                if times > 1:
                    self._failures[key] = (times - 1, failure)
                else:
                    del self._failures[key]

        yield {"status": "pulling manifest"}
        self._pace(generation)
        if entry is None:
            yield {"error": MANIFEST_NOT_FOUND_ERROR}
            return

        size = entry[1]
        lines_sent = 0
        for index, (digest, total) in enumerate(self._blobs(key, size)):
            # A blob already on disk (this model's, another's, or one left behind) is not
            # downloaded: download.go's downloadBlob says so in one line, Total == Completed == its size.
            steps = (_PROGRESS_DIVISOR,) if self._holds_blob(f"sha256:{digest}") else _PROGRESS_STEPS
            for step in steps:
                completed = total * step // _PROGRESS_DIVISOR
                line: dict[str, Any] = {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}"}
                # Zero fields are left out, like Go's `omitempty`.
                if total:
                    line["total"] = total
                if completed:
                    line["completed"] = completed
                yield line
                lines_sent += 1
                if index == 0 and step == steps[0]:
                    with self._lock:
                        gate = self._gate
                    if gate is not None:
                        gate._hold()
                self._pace(generation)
                if failure is not None and lines_sent == _LINES_BEFORE_FAILURE:
                    yield {"error": failure}
                    return

        yield {"status": "verifying sha256 digest"}
        self._pace(generation)
        with self._lock:
            self._check_alive(generation)  # under the lock: stop() cannot slip in
            self._install_locked(key, ref, size)  # the manifest is written now
        # Real Ollama says "removing unused layers" only when the manifest replaced held blobs the new
        # one does not (its deleteMap); here a model's blobs never change, so a re-pull never does.
        yield {"status": "writing manifest"}
        yield {"status": "success"}


def main(argv: list[str] | None = None) -> int:
    """Serve one stand-in in this process until SIGTERM or SIGINT (for tests whose servers are each
    their own process): `python ollama_server.py [--catalogue NAME:TAG=BYTES ...]`. Prints
    `listening on URL` on stdout once it serves; a test asks it what it holds over HTTP."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--catalogue", action="append", default=[], metavar="NAME:TAG=BYTES")
    args = parser.parse_args(argv)
    catalogue = {ref: int(size) for ref, _, size in (item.rpartition("=") for item in args.catalogue)}
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    standin = OllamaStandin(catalogue).start()
    print(f"listening on {standin.url}", flush=True)
    while not stopped.wait(1.0):  # timed: signals are handled between waits
        pass
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
