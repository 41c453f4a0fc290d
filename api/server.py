"""Serving the API with waitress, a production WSGI server: threads, limits, graceful shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from waitress import wasyncore
from waitress.server import create_server

from ..reconciler.settings import parse_listen

from .app import MAX_BODY_BYTES

__all__ = ["ApiServer", "is_loopback", "parse_listen"]

log = logging.getLogger("ollama_gitops.api.server")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
WIRE_BODY_LIMIT = 128 * MAX_BODY_BYTES


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class ApiServer:
    """One listening socket served by a pool of threads."""

    def __init__(self, app: Callable, host: str, port: int, *, threads: int = 16) -> None:
        self._server = create_server(
            app, host=host, port=port, threads=threads,
            # The application refuses bodies over MAX_BODY_BYTES with a JSON 413; waitress's own,
            # plain-text limit only stops abuse far beyond that.
            max_request_body_size=WIRE_BODY_LIMIT,
            channel_timeout=60,  # seconds an idle or slow connection may hold a channel
            connection_limit=256,
            clear_untrusted_proxy_headers=True,
            ident="ollama-gitops",
        )
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
