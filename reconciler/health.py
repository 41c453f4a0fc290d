"""Probes and metrics for a reconciler that runs without the API (`reconcile --health-listen`).

`/healthz` (liveness) fails only when a cycle has been running far longer than any cycle should:
every Git, Ollama and Kubernetes call has its own timeout, so a cycle that never ends is a bug that
a restart cures. `/readyz` is ready once this replica has ended its first cycle, or while it stands
by for the Lease. `/metrics` is the Prometheus exposition of the reconciler's metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .scheduler import CycleScheduler

log = logging.getLogger("ollama_gitops.health")

MIN_STALL_SECONDS = 600.0


@dataclass(frozen=True)
class Probe:
    """One probe's answer."""

    ok: bool
    reason: str


class Health:
    """Liveness and readiness of a reconciler, from its schedule (None while standing by)."""

    def __init__(self, scheduler: Callable[[], CycleScheduler | None], interval: float,
                 leading: Callable[[], bool] = lambda: True) -> None:
        self._scheduler = scheduler
        self._leading = leading
        # A cycle's own work is seconds; pulls run outside it. Ten intervals is far beyond any.
        self.stall_after = max(10 * interval, MIN_STALL_SECONDS)

    def live(self) -> Probe:
        scheduler = self._scheduler()
        started = scheduler.cycle_started if scheduler is not None else None
        if started is not None and time.monotonic() - started > self.stall_after:
            return Probe(False, f"a cycle has been running for over {self.stall_after:.0f}s")
        return Probe(True, "ok")

    def ready(self) -> Probe:
        if not self._leading():
            return Probe(True, "standing by for the Lease")
        scheduler = self._scheduler()
        if scheduler is None or scheduler.cycles_ended == 0:
            return Probe(False, "the first cycle has not ended yet")
        return Probe(True, "ok")


class HealthServer:
    """Serves `/healthz`, `/readyz` and `/metrics` from a thread."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"health": health})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("probes and metrics on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            probe = self.health.live() if path == "/healthz" else self.health.ready()
            self._send(200 if probe.ok else 503, (probe.reason + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - probes every few seconds are noise
        pass
