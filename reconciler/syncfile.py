"""Asking a reconciler in another process on the same host for a cycle, outside Kubernetes: the
counterpart of `cluster/syncrequest.py` for `ollama-gitops api` beside `ollama-gitops reconcile`
sharing one state directory.

The API writes the time of the request to `<state-dir>/sync-requested` (atomically: a temporary
file renamed into place); the reconciler reads that small file once a second and requests a cycle
when its content changes. Content, not modification time: two requests within the file system's
time granularity must still differ, and a request only needs to differ from the last one seen.
Requests coalesce as every request does: several during one cycle make it loop once more.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["FILE_NAME", "SyncFileWatcher", "request_sync"]

log = logging.getLogger("ollama_gitops.syncfile")

FILE_NAME = "sync-requested"
POLL_INTERVAL = 1.0  # seconds between two reads of the file: the most a request waits


def request_sync(state_dir: Path, at: datetime | None = None) -> str:
    """Ask the reconciler of `state_dir` for a cycle; returns the value written. Raises OSError."""
    value = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="milliseconds")
    value = value.replace("+00:00", "Z")
    handle, temporary = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=state_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(value + "\n")
        os.replace(temporary, state_dir / FILE_NAME)  # a reader sees the old value or the new, whole
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return value


class SyncFileWatcher:
    """Reads `<state-dir>/sync-requested` every `interval` seconds and calls `on_request` when its
    content is new. What the file holds at start is the baseline: the first cycle runs anyway."""

    def __init__(self, state_dir: Path, on_request: Callable[[], None], *, interval: float = POLL_INTERVAL) -> None:
        self._path = state_dir / FILE_NAME
        self._on_request = on_request
        self._interval = interval
        self._seen = self._read()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0  # requests passed on to on_request (for tests and logs)

    def start(self) -> SyncFileWatcher:
        """Start the polling thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ollama-gitops-sync-file", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            value = self._read()
            if not value or value == self._seen:
                continue
            self._seen = value
            self.requests += 1
            log.info("action=sync-requested at=%s: starting a cycle", value[:40])
            try:
                self._on_request()
            except Exception:  # the watcher must outlive a faulty callback
                log.exception("sync request callback failed")

    def _read(self) -> str | None:
        try:
            return self._path.read_text(encoding="utf-8", errors="replace")[:100].strip() or None
        except OSError:  # not there (no request yet), or unreadable for a moment: nothing to do
            return None
