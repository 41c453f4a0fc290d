"""The reconciler's own memory: what it applied, what it pulled, and the live status of each model.

Kept in the state directory as a snapshot and a journal, the way databases keep a log:
- `models.json`, every model's record, only ever replaced atomically (temp file, fsync, rename);
- `models.journal`, one JSON line per changed record, appended (and fsynced) at the end of each
  edit, so that a cycle writes in proportion to what changed, not to the size of the repository;
  when the journal outgrows the snapshot, a new snapshot is written and the journal emptied;
- `sync.json`, the reconciler as a whole, replaced atomically after each cycle.
Loading reads the snapshot and replays the journal; a line torn by a crash mid-append is dropped
(its edit had not been acknowledged). A lock file stops two processes from reconciling the same
state directory.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .models.desired import ModelKey, Problem
from .models.naming import normalize_reference

PENDING, PULLING, READY, FAILED = "Pending", "Pulling", "Ready", "Failed"
STATES = (PENDING, PULLING, READY, FAILED)

FORMAT_VERSION = 1
SNAPSHOT, JOURNAL = "models.json", "models.journal"
MIN_COMPACTION = 1000  # journal lines before a snapshot is considered at all


@dataclass(frozen=True)
class AppliedSpec:
    """The last good version of a model file that the reconciler acted on."""

    reference: str
    path: str
    prune: bool = True
    suspend: bool = False
    refresh_requested_at: str | None = None


@dataclass
class ModelStatus:
    """Live status of one model, in the seed operator's words (`state` is one of STATES)."""

    state: str = PENDING
    size: int | None = None
    digest: str | None = None
    last_pull_time: str | None = None
    error: str | None = None
    applied_commit: str | None = None
    owned: bool = False  # ollama-gitops pulled this model: only then may it prune the weights
    failures: int = 0  # consecutive failed pulls, for backoff
    next_retry_at: float | None = None  # epoch seconds
    refresh_handled: str | None = None  # the refreshRequestedAt value already acted on
    progress_completed: int | None = None  # bytes, while Pulling; never persisted
    progress_total: int | None = None


_TRANSIENT = ("progress_completed", "progress_total")


@dataclass
class ModelRecord:
    spec: AppliedSpec
    status: ModelStatus = field(default_factory=ModelStatus)

    def copy(self) -> ModelRecord:
        return ModelRecord(self.spec, dataclasses.replace(self.status))


@dataclass(frozen=True)
class SyncStatus:
    """The reconciler as a whole."""

    last_fetched_commit: str | None = None
    last_applied_commit: str | None = None
    last_cycle_at: str | None = None
    last_cycle_duration: float | None = None
    last_cycle_outcome: str | None = None  # "Succeeded" or "Failed"
    last_cycle_message: str | None = None
    last_resync_at: float | None = None  # epoch seconds of the last full look at Ollama
    problems: tuple[Problem, ...] = ()


class StateLocked(RuntimeError):
    """Another process is reconciling the same state directory."""


