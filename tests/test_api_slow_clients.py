"""The API's server under clients that never finish their request (slowloris): each may take a
bounded time to send it, the oldest incomplete connections are shed before the connection limit
is reached, and probes keep answering. Real sockets on loopback against the real server."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ollama_gitops.api import runtime
from ollama_gitops.api.server import REQUEST_TIMEOUT
from apirig import ApiRig
from waiting import eventually

HEADERS = b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000
# Headers sent at once, then a body that never ends: the bound covers the body too.
BODY_HEAD = b"POST /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"


class SlowClients:
    """`count` connections, each sending one byte of a request's headers every `interval` seconds
    (never the end of them), from one thread, for at most `duration` seconds; `cut` counts the
    connections the server has closed."""

    def __init__(self, port: int, count: int, interval: float = 1.0, duration: float = 60.0,
                 preamble: bytes = b"") -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(preamble)
            client.setblocking(False)
            self.sockets.append(client)
        self.sent = {client: 0 for client in self.sockets}
        self.closed: set[socket.socket] = set()
        self.interval = interval
        self.deadline = time.monotonic() + duration
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    @property
    def cut(self) -> int:
        return len(self.closed)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            open_ = [s for s in self.sockets if s not in self.closed]
            if not open_:
                return
            readable, _, _ = select.select(open_, [], [], 0)
            for client in readable:  # the server closed it (FIN or RST): nothing else is ever sent back
                try:
                    if client.recv(4096) == b"":
                        self.closed.add(client)
                except OSError:
                    self.closed.add(client)
            for client in open_:
                if client in self.closed:
                    continue
                try:
                    client.send(HEADERS[self.sent[client]:self.sent[client] + 1])
                    self.sent[client] += 1
                except OSError:
                    self.closed.add(client)
            self._stop.wait(self.interval)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for client in self.sockets:
            client.close()


@contextmanager
def serving(tmp_path: Path, ollama, request_timeout: float | None = None) -> Iterator[ApiRig]:
    rig = ApiRig(tmp_path, ollama)
    rig.seed(("llama3.2", "1b"))
    if request_timeout is not None:
        rig.request_timeout = request_timeout
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def test_probes_answer_under_300_slow_clients_and_the_slow_ones_are_cut(tmp_path: Path, ollama) -> None:
    with serving(tmp_path, ollama, request_timeout=3.0) as rig:
        with SlowClients(rig.running.server.port, 300) as slow:
            for _ in range(5):  # while they are connected
                response = httpx.get(f"{rig.url}/health", timeout=10)
                assert response.status_code == 200 and response.text == "OK"
                assert rig.client.get("/api/v1/models").status_code == 200
            # Every one is cut: the oldest shed to make room, the rest after the bound.
            eventually(lambda: slow.cut == 300, timeout=60)
        assert httpx.get(f"{rig.url}/readiness", timeout=10).status_code == 200


def test_a_slow_client_is_cut_after_the_bound_and_a_quick_one_is_not(tmp_path: Path, ollama) -> None:
    with serving(tmp_path, ollama, request_timeout=2.0) as rig:
        started = time.monotonic()
        with SlowClients(rig.running.server.port, 3, interval=0.2) as headers, \
                SlowClients(rig.running.server.port, 3, interval=0.2, preamble=BODY_HEAD) as body:
            eventually(lambda: headers.cut == 3 and body.cut == 3, timeout=30)
            assert time.monotonic() - started >= 1.5  # not before its time (a generous lower bound)
        # An idle keep-alive connection between quick requests is not a slow request.
        with httpx.Client(base_url=rig.url, timeout=10) as client:
            assert client.get("/health").status_code == 200
            time.sleep(2.5)  # longer than the bound, idle: the connection may be reused
            assert client.get("/health").status_code == 200


def test_the_default_bound() -> None:
    assert REQUEST_TIMEOUT == 10.0
    assert runtime.ApiOptions(None, None, "default", "a <a@b.c>", False).request_timeout == REQUEST_TIMEOUT
