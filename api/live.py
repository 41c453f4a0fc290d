"""The events a page sees, made from what the status source says changed.

The store calls `changed(keys)` on the thread that made the change (a pull's, a cycle's); that only
marks the keys and wakes the feed's own thread, which renders each changed model once as the API
shows it and publishes it. So a burst of progress updates costs the reconciler a set insertion each,
and pages get at most one update per model every `interval` seconds.

The same thread notices changes the store does not announce: the sync summary (a cycle's end, the
API's own fetch), the servers' reachability, and, beside a reconciler in another process
(`ollama-gitops api`), everything: there it follows the state files (the journal and sync.json) and
so derives model and status events from what the reconciler wrote.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from ..reconciler import events
from ..reconciler.events import EventBus
from ..reconciler.models.desired import ModelKey
from ..reconciler.state import ModelRecord

from .catalog import Catalog, StatusSource

log = logging.getLogger("ollama_gitops.api.live")

INTERVAL = 0.2  # seconds between two batches of model events at most once a change is seen
FOLLOW_INTERVAL = 0.5  # seconds between looks at the status (and, with a follower, the state files)
BATCH = 500  # models per event (a cold start changes thousands at once)


class LiveFeed:
    """Publishes model, status and server events on `bus` (see the module docstring)."""

    def __init__(self, bus: EventBus, catalog: Catalog, status: Callable[[], dict[str, Any]],
                 servers: Callable[[], list[dict[str, Any]]], *, follow: Callable[[], object] | None = None,
                 records: StatusSource | None = None,
                 interval: float = INTERVAL, follow_interval: float = FOLLOW_INTERVAL) -> None:
        """`records`: a status source that announces nothing (the cluster's cache); its records are
        compared when its version moves, while a page listens, to find what changed."""
        self.bus = bus
        self._catalog = catalog
        self._status = status
        self._servers = servers
        self._follow = follow
        self._interval = interval
        self._follow_interval = follow_interval
        self._wake = threading.Condition(threading.Lock())
        self._dirty: set[ModelKey] = set()
        self._everything = False
        self._stopping = False
        self._last_status: dict[str, Any] | None = None
        self._last_servers: list[dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._records = records
        self._seen: tuple[int, dict[ModelKey, ModelRecord]] | None = None  # (version, records) compared

    def changed(self, keys: Collection[ModelKey] | None) -> None:
        """The records of `keys` changed (None: any may have). Quick, never blocks for long."""
        with self._wake:
            if keys is None:
                self._everything = True
            else:
                self._dirty.update(keys)
            self._wake.notify()

    def start(self) -> LiveFeed:
        self._last_status, self._last_servers = self._status(), self._servers()
        self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.bus.close()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._stopping and not self._dirty and not self._everything:
                    self._wake.wait(self._follow_interval)
                if self._stopping:
                    return
            try:
                self._turn()
            except Exception:  # a fault here must not end the feed: pages would stop updating
                log.exception("action=live-feed-failed")
            with self._wake:  # a burst of changes becomes one batch per interval
                if not self._stopping:
                    self._wake.wait(self._interval)

    def _turn(self) -> None:
        if self._follow is not None and self.bus.subscribers:
            self._follow()  # takes in the other process's writes; the store calls changed()
        if self._records is not None and self.bus.subscribers:
            self._compare_records(self._records)
        with self._wake:
            dirty, self._dirty = self._dirty, set()
            everything, self._everything = self._everything, False
        # With no page listening, a burst (a cold start changes every record) is one `reset` in the
        # ring rather than a view of each model for nobody: a page that resumes reads everything again.
        if everything or (len(dirty) > BATCH and not self.bus.subscribers):
            self.bus.publish(events.RESET, {})
        elif dirty:
            self._publish_models(dirty)
        status = self._status()
        if status != self._last_status:
            self._last_status = status
            self.bus.publish(events.STATUS, status)
        servers = self._servers()
        if servers != self._last_servers:
            self._last_servers = servers
            self.bus.publish(events.SERVERS, {"items": servers})

    def _compare_records(self, source: StatusSource) -> None:
        version = source.version
        if self._seen is not None and self._seen[0] == version:
            return
        records = source.records()
        if self._seen is not None:
            before = self._seen[1]
            self.changed({k for k in records.keys() | before.keys() if records.get(k) != before.get(k)})
        self._seen = (version, records)

    def _publish_models(self, keys: set[ModelKey]) -> None:
        shown, removed = [], []
        for key in sorted(keys):
            view = self._catalog.get(key.namespace, key.name)
            if view is None:
                removed.append({"namespace": key.namespace, "name": key.name})
            else:
                shown.append(view)
        for start in range(0, len(shown), BATCH):
            self.bus.publish(events.MODELS, {"items": shown[start:start + BATCH]})
        for start in range(0, len(removed), BATCH):
            self.bus.publish(events.REMOVED, {"items": removed[start:start + BATCH]})