class StateStore:
    """Records of every model the reconciler manages, plus the sync summary. Thread-safe."""

    def __init__(self, directory: Path, *, readonly: bool = False) -> None:
        self.directory = directory
        self._readonly = readonly  # a follower of another process's store: never writes
        self._lock = threading.RLock()
        self._models: dict[ModelKey, ModelRecord] = {}
        self._by_reference: dict[str, set[ModelKey]] = defaultdict(set)
        self._unsettled: set[ModelKey] = set()  # Pending or Failed, and not suspended
        self._journal_lines = 0
        self._journal_offset = 0  # bytes of the journal taken in
        self._sync_mtime = 0
        self._snapshot_mtime = 0
        self.version = 0  # bumped by every edit that changed a record
        self.sync = SyncStatus()
        self._lock_file: TextIO | None = None
        self._load()

    # -- process lock ---------------------------------------------------------------------------
    def acquire_process_lock(self) -> None:
        """Take the state directory for this process, or raise StateLocked."""
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StateLocked(f"another ollama-gitops process is reconciling {self.directory}") from None
        self._lock_file = handle
        # Only the lock holder may mend the files (cut a journal line torn by a crash), and what
        # was on disk before the lock was taken may have changed since: read it all again.
        self._reload(truncate=True)

    def release_process_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- reading ----------------------------------------------------------------------------------
    def keys(self) -> frozenset[ModelKey]:
        with self._lock:
            return frozenset(self._models)

    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]:
        """Copies of the records of `keys` (all when None), safe to read while pulls update the store."""
        with self._lock:
            if keys is None:
                return {k: r.copy() for k, r in self._models.items()}
            return {k: self._models[k].copy() for k in keys if k in self._models}

    def record(self, key: ModelKey) -> ModelRecord | None:
        with self._lock:
            found = self._models.get(key)
            return found.copy() if found is not None else None

    def related(self, keys: Collection[ModelKey], references: Collection[str] = ()) -> set[ModelKey]:
        """`keys`, plus every recorded key that shares a reference with them or is for `references`."""
        with self._lock:
            wanted = {normalize_reference(r) for r in references}
            wanted.update(normalize_reference(self._models[k].spec.reference) for k in keys if k in self._models)
            related = set(keys)
            for reference in wanted:
                related.update(self._by_reference.get(reference, ()))
            return related

    def unsettled(self, now: float) -> set[ModelKey]:
        """Models with work left without a new commit: a pull to start, or a failed one due for retry."""
        with self._lock:
            return {
                key for key in self._unsettled
                if self._models[key].status.state == PENDING or (self._models[key].status.next_retry_at or 0) <= now
            }

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def editing(self) -> Iterator[_Edit]:
        """Change records under the lock; the files of the records touched are written at the end."""
        with self._lock:
            edit = _Edit(self._models)
            try:
                yield edit
            finally:
                if edit.touched:
                    self._commit(edit.touched, edit.before)

    def update_progress(self, keys: Collection[ModelKey], completed: int, total: int) -> None:
        """Pull progress, kept in memory only: it is stale the moment the process dies anyway."""
        with self._lock:
            for key in keys:
                record = self._models.get(key)
                if record is not None:
                    record.status.progress_completed, record.status.progress_total = completed, total
            self.version += 1

    def follow(self) -> bool:
        """For a reader beside the reconciler's process: take in what it wrote since; True if anything.

        Reads only the journal lines appended since the last call, or everything again after a
        compaction (a new snapshot), so following a large store costs what changed.
        """
        with self._lock:
            journal = self.directory / JOURNAL
            size = journal.stat().st_size if journal.exists() else 0
            changed = _mtime(self.directory / "sync.json") != self._sync_mtime
            if _mtime(self.directory / SNAPSHOT) != self._snapshot_mtime or size < self._journal_offset:
                self._reload(truncate=False)
                changed = True
            elif size > self._journal_offset:
                self._replay(journal)
                changed = True
            elif changed:
                self._load_sync()
            if changed:
                self.version += 1
            return changed

    def save_sync(self, sync: SyncStatus, durable: bool = True) -> None:
        """Record the sync summary; `durable=False` skips the fsync (for what a restart can do without)."""
        with self._lock:
            self.sync = sync
            payload = dataclasses.asdict(sync)
            payload["problems"] = [dataclasses.asdict(p) for p in sync.problems]
            _write_json(self.directory / "sync.json", {"version": FORMAT_VERSION, **payload}, durable=durable)

    # -- persistence --------------------------------------------------------------------------------
    def _commit(self, touched: set[ModelKey], before: Mapping[ModelKey, str | None]) -> None:
        changes = []
        for key in sorted(touched):
            old_reference = before.get(key)
            if old_reference is not None:
                self._by_reference[old_reference].discard(key)
            record = self._models.get(key)
            self._index(key, record)
            changes.append((key, record))
        self.version += 1
        self._persist(changes)

    def _persist(self, changes: list[tuple[ModelKey, ModelRecord | None]]) -> None:
        """Make the changed records durable (called under the lock). Here: append to the journal."""
        lines = [json.dumps({"key": list(key), "record": _to_json(record) if record else None}, separators=(",", ":"))
                 for key, record in changes]
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with open(self.directory / JOURNAL, "ab") as journal:
            journal.write(payload)
            journal.flush()
            os.fsync(journal.fileno())
        self._journal_lines += len(lines)
        self._journal_offset += len(payload)
        if self._journal_lines > max(MIN_COMPACTION, len(self._models)):
            self._compact()

    def _compact(self) -> None:
        # The snapshot holds every journal line's effect, so replaying a journal that a crash left
        # behind over it changes nothing: each key's last line equals its snapshot value.
        models = [{"key": list(k), "record": _to_json(r)} for k, r in sorted(self._models.items())]
        _write_json(self.directory / SNAPSHOT, {"version": FORMAT_VERSION, "models": models}, durable=True)
        self._snapshot_mtime = _mtime(self.directory / SNAPSHOT)
        with open(self.directory / JOURNAL, "w", encoding="utf-8") as journal:
            journal.flush()
            os.fsync(journal.fileno())
        self._journal_lines = self._journal_offset = 0

    def _index(self, key: ModelKey, record: ModelRecord | None) -> None:
        if record is None:
            self._unsettled.discard(key)
            return
        self._by_reference[normalize_reference(record.spec.reference)].add(key)
        if not record.spec.suspend and record.status.state in (PENDING, FAILED):
            self._unsettled.add(key)
        else:
            self._unsettled.discard(key)

    def _reload(self, truncate: bool) -> None:
        with self._lock:
            self._models.clear()
            self._by_reference.clear()
            self._unsettled.clear()
            self._journal_offset = self._journal_lines = 0
            self._load(truncate)

    def _load(self, truncate: bool = False) -> None:
        self._snapshot_mtime = _mtime(self.directory / SNAPSHOT)
        snapshot = _read_json(self.directory / SNAPSHOT) or {"models": []}
        for item in snapshot["models"]:
            self._models[ModelKey(*item["key"])] = _from_json(item["record"])
        journal = self.directory / JOURNAL
        if journal.exists():
            self._replay(journal)
            if truncate and self._journal_offset != journal.stat().st_size:
                os.truncate(journal, self._journal_offset)
        for key, record in self._models.items():
            if record.status.state == PULLING and not self._readonly:
                record.status.state = PENDING  # the pull died with the previous process
            self._index(key, record)
        self._load_sync()

    def _replay(self, journal: Path) -> None:
        offset = self._journal_offset
        with open(journal, "rb") as handle:
            handle.seek(offset)
            for raw in handle:
                try:
                    item = json.loads(raw)
                except ValueError:
                    break  # torn by a crash mid-append (or still being written): not acknowledged
                key = ModelKey(*item["key"])
                if item["record"] is None:
                    self._models.pop(key, None)
                    self._unsettled.discard(key)
                else:
                    self._models[key] = _from_json(item["record"])
                    self._index(key, self._models[key])
                offset += len(raw)
                self._journal_lines += 1
        self._journal_offset = offset

    def _load_sync(self) -> None:
        path = self.directory / "sync.json"
        sync = _read_json(path)
        if sync:
            self._sync_mtime = path.stat().st_mtime_ns
            sync.pop("version", None)
            problems = tuple(Problem(**p) for p in sync.pop("problems", []))
            self.sync = SyncStatus(**sync, problems=problems)


