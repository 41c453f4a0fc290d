"""Serving the API with waitress, a production WSGI server: threads, limits, graceful shutdown, and
slow clients kept from taking every connection.

Waitress alone closes a connection only after `channel_timeout` seconds without a byte, so a client
that sends one byte of its headers a second holds a connection for ever, and a few hundred of them
fill the connection limit: then nothing, health probes included, is answered. Two rules bound them:

- a request (headers and body) must arrive within `request_timeout` seconds of its first byte
  (of the connection's opening, for the first request); a connection that takes longer is closed;
- when the open connections reach `max_connections`, the one that has waited longest without a
  request being served (an incomplete request, or an idle keep-alive connection) is closed to make
  room for the new one, so the limit where waitress stops accepting is never reached by clients
  that are not being served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from ..reconciler.settings import parse_listen

from . import metrics
from .app import MAX_BODY_BYTES

__all__ = ["ApiServer", "is_loopback", "parse_listen"]

log = logging.getLogger("ollama_gitops.api.server")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
WIRE_BODY_LIMIT = 128 * MAX_BODY_BYTES
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send one request, headers and body
IDLE_TIMEOUT = 60  # seconds a keep-alive connection may stay idle between requests
CONNECTION_LIMIT = 256  # waitress stops accepting here
MAX_CONNECTIONS = CONNECTION_LIMIT - 16  # shed the longest-waiting unserved connection beyond this


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class _Channel(HTTPChannel):
    """A connection that knows since when it has been sending its current, unfinished request."""

    def __init__(self, server, sock, addr, adj, map=None):  # type: ignore[no-untyped-def]
        super().__init__(server, sock, addr, adj, map)
        # The first request's clock starts at the accept: a client that sends nothing is slow too.
        self.request_started: float | None = self.creation_time

    def received(self, data: bytes) -> bool:
        if self.request is None and self.request_started is None and data:
            self.request_started = time.time()
        result = super().received(data)
        if self.request is None:  # every request received so far is complete
            self.request_started = None
        return result

    @property
    def unserved(self) -> bool:
        """No request of it is being served by a thread (an answer it has not read yet may wait)."""
        return not self.requests

    @property
    def waiting_since(self) -> float:
        return self.request_started if self.request_started is not None else self.last_activity


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def __init__(self, *args, request_timeout: float, max_connections: int, **kwargs):  # type: ignore[no-untyped-def]
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        super().__init__(*args, **kwargs)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections, after channel_timeout
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and channel.unserved:
                channel.will_close = True  # closed by the event loop at its next turn
                metrics.CONNECTIONS_CLOSED.labels("slow").inc()

    def handle_accept(self) -> None:
        super().handle_accept()
        if len(self.active_channels) <= self.max_connections:
            return
        waiting = [c for c in self.active_channels.values() if isinstance(c, _Channel) and c.unserved]
        for channel in sorted(waiting, key=lambda c: c.waiting_since)[: len(self.active_channels) - self.max_connections]:
            channel.handle_close()  # at once: this is the event loop's thread, and nothing is served on it
            metrics.CONNECTIONS_CLOSED.labels("shed").inc()


class ApiServer:
    """One listening socket served by a pool of threads."""

    def __init__(self, app: Callable, host: str, port: int, *, threads: int = 16,
                 request_timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        adjustments = Adjustments(
            host=host, port=port, threads=threads,
            # The application refuses bodies over MAX_BODY_BYTES with a JSON 413; waitress's own,
            # plain-text limit only stops abuse far beyond that.
            max_request_body_size=WIRE_BODY_LIMIT,
            channel_timeout=IDLE_TIMEOUT,
            cleanup_interval=1,  # how often the request bound is checked: it is a few seconds
            connection_limit=CONNECTION_LIMIT,
            clear_untrusted_proxy_headers=True,
            ident="ollama-gitops",
        )
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        # As waitress's create_server does for one address, with the channel and server above.
        self._server = _Server(app, {}, dispatcher=dispatcher, adj=adjustments, sockinfo=adjustments.listen[0],
                               request_timeout=request_timeout, max_connections=max_connections)
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        return self._server.effective_port

    @property
    def url(self) -> str:
        host = self._server.effective_host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def serve_forever(self) -> None:
        try:
            self._server.run()
        except OSError:
            if not self._stopping:  # closing the sockets under select() at shutdown is expected
                raise

    def start(self) -> ApiServer:
        """Serve in a background thread (for `serve`, tests and benchmarks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="api-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting connections, let requests in flight finish (up to `grace` seconds), stop."""
        self._stopping = True
        wasyncore.dispatcher.close(self._server)  # the listening socket only
        dispatcher = self._server.task_dispatcher
        deadline = time.monotonic() + grace
        while (dispatcher.active_count or dispatcher.queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._server.close()
        # Idle keep-alive connections would keep the event loop running: close them too.
        wasyncore.close_all(self._server._map)
        if self._thread is not None:
            self._thread.join(timeout=grace)
        dispatcher.shutdown(timeout=1)  # its request threads, started with the server even if it never served
