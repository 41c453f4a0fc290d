"""The reconciler's own memory: what it applied, what it pulled, and the live status of each model.

Kept in the state directory as two JSON files, each replaced atomically (temp file, fsync, rename):
`models.json` changes only when a model's record does, and `sync.json`, small, after every cycle, so
that a no-op cycle never rewrites the record of every model. A lock file stops two processes from
reconciling the same state directory.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .desired import DesiredState, ModelKey, Problem

PENDING, PULLING, READY, FAILED = "Pending", "Pulling", "Ready", "Failed"
STATES = (PENDING, PULLING, READY, FAILED)

FORMAT_VERSION = 1


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
    progress_completed: int | None = None  # bytes, while Pulling
    progress_total: int | None = None
    failures: int = 0  # consecutive failed pulls, for backoff
    next_retry_at: float | None = None  # epoch seconds
    refresh_handled: str | None = None  # the refreshRequestedAt value already acted on


@dataclass
class ModelRecord:
    spec: AppliedSpec
    status: ModelStatus = field(default_factory=ModelStatus)


@dataclass
class SyncStatus:
    """The reconciler as a whole."""

    last_fetched_commit: str | None = None
    last_applied_commit: str | None = None
    last_cycle_at: str | None = None
    last_cycle_duration: float | None = None
    last_cycle_outcome: str | None = None  # "Succeeded", "Failed", "NoOp"
    last_cycle_message: str | None = None
    last_resync_at: float | None = None  # epoch seconds of the last look at Ollama for drift
    problems: tuple[Problem, ...] = ()


class StateLocked(RuntimeError):
    """Another process is reconciling the same state directory."""


class StateStore:
    """Records of every model the reconciler manages, plus the sync summary. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.RLock()
        self._models: dict[ModelKey, ModelRecord] = {}
        self._owned: set[str] = set()  # references ollama-gitops itself pulled: the only ones it may prune
        self.sync = SyncStatus()
        self._lock_file: Any = None
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

    def release_process_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- reading ----------------------------------------------------------------------------------
    def records(self) -> dict[ModelKey, ModelRecord]:
        """A deep copy of every record, safe to read while pulls update the store."""
        with self._lock:
            return copy.deepcopy(self._models)

    def record(self, key: ModelKey) -> ModelRecord | None:
        with self._lock:
            found = self._models.get(key)
            return copy.deepcopy(found)

    def needs_attention(self, now: float, desired: DesiredState) -> bool:
        """Is anything left to do without a new commit: a pull to start or retry, a removal to finish?"""
        with self._lock:
            for key, record in self._models.items():
                if key not in desired.models and key not in desired.unreadable:
                    return True  # removed from Git but not pruned yet (e.g. its pull was in flight)
                if record.spec.suspend:
                    continue
                status = record.status
                if status.state == PENDING or (status.state == FAILED and (status.next_retry_at or 0) <= now):
                    return True
        return False

    def owned(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._owned)

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def editing(self) -> Iterator[_Edit]:
        """Change records under the lock; `models.json` is written once, if anything changed."""
        with self._lock:
            edit = _Edit(self._models, self._owned)
            yield edit
            if edit.changed:
                self._save_models()

    def update_progress(self, keys: tuple[ModelKey, ...], completed: int, total: int) -> None:
        """Pull progress, kept in memory only: it is stale the moment the process dies anyway."""
        with self._lock:
            for key in keys:
                record = self._models.get(key)
                if record is not None:
                    record.status.progress_completed, record.status.progress_total = completed, total

    def save_sync(self, sync: SyncStatus) -> None:
        with self._lock:
            self.sync = sync
            payload = dataclasses.asdict(sync)
            payload["problems"] = [dataclasses.asdict(p) for p in sync.problems]
            _write_json(self.directory / "sync.json", {"version": FORMAT_VERSION, **payload})

    # -- persistence --------------------------------------------------------------------------------
    def _save_models(self) -> None:
        models = []
        for key, record in sorted(self._models.items()):
            status = dataclasses.asdict(record.status)
            status.pop("progress_completed")
            status.pop("progress_total")
            models.append({"namespace": key.namespace, "name": key.name, "spec": dataclasses.asdict(record.spec), "status": status})
        _write_json(self.directory / "models.json", {"version": FORMAT_VERSION, "owned": sorted(self._owned), "models": models})

    def _load(self) -> None:
        models = _read_json(self.directory / "models.json")
        if models:
            self._owned = set(models.get("owned", []))
            for item in models.get("models", []):
                status = ModelStatus(**item["status"])
                if status.state == PULLING:
                    status.state = PENDING  # the pull died with the previous process
                key = ModelKey(item["namespace"], item["name"])
                self._models[key] = ModelRecord(AppliedSpec(**item["spec"]), status)
        sync = _read_json(self.directory / "sync.json")
        if sync:
            sync.pop("version", None)
            problems = tuple(Problem(**p) for p in sync.pop("problems", []))
            self.sync = SyncStatus(**sync, problems=problems)


class _Edit:
    """The mutable view handed out by StateStore.editing()."""

    def __init__(self, models: dict[ModelKey, ModelRecord], owned: set[str]) -> None:
        self._models = models
        self._owned = owned
        self.changed = False

    def get(self, key: ModelKey) -> ModelRecord | None:
        return self._models.get(key)

    def put(self, key: ModelKey, record: ModelRecord) -> None:
        self._models[key] = record
        self.changed = True

    def status(self, key: ModelKey) -> ModelStatus | None:
        """The live status to change in place (marks the store changed)."""
        record = self._models.get(key)
        if record is None:
            return None
        self.changed = True
        return record.status

    def forget(self, key: ModelKey) -> None:
        if self._models.pop(key, None) is not None:
            self.changed = True

    def own(self, reference: str, owned: bool = True) -> None:
        if owned and reference not in self._owned:
            self._owned.add(reference)
            self.changed = True
        elif not owned and reference in self._owned:
            self._owned.discard(reference)
            self.changed = True


def utc_now_rfc3339() -> str:
    """Now, as the seed writes times: RFC 3339, seconds precision, `Z`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