def _to_json(record: ModelRecord) -> dict[str, Any]:
    status = {k: v for k, v in dataclasses.asdict(record.status).items() if k not in _TRANSIENT}
    return {"spec": dataclasses.asdict(record.spec), "status": status}


def _from_json(data: Mapping[str, Any]) -> ModelRecord:
    return ModelRecord(AppliedSpec(**data["spec"]), ModelStatus(**data["status"]))


class _Edit:
    """The mutable view handed out by StateStore.editing(); remembers what it touched."""

    def __init__(self, models: dict[ModelKey, ModelRecord]) -> None:
        self._models = models
        self.touched: set[ModelKey] = set()
        self.before: dict[ModelKey, str | None] = {}

    def _touch(self, key: ModelKey) -> None:
        if key not in self.touched:
            self.touched.add(key)
            record = self._models.get(key)
            self.before[key] = normalize_reference(record.spec.reference) if record else None

    def get(self, key: ModelKey) -> ModelRecord | None:
        return self._models.get(key)

    def put(self, key: ModelKey, record: ModelRecord) -> None:
        self._touch(key)
        self._models[key] = record

    def status(self, key: ModelKey) -> ModelStatus | None:
        """The live status to change in place (the record is written at the end of the edit)."""
        if key not in self._models:
            return None
        self._touch(key)
        return self._models[key].status

    def forget(self, key: ModelKey) -> None:
        if key in self._models:
            self._touch(key)
            del self._models[key]


def utc_rfc3339(epoch: float) -> str:
    """An epoch time as the seed writes times: RFC 3339, seconds precision, `Z`."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, payload: Mapping[str, Any], durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, separators=(",", ":"))
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
