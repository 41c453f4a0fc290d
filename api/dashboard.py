"""The dashboard: the page at `/`, its static files, the events stream and the cycle history.

The page's files ship inside the package (`api/static/`) and load nothing from elsewhere; they are
served without the API key (they hold no data, and a browser cannot send the key on navigation),
while every request the page makes for data sends it as `X-API-Key`.

`GET /api/v1/events` is a Server-Sent Events stream. Each stream holds one of waitress's threads for
as long as it is open, so streams have their own threads (`STREAMS` more than `--threads`, see
runtime.py) and at most that many are open at once: beyond it a 503 says to poll instead, and reads,
writes and probes keep every thread they had. A stream is a request being served, so neither the
bound on slow requests nor the shedding of waiting connections in server.py applies to it; a comment
every `heartbeat` seconds keeps proxies from closing it and finds a reader that went away.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from flask import Flask, Response, request

from ..reconciler.events import Dropped, EventBus, Subscription
from ..reconciler.history import History

STREAMS = 32  # event streams open at once (each holds a server thread of its own)
HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle stream
RETRY_MS = 2000  # how soon a browser's EventSource reconnects
OPEN_PREFIXES = ("/static/",)
OPEN_PAGES = frozenset({"/", "/index.html"})
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html",
                ".png": "image/png"}
# The page and its files: nothing from elsewhere, no inline script, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_open(path: str) -> bool:
    """The page and its static files, served without the API key."""
    return path in OPEN_PAGES or path.startswith(OPEN_PREFIXES)


def register(app: Flask, bus: EventBus, history: History | None, *, heartbeat: float = HEARTBEAT,
             streams: int = STREAMS, servers: Callable[[], list[dict[str, Any]]] = lambda: []) -> None:
    """Add the page, its files, `/api/v1/events` and `/api/v1/history` to the API. A stream's first
    event (`hello`) carries the `servers` as they are then: their later changes are events."""
    slots = threading.BoundedSemaphore(streams)
    static = resources.files(__package__).joinpath("static")

    @app.get("/")
    @app.get("/index.html")
    def page() -> Response:
        return _static_file(static, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return _static_file(static, name)

    @app.get("/api/v1/history")
    def cycle_history() -> Response:
        items = [entry.view() for entry in history.entries()] if history is not None else []
        return Response(json.dumps({"items": items}, separators=(",", ":")) + "\n", 200, mimetype="application/json")

    @app.get("/api/v1/events")
    def event_stream() -> Response:
        if not slots.acquire(blocking=False):
            response = Response(json.dumps({"error": f"too many event streams open ({streams}); poll "
                                                     "/api/v1/models and /api/v1/status instead"}) + "\n",
                                503, mimetype="application/json")
            response.headers["Retry-After"] = "10"
            return response
        try:
            last = request.headers.get("Last-Event-ID")
            stream = _Stream(bus.subscribe(last), heartbeat, resumed=bool(last), release=slots.release,
                             hello={"heartbeat": heartbeat, "servers": servers()})
        except BaseException:
            slots.release()
            raise
        response = Response(stream, 200, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response



class _Stream:
    """The body of one events stream; `close()` (called by the server however the stream ends)
    lets the subscription and the stream's slot go."""

    def __init__(self, subscription: Subscription, heartbeat: float, *, resumed: bool,
                 release: Callable[[], None], hello: dict[str, Any]) -> None:
        self._subscription = subscription
        self._heartbeat = heartbeat
        self._release: Callable[[], None] | None = release
        # A fresh reader learns where the stream is now, and reads the lists after it; a resumed one
        # gets what it missed (or a reset) first.
        data = json.dumps(hello, separators=(",", ":"))
        hello = f"event: hello\ndata: {data}\n\n" if resumed else \
            f"id: {subscription.start_id}\nevent: hello\ndata: {data}\n\n"
        self._first: str | None = f"retry: {RETRY_MS}\n" + hello

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first.encode()
        try:
            event = self._subscription.next(self._heartbeat)
        except Dropped:
            raise StopIteration from None  # the reader reconnects with its last id
        if event is None:
            return b": heartbeat\n\n"
        data = json.dumps(event.data, separators=(",", ":"))
        return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()

    def close(self) -> None:
        self._subscription.close()
        if self._release is not None:
            release, self._release = self._release, None
            release()


def _static_file(static: Any, name: str) -> Response:
    suffix = "." + name.rpartition(".")[2] if "." in name else ""
    target = static
    for part in name.split("/"):
        if part in ("", ".", "..") or part.startswith("."):
            return _not_found()
        target = target.joinpath(part)
    if suffix not in STATIC_TYPES or not target.is_file():
        return _not_found()
    response = Response(target.read_bytes(), 200, content_type=STATIC_TYPES[suffix] +
                        ("; charset=utf-8" if suffix != ".png" else ""))
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _not_found() -> Response:
    response = Response("404 not found\n", 404, content_type="text/plain; charset=utf-8")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

