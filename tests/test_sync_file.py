"""`reconciler.syncfile`: a cycle asked for through a file in the state directory (an API process
beside a reconciler process on one host). Waits poll for a condition; none sleeps."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ollama_gitops.reconciler.syncfile import FILE_NAME, SyncFileWatcher, request_sync
from waiting import eventually

T0 = datetime(2026, 11, 25, 14, 0, 0, 123000, tzinfo=timezone.utc)


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def test_a_request_is_a_new_value_in_the_file(tmp_path: Path) -> None:
    assert request_sync(tmp_path, T0) == "2026-11-25T14:00:00.123Z"
    assert (tmp_path / FILE_NAME).read_text() == "2026-11-25T14:00:00.123Z\n"
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left behind


def test_the_watcher_requests_a_cycle_per_new_value_not_for_the_one_found_at_start(tmp_path: Path) -> None:
    request_sync(tmp_path, T0)  # an old request, from before this reconciler started
    counter = Counter()
    watcher = SyncFileWatcher(tmp_path, counter, interval=0.01).start()
    try:
        request_sync(tmp_path, T0 + timedelta(seconds=1))
        eventually(lambda: counter.count == 1)
        request_sync(tmp_path, T0 + timedelta(seconds=1))  # the same value again is no new request
        request_sync(tmp_path, T0 + timedelta(seconds=2))
        eventually(lambda: counter.count >= 2)
        assert watcher.requests == 2
    finally:
        watcher.stop()
    assert counter.count == 2


def test_no_file_at_start_is_no_request_and_the_first_one_counts(tmp_path: Path) -> None:
    counter = Counter()
    watcher = SyncFileWatcher(tmp_path, counter, interval=0.01).start()
    try:
        request_sync(tmp_path, T0)
        eventually(lambda: counter.count == 1)
    finally:
        watcher.stop()
