"""A Server-Sent Events reader for tests: reads a real stream over HTTP in a thread, parsing events
as a browser's EventSource does, and keeps them (and the comments) for the test to wait on."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    type: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        self.events: list[SseEvent] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=120.0))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SseReader:
        self._thread.start()
        return self

    def of(self, type_: str) -> list[SseEvent]:
        return [e for e in list(self.events) if e.type == type_]

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in list(self.events) if e.id]
        return ids[-1] if ids else None

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self.headers) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    response.read()
                    return
                fields: dict[str, list[str]] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "data" in fields:
                            self.events.append(SseEvent((fields.get("id") or [None])[-1],
                                                        (fields.get("event") or ["message"])[-1],
                                                        "\n".join(fields["data"])))
                        fields = {}
                    elif line.startswith(":"):
                        self.comments.append(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        except (httpx.HTTPError, RuntimeError) as exc:  # closed by the test, or cut by the server
            self.error = exc
        finally:
            self.ended.set()
