"""The last cycles the reconciler ran, kept in the state directory across restarts.

`history.jsonl` holds one JSON line per cycle that did something or failed (a no-op cycle, "up to
date", would push every useful entry out within two hours at the default interval). A line is
appended (and fsynced) at the end of each cycle, so a crash loses at most the line being written;
when the file holds twice the entries kept, it is rewritten atomically (temp file, fsync, rename)
with the newest `KEEP`. Reading is damage-tolerant, like state.py: a torn last line, a line that is
not JSON or an entry of the wrong shape is skipped (and said once in a warning), never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ollama_gitops.history")

HISTORY = "history.jsonl"
KEEP = 100  # cycles shown
MAX_NAMES = 200  # model names kept per list in one entry (a cold start pulls thousands)


@dataclass(frozen=True)
class CycleEntry:
    """One cycle, as the history shows it."""

    time: str  # RFC 3339 (seconds, Z) of its end
    commit: str | None
    duration_seconds: float
    outcome: str  # Succeeded or Failed
    message: str
    pulled: tuple[str, ...] = ()  # "namespace/name", or "server: namespace/name" in a fleet
    deleted: tuple[str, ...] = ()
    pulled_count: int = 0  # the whole count, when the lists were cut to MAX_NAMES
    deleted_count: int = 0

    def view(self) -> dict[str, Any]:
        """The entry as GET /api/v1/history shows it."""
        return {"time": self.time, "commit": self.commit, "durationSeconds": self.duration_seconds,
                "outcome": self.outcome, "message": self.message, "pulled": list(self.pulled),
                "deleted": list(self.deleted), "pulledCount": self.pulled_count, "deletedCount": self.deleted_count}


def entry(time: str, commit: str | None, duration: float, outcome: str, message: str,
          pulled: Sequence[str], deleted: Sequence[str]) -> CycleEntry:
    """An entry with its name lists bounded (the counts stay whole)."""
    return CycleEntry(time, commit, round(duration, 6), outcome, message[:2048], tuple(pulled[:MAX_NAMES]),
                      tuple(deleted[:MAX_NAMES]), len(pulled), len(deleted))


class History:
    """The history file of one state directory. Thread-safe; readers in other processes re-read it
    when it changes."""

    def __init__(self, directory: Path, *, keep: int = KEEP) -> None:
        self.path = directory / HISTORY
        self.keep = keep
        self._lock = threading.Lock()
        self._entries: list[CycleEntry] = []
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._lines = 0

    def append(self, item: CycleEntry) -> None:
        """Record one cycle (by the reconciler's process only)."""
        line = (json.dumps(asdict(item), separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            self._read()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._entries = [*self._entries, item][-self.keep:]
            self._lines += 1
            if self._lines >= 2 * self.keep:
                self._rewrite()
            self._stamp = _stamp(self.path)

    def entries(self) -> list[CycleEntry]:
        """The last `keep` cycles, newest first."""
        with self._lock:
            self._read()
            return list(reversed(self._entries))

    def _read(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._entries, self._lines = [], 0
            return
        entries, skipped = [], 0
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # torn by a crash mid-append (or being written now): not a whole entry
        for line in lines:
            try:
                entries.append(_decode(json.loads(line)))
            except (ValueError, TypeError):
                skipped += 1
        if skipped:
            log.warning("action=history-damaged path=%s skipped=%d: %d unreadable line(s) of the cycle history "
                        "are left out; the others are shown", self.path, skipped, skipped)
        self._entries, self._lines = entries[-self.keep:], len(lines)

    def _rewrite(self) -> None:
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for item in self._entries:
                    handle.write((json.dumps(asdict(item), separators=(",", ":")) + "\n").encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._lines = len(self._entries)


def _decode(data: object) -> CycleEntry:
    if not isinstance(data, dict):
        raise ValueError("an entry must be an object")
    item = CycleEntry(**{**data, "pulled": tuple(data.get("pulled", ())), "deleted": tuple(data.get("deleted", ()))})
    checks = ((item.time, str), (item.duration_seconds, (int, float)), (item.outcome, str), (item.message, str),
              (item.pulled_count, int), (item.deleted_count, int))
    if not all(isinstance(value, kind) for value, kind in checks) or not (item.commit is None or isinstance(item.commit, str)) \
            or not all(isinstance(n, str) for n in (*item.pulled, *item.deleted)):
        raise ValueError("an entry's field has the wrong type")
    return item


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size
