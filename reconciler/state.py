"""The reconciler's own memory: what it applied, what it pulled, and the live status of each model.

Kept in the state directory as a snapshot and a journal, the way databases keep a log:
- `models.json`, every model's record, only ever replaced atomically (temp file, fsync, rename);
- `models.journal`, one JSON line per changed record, appended (and fsynced) at the end of each
  edit, so that a cycle writes in proportion to what changed, not to the size of the repository;
  when the journal outgrows the snapshot, a new snapshot is written and the journal emptied;
- `sync.json`, the reconciler as a whole, replaced atomically after each cycle (`summary.py`).
Loading reads the snapshot and replays the journal; a line torn by a crash mid-append is dropped
(its edit had not been acknowledged). A lock file stops two processes from reconciling the same
state directory. Start-up reads the files once: taking the lock after the load takes in only what
was appended since (or everything again, if the snapshot was replaced meanwhile).

Damage beyond that (a file cut short, emptied or overwritten, values of the wrong type) never stops
start-up. The lock holder recovers what it can, says in a warning what was lost and what that means,
keeps the damaged file beside the others for inspection and writes clean ones: `sync.json` is only a
summary and starts afresh; of the records, every entry that reads and is well-typed is kept. Journal
lines carry a sequence number, and `sync.json` the last one written, so that a journal emptied or
cut short is noticed too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import operator
import os
import re
import sys
import threading
import time
from types import MappingProxyType
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .models.key import ModelKey
from .models.naming import normalize_reference
# The summary, the lock and the files' helpers: their own module, so that a process that reads no
# record (`uptodate`) defines none of the records' classes. Re-exported: the store's users find them here.
from .summary import (FAILED_OUTCOME, FORMAT_VERSION, JOURNAL, SNAPSHOT, SUCCEEDED, SYNC, ServerSeen, StateLocked,
                      SyncStatus, decode, lock_state_directory, mtime_ns, read_summary, record_files,
                      records_settled, type_name, utc_rfc3339, write_file, write_summary)

__all__ = ["DEFAULT_SERVER", "FAILED", "FAILED_OUTCOME", "FORMAT_VERSION", "JOURNAL", "MIN_COMPACTION", "PENDING",
           "PULLING", "READY", "SNAPSHOT", "STATES", "SUCCEEDED", "SYNC", "AppliedSpec", "ModelRecord", "ModelStatus",
           "OneServer", "ServerRecord", "ServerSeen", "StateLocked", "StateStore", "StoreStats", "SyncStatus",
           "on_server", "utc_rfc3339", "whole_state"]

PENDING, PULLING, READY, FAILED = "Pending", "Pulling", "Ready", "Failed"
STATES = (PENDING, PULLING, READY, FAILED)


def whole_state(states: Collection[str], every_server: bool) -> str:
    """A model's state as a whole from its `states` on the servers it is asked of (`every_server`:
    each has an entry): Failed if any failed, else Pulling if any pulls, else Pending if any is
    pending or has no entry (or none is asked), else Ready."""
    if FAILED in states:
        return FAILED
    if PULLING in states:
        return PULLING
    return PENDING if PENDING in states or not every_server or not states else READY

log = logging.getLogger("ollama_gitops.state")

DEFAULT_SERVER = "default"
"""The name of the one server given the old way (`--ollama-url URL`, `$OLLAMA_HOST`, nothing): records
written before fleets existed are its (see `ollama/inventory.py`)."""

MIN_COMPACTION = 1000  # journal lines before a snapshot is considered at all


# Slots on the records' classes: one of each per model (a status per model and server), kept for the
# process's life.
@dataclass(frozen=True, slots=True)
class AppliedSpec:
    """The last good version of a model file that the reconciler acted on."""

    reference: str
    path: str
    prune: bool = True
    suspend: bool = False
    refresh_requested_at: str | None = None


@dataclass(slots=True)
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

    def copy(self) -> ModelStatus:
        """A copy (`dataclasses.replace` costs fifteen times more, and lists copy every record)."""
        return ModelStatus(*_STATUS_VALUES(self))


_TRANSIENT = ("progress_completed", "progress_total")
_STATUS_VALUES = operator.attrgetter(*(f.name for f in dataclasses.fields(ModelStatus)))


@dataclass(slots=True, eq=False)
class ModelRecord:
    """What the reconciler knows of one model: the spec it acted on and, per server of the fleet it
    was planned on, its status there (no entry: never planned there). The whole is read with
    `fleetstatus.overall()`, never stored, so nothing can change an aggregate by mistake.

    `servers` is read-only: the store changes a record only by replacing it (see `StateStore.records`),
    but for its spec made another equal one (`_Edit.share`), which no reader can tell.
    There is one record per model, kept for the process's life, and most models are on one server:
    the servers of a record with one are a `OneServer`, its name and status, rather than a dict of
    one entry (which would cost more than the rest of the record)."""

    spec: AppliedSpec
    servers: Mapping[str, ModelStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.servers = _frozen_servers(self.servers)

    def with_status(self, server: str, status: ModelStatus) -> ModelRecord:
        """A new record: this one with `status` on `server` (this one is not changed)."""
        if not self.servers or (len(self.servers) == 1 and server in self.servers):
            return ModelRecord(self.spec, OneServer(server, status))
        return ModelRecord(self.spec, {**self.servers, server: status})

    def without(self, server: str) -> ModelRecord:
        """A new record: this one with no entry on `server`."""
        return ModelRecord(self.spec, {name: s for name, s in self.servers.items() if name != server})

    def copy(self) -> ModelRecord:
        """A deep copy (its statuses copied too), for a caller that changes them."""
        return ModelRecord(self.spec, {name: s.copy() for name, s in self.servers.items()})

    def on(self, server: str) -> ServerRecord | None:
        """The record as one server sees it (what `plan()` takes), None if never planned there."""
        status = self.servers.get(server)
        return ServerRecord(self.spec, status) if status is not None else None

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModelRecord):
            return NotImplemented
        return self.spec == other.spec and self.servers == other.servers

    __hash__ = None  # type: ignore[assignment]


class OneServer(Mapping[str, ModelStatus]):
    """The servers of a record with one server, as a read-only mapping (made when asked for)."""

    __slots__ = ("_name", "_status")

    def __init__(self, name: str, status: ModelStatus) -> None:
        self._name, self._status = name, status

    def __getitem__(self, name: str) -> ModelStatus:
        if name == self._name:
            return self._status
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self._status if name == self._name else default

    def __contains__(self, name: object) -> bool:
        return name == self._name

    def __iter__(self) -> Iterator[str]:
        yield self._name

    def __len__(self) -> int:
        return 1

    def items(self) -> tuple[tuple[str, ModelStatus]]:  # type: ignore[override]
        return ((self._name, self._status),)

    def values(self) -> tuple[ModelStatus]:  # type: ignore[override]
        return (self._status,)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OneServer):
            return self._name == other._name and self._status == other._status
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{{{self._name!r}: {self._status!r}}}"


_NO_SERVERS: Mapping[str, ModelStatus] = MappingProxyType({})


def _frozen_servers(servers: Mapping[str, ModelStatus]) -> Mapping[str, ModelStatus]:
    """`servers` as a record keeps them: read-only, and with one server no dict."""
    if isinstance(servers, OneServer):
        return servers
    if len(servers) == 1:
        (name, status), = servers.items()
        return OneServer(name, status)
    return MappingProxyType(dict(servers)) if servers else _NO_SERVERS


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """A model's record on one server: its spec and its status there (the status is the store's
    copy's, so changing it changes nothing recorded)."""

    spec: AppliedSpec
    status: ModelStatus


def on_server(records: Mapping[ModelKey, ModelRecord], server: str) -> Mapping[ModelKey, ServerRecord]:
    """`records` as `server` sees them: only the models planned there. A view, each entry made when
    asked for: a full plan over a hundred thousand recorded models holds no entry of each beside them."""
    return _OnServer(records, server)


class _OnServer(Mapping[ModelKey, ServerRecord]):
    __slots__ = ("_records", "_server")

    def __init__(self, records: Mapping[ModelKey, ModelRecord], server: str) -> None:
        self._records, self._server = records, server

    def __getitem__(self, key: ModelKey) -> ServerRecord:
        entry = self._records[key].on(self._server)
        if entry is None:
            raise KeyError(key)
        return entry

    def get(self, key: ModelKey, default: Any = None) -> Any:
        record = self._records.get(key)
        entry = record.on(self._server) if record is not None else None
        return default if entry is None else entry

    def __contains__(self, key: object) -> bool:
        record = self._records.get(key)  # type: ignore[call-overload]
        return record is not None and record.servers.get(self._server) is not None

    def __iter__(self) -> Iterator[ModelKey]:
        server = self._server
        return (key for key, record in self._records.items() if record.servers.get(server) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class StoreStats:
    """Counters of the work the store did (for tests and benchmarks)."""

    copied: int = 0  # records handed out (`records`, `record`): the records themselves, not copies
    fsyncs: int = 0  # files made durable (journal appends, snapshots, durable summaries)


class StateStore:
    """Records of every model the reconciler manages, plus the sync summary. Thread-safe."""

    def __init__(self, directory: Path, *, readonly: bool = False, lazy: bool = False) -> None:
        """`lazy`: read only the sync summary now, and the records when first used (a process whose
        cycle may end after the fetch, from the summary alone: see `settled_on_disk`)."""
        self.directory = directory
        self._readonly = readonly  # a follower of another process's store: never writes
        self._lock = threading.RLock()
        self._models: dict[ModelKey, ModelRecord] = {}
        # Per normalised reference, its one key or, shared by several models, a set of them (a set per
        # model would cost more than the record itself).
        self._by_reference: dict[str, ModelKey | set[ModelKey]] = {}
        self._unsettled: set[ModelKey] = set()  # Pending or Failed on some server, and not suspended
        self._pulling: set[ModelKey] = set()  # Pulling on some server
        self._journal_lines = 0
        self._journal_offset = 0  # bytes of the journal taken in
        self._journal_line_number = 0  # complete lines of the journal read (kept or skipped)
        self._seq = 0  # sequence number of the last change written (snapshot and journal)
        self._damage: list[str] = []  # what the last load could not read, said once by the lock holder
        self._sync_mtime = 0
        self._snapshot_mtime = 0
        self._journal_behind: str | None = None  # the damage line saying the journal lost changes
        self._sync_written: int | None = None  # the last change sequence number sync.json says was written
        self.records_read = 0  # snapshot entries and journal lines decoded since this store was made
        self.version = 0  # bumped by every edit that changed a record
        self.stats = StoreStats()
        self.sync = SyncStatus()
        self._lock_file: TextIO | None = None
        self._listeners: list[Callable[[AbstractSet[ModelKey] | None], None]] = []
        # The records' files as the last sync.json save saw them, and whether any record had work left.
        self._records_saved: dict[str, Any] | None = None
        self._loaded = False
        # What makes the records read from the files share strings with what the process holds of the
        # same models (their loaded files, the servers' listings): asked for once per load, it gives a
        # function of each entry read, `(key, record) -> (key, record)` equal to them (None: nothing).
        self.sharing: Callable[[], Callable[[ModelKey, ModelRecord], tuple[ModelKey, ModelRecord]] | None] | None = None
        self._share: Callable[[ModelKey, ModelRecord], tuple[ModelKey, ModelRecord]] | None = None
        self.mended = False  # a load found damage (records may be lost): what is recorded is not the whole
        if lazy:
            self._load_sync()
        else:
            self._load()
            self._loaded = True  # (a subclass's own `_load` need not say so)

    def add_listener(self, listener: Callable[[AbstractSet[ModelKey] | None], None]) -> None:
        """Call `listener(keys)` after every committed edit, progress update or change taken in by
        `follow()`, with the keys whose records changed (None: any may have, after a reload), a set
        the listener reads and does not keep (not a copy: a cold start's edit is of every record).
        It runs outside the store's lock, on the thread that made the change: it must be quick and
        not block."""
        self._listeners.append(listener)

    def _notify(self, keys: Collection[ModelKey] | None) -> None:
        if keys is not None and not keys:
            return
        changed = None if keys is None else keys if isinstance(keys, AbstractSet) else frozenset(keys)
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:  # a listener's fault must never fail the edit that was committed
                log.exception("action=state-listener-failed")

    # -- process lock ---------------------------------------------------------------------------
    def acquire_process_lock(self) -> None:
        """Take the state directory for this process, or raise StateLocked."""
        self._lock_file = lock_state_directory(self.directory)
        # Only the lock holder may mend the files (cut a journal line torn by a crash), and what was
        # on disk before the lock was taken may have changed since (a process that held it wrote on):
        # take in only that, unless the snapshot was replaced or the journal shrank (a compaction).
        with self._lock:
            if not self._loaded:  # the records are read when first used, by the lock holder
                if mtime_ns(self.directory / SYNC) != self._sync_mtime:
                    self._load_sync()  # rewritten by the process that held the lock before
                return
            journal = self.directory / JOURNAL
            size = journal.stat().st_size if journal.exists() else 0
            if mtime_ns(self.directory / SNAPSHOT) != self._snapshot_mtime or size < self._journal_offset:
                self._reload(truncate=True)
            else:
                self._catch_up()

    def release_process_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- reading ----------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        """Read the records now if that was put off (`lazy`), keeping the summary as it is in memory."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                sync = self.sync
                self._load(truncate=self._lock_file is not None)
                self._loaded = True
                self.sync = sync

    @property
    def loaded(self) -> bool:
        """Are the records read (a `lazy` store reads them when first used)?"""
        return self._loaded

    def settled_on_disk(self) -> bool:
        """Without reading the records: the last save of `sync.json` found no record with work left
        (Pending, Pulling or Failed, on any server), and nothing was written to them since (the
        snapshot and the journal are as that save saw them). False once the records are read: ask
        them then."""
        with self._lock:
            return not self._loaded and records_settled(self.directory, self._records_saved)

    def keys(self) -> frozenset[ModelKey]:
        self._ensure_loaded()
        with self._lock:
            return frozenset(self._models)

    def has(self, key: ModelKey) -> bool:
        """Is `key`'s model recorded?"""
        self._ensure_loaded()
        return key in self._models  # one dict look-up: atomic, no lock needed

    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]:
        """The records of `keys` (all when None) as they are now, safe to read while pulls update the
        store: an edit never changes a record, it replaces it (copy on write), so what this hands out
        stays as it was. Not to be changed (`ModelRecord.copy()` for a record to change); a dict of
        the records themselves, not of copies of them: no second copy of every record at once."""
        self._ensure_loaded()
        with self._lock:
            if keys is None:
                self.stats.copied += len(self._models)
                return dict(self._models)
            models = self._models
            found = {k: models[k] for k in keys if k in models}
            self.stats.copied += len(found)
            return found

    def tally(self) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        """How many models are in each state as a whole (over the servers each is recorded on, as
        `fleetstatus.overall_recorded` says), and on each server: for metrics, without a copy of every
        record."""
        self._ensure_loaded()
        with self._lock:
            records = self._models.values()
            whole = Counter(whole_state({s.state for s in r.servers.values()}, True) for r in records)
            on = Counter((server, status.state) for r in records for server, status in r.servers.items())
        return whole, on

    def record(self, key: ModelKey) -> ModelRecord | None:
        self._ensure_loaded()
        with self._lock:
            found = self._models.get(key)
            self.stats.copied += found is not None
            return found  # never changed: see `records`

    def any_recorded(self) -> bool:
        """Is any model recorded?"""
        self._ensure_loaded()
        return bool(self._models)

    def recorded_as(self, reference: str) -> ModelRecord | None:
        """The record of the one model recorded for the normalised `reference` (None: none, or several)."""
        self._ensure_loaded()
        found = self._by_reference.get(reference)  # (dict look-ups: atomic; a record is replaced, never changed)
        return self._models.get(found) if isinstance(found, ModelKey) else None

    def related(self, keys: Collection[ModelKey], references: Collection[str] = ()) -> set[ModelKey]:
        """`keys`, plus every recorded key that shares a reference with them or is for `references`."""
        self._ensure_loaded()
        with self._lock:
            wanted = {normalize_reference(r) for r in references}
            wanted.update(normalize_reference(self._models[k].spec.reference) for k in keys if k in self._models)
            related = set(keys)
            for reference in wanted:
                found = self._by_reference.get(reference)
                if isinstance(found, set):
                    related.update(found)
                elif found is not None:
                    related.add(found)
            return related

    def servers_recorded(self) -> set[str]:
        """The servers any record has an entry on."""
        self._ensure_loaded()
        with self._lock:
            return {name for record in self._models.values() for name in record.servers}

    def unsettled(self, now: float) -> set[ModelKey]:
        """Models with work left on some server without a new commit: a pull to start, or a failed one
        due for retry."""
        self._ensure_loaded()
        with self._lock:
            return {
                key for key in self._unsettled
                if any(s.state == PENDING or (s.state == FAILED and (s.next_retry_at or 0) <= now)
                       for s in self._models[key].servers.values())
            }

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def editing(self) -> Iterator[_Edit]:
        """Change records under the lock; the files of the records touched are written at the end."""
        self._ensure_loaded()
        edit = _Edit(self._models)
        try:
            with self._lock:
                try:
                    yield edit
                finally:
                    if edit.touched:
                        self._commit(edit.touched, edit.before)
        finally:  # what was committed is announced, however the edit ended
            self._notify(edit.touched)

    def update_progress(self, keys: Collection[ModelKey], server: str, completed: int, total: int) -> None:
        """Pull progress on `server`, kept in memory only: it is stale the moment the process dies anyway."""
        self._ensure_loaded()
        with self._lock:
            for key in keys:
                record = self._models.get(key)
                status = record.servers.get(server) if record is not None else None
                if status is not None:  # replaced, not changed: records handed out stay as they were
                    status = status.copy()
                    status.progress_completed, status.progress_total = completed, total
                    self._models[key] = record.with_status(server, status)  # type: ignore[union-attr]
            self.version += 1
        self._notify(keys)

    def follow(self) -> bool:
        """For a reader beside the reconciler's process: take in what it wrote since; True if anything.

        Reads only the journal lines appended since the last call, or everything again after a
        compaction (a new snapshot), so following a large store costs what changed.
        """
        keys: set[ModelKey] | None = set()
        with self._lock:
            journal = self.directory / JOURNAL
            size = journal.stat().st_size if journal.exists() else 0
            changed = mtime_ns(self.directory / SYNC) != self._sync_mtime
            if mtime_ns(self.directory / SNAPSHOT) != self._snapshot_mtime or size < self._journal_offset:
                self._reload(truncate=False)
                changed, keys = True, None
            elif size > self._journal_offset:
                self._replay(journal, replayed=keys)
                self._damage = []  # the lock holder says what is damaged, and mends it
                changed = True
            elif changed:
                self._load_sync()
            if changed:
                self.version += 1
        self._notify(keys)
        return changed

    def save_sync(self, sync: SyncStatus, durable: bool = True) -> None:
        """Record the sync summary; `durable=False` skips the fsync (for what a restart can do without)."""
        with self._lock:
            self.sync = sync
            if self._loaded:  # else nothing was written since the summary was read: it holds
                self._records_saved = record_files(self.directory, work_left=bool(self._unsettled or self._pulling))
            write_summary(self.directory, sync, self._seq if self._loaded else (self._sync_written or 0),
                          self._records_saved, durable)
            self.stats.fsyncs += durable

    # -- persistence --------------------------------------------------------------------------------
    def _commit(self, touched: AbstractSet[ModelKey], before: Mapping[ModelKey, str | None]) -> None:
        keys = sorted(touched)
        for key in keys:
            old_reference = before.get(key)
            if old_reference is not None:
                self._unindex_reference(old_reference, key)
            self._index(key, self._models.get(key))
        self.version += 1
        self._persist(_Changes(keys, self._models))

    def _persist(self, changes: Sequence[tuple[ModelKey, ModelRecord | None]]) -> None:
        """Make the changed records durable (called under the lock). Here: append to the journal, or
        write the snapshot when the edit is of as many records as the store holds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._journal_lines and len(changes) >= max(MIN_COMPACTION, len(self._models)):
            # An edit of every record (a cold start's first): the snapshot in place of the journal,
            # as durable, each record encoded once rather than into the journal and again at the
            # compaction the next edit makes. Only over an empty journal: a crash between the
            # snapshot and emptying the journal would replay older lines over this edit's records.
            self._seq += len(changes)
            self._compact()
            return
        written = 0
        with open(self.directory / JOURNAL, "ab") as journal:
            # Piece by piece: a cold start's first write of every record never becomes one string.
            for start in range(0, len(changes), _PIECE):
                lines = []
                for key, record in changes[start:start + _PIECE]:
                    self._seq += 1
                    lines.append(_ENCODE({"seq": self._seq, "key": list(key),
                                          "record": _to_json(record) if record else None}))
                payload = ("\n".join(lines) + "\n").encode("utf-8")
                journal.write(payload)
                written += len(payload)
            journal.flush()
            os.fsync(journal.fileno())
        self.stats.fsyncs += 1
        self._journal_lines += len(changes)
        self._journal_offset += written
        if self._journal_lines > max(MIN_COMPACTION, len(self._models)):
            self._compact()

    def _compact(self) -> None:
        # The snapshot holds every journal line's effect, so replaying a journal that a crash left
        # behind over it changes nothing: each key's last line equals its snapshot value.
        keys = sorted(self._models)

        def write(handle: TextIO) -> None:  # what json.dump writes, a piece at a time
            handle.write(f'{{"version":{FORMAT_VERSION},"seq":{self._seq},"models":[')
            for start in range(0, len(keys), _PIECE):
                handle.write(("," if start else "") + ",".join(
                    _ENCODE({"key": list(k), "record": _to_json(self._models[k])}) for k in keys[start:start + _PIECE]))
            handle.write("]}")

        write_file(self.directory / SNAPSHOT, write, durable=True)
        self.stats.fsyncs += 2  # the snapshot, and the emptied journal
        self._snapshot_mtime = mtime_ns(self.directory / SNAPSHOT)
        with open(self.directory / JOURNAL, "w", encoding="utf-8") as journal:
            journal.flush()
            os.fsync(journal.fileno())
        self._journal_lines = self._journal_offset = 0

    def _index(self, key: ModelKey, record: ModelRecord | None) -> None:
        if record is None:
            self._unsettled.discard(key)
            self._pulling.discard(key)
            return
        reference = normalize_reference(record.spec.reference)  # (the record's own string when it is in normal form)
        found = self._by_reference.setdefault(reference, key)
        if isinstance(found, set):
            found.add(key)
        elif found != key:
            self._by_reference[reference] = {found, key}
        statuses = record.servers.values()
        if not record.spec.suspend and any(s.state in (PENDING, FAILED) for s in statuses):
            self._unsettled.add(key)
        else:
            self._unsettled.discard(key)
        if any(s.state == PULLING for s in statuses):
            self._pulling.add(key)
        else:
            self._pulling.discard(key)

    def _unindex_reference(self, reference: str, key: ModelKey) -> None:
        found = self._by_reference.get(reference)
        if found == key:
            del self._by_reference[reference]
        elif isinstance(found, set):
            found.discard(key)
            if len(found) == 1:
                self._by_reference[reference] = found.pop()

    def _reload(self, truncate: bool) -> None:
        with self._lock:
            self._models.clear()
            self._by_reference.clear()
            self._unsettled.clear()
            self._pulling.clear()
            self._journal_offset = self._journal_lines = self._journal_line_number = self._seq = 0
            self._load(truncate)

    def _load(self, truncate: bool = False) -> None:
        """Read the snapshot, replay the journal and read the summary. `truncate` (the lock holder
        only) also mends: cuts a torn journal line, and after damage says what was lost and writes
        clean files, keeping the damaged ones aside."""
        self._loaded = True
        self._damage = []
        self._journal_behind = None
        self._snapshot_mtime = mtime_ns(self.directory / SNAPSHOT)
        self._share = self.sharing() if self.sharing is not None else None
        try:
            snapshot_seq = self._load_snapshot()
            journal = self.directory / JOURNAL
            first_seq: list[int] = []
            if journal.exists():
                self._replay(journal, first_seq)
        finally:
            self._share = None
        if first_seq and first_seq[0] > snapshot_seq + 1:
            self._damage.append(
                f"{self.directory / SNAPSHOT} is missing changes 1 to {first_seq[0] - 1} (the journal starts at "
                f"change {first_seq[0]}): {_LOST_EFFECT.format(what='the models whose last change was among them')}")
        self._settle_loaded(self._models)
        self._finish_load(truncate, self._load_sync())

    def _catch_up(self) -> None:
        """The lock holder's start on a store loaded before the lock: the journal lines appended since
        the load are replayed (the snapshot is the same), a torn last line is cut, the summary read
        again if it changed, and what the whole load found damaged is mended. Nothing is read twice."""
        journal = self.directory / JOURNAL
        replayed: set[ModelKey] = set()
        if journal.exists():
            self._replay(journal, replayed=replayed)
        self._settle_loaded({key: self._models[key] for key in replayed if key in self._models})
        if mtime_ns(self.directory / SYNC) != self._sync_mtime:  # rewritten since: what the load said of it is old
            self._damage = [line for line in self._damage if not line.startswith(str(self.directory / SYNC))]
            self._finish_load(True, self._load_sync())
        else:
            self._finish_load(True, self._sync_written)

    def _settle_loaded(self, records: Mapping[ModelKey, ModelRecord]) -> None:
        """Index records just read; a pull they say is under way died with the process that ran it."""
        for key, record in records.items():
            for status in record.servers.values():  # (not handed out yet: changed in place)
                if status.state == PULLING and not self._readonly:
                    status.state = PENDING  # the pull died with the previous process
            self._index(key, record)

    def _finish_load(self, truncate: bool, written: int | None) -> None:
        """After the records are in: cut a torn journal line (`truncate`, the lock holder), note a
        journal behind what `sync.json` says was `written`, and mend what is damaged (lock holder)."""
        journal = self.directory / JOURNAL
        if truncate and journal.exists() and self._journal_offset != journal.stat().st_size:
            os.truncate(journal, self._journal_offset)
        if self._journal_behind in self._damage:  # said again below if it still holds
            self._damage.remove(self._journal_behind)
        self._journal_behind = None
        snapshot_damaged = any(str(self.directory / SNAPSHOT) in line for line in self._damage)
        if written is not None and written > self._seq and not snapshot_damaged:
            self._journal_behind = (
                f"{self.directory / JOURNAL} ends at change {self._seq} but change {written} had been written: the "
                f"last {written - self._seq} change(s) are lost (the journal was emptied or cut short), and which "
                f"models they touched is unknown: {_LOST_EFFECT.format(what='a model pulled in that time')}")
            self._damage.append(self._journal_behind)
        if truncate and self._damage:
            self._mend()

    def _load_snapshot(self) -> int:
        """Take in the snapshot's records (every readable one); returns its sequence number."""
        path = self.directory / SNAPSHOT
        try:
            with open(path, encoding="utf-8", errors="replace") as source:
                streamed = self._stream_snapshot(path, source)
            if streamed is not None:
                return streamed
            raw = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return 0
        items, seq, error = _read_snapshot(raw)
        if error is not None:
            self._damage.append(
                f"{path} is damaged ({error}): {len(items)} record(s) recovered, any others are lost: "
                f"{_LOST_EFFECT.format(what='a model whose record is lost')}")
        self.records_read += len(items)
        for index, item in enumerate(items):
            self._take_entry(path, index + 1, item)
        self._seq = max(self._seq, seq)
        return seq

    def _take_entry(self, path: Path, number: int, item: object) -> None:
        """Take in the snapshot's entry `number` (1-based), or note it as unreadable."""
        try:
            key, record = _decode_change(item)
        except ValueError as exc:
            self._damage.append(f"{path} entry {number} is unreadable ({exc}): {_lost(item)}")
            return
        if record is not None:
            if self._share is not None:
                key, record = self._share(key, record)
            self._models[key] = record

    def _stream_snapshot(self, path: Path, source: TextIO) -> int | None:
        """Take in a snapshot as `_compact` writes it, read a piece at a time and decoded one entry
        at a time (the whole text, or the whole document decoded, would be held beside the records
        being made: at a restart on a hundred thousand records, as large as they are); its sequence
        number. None, with nothing taken in, for any other text (the whole is then decoded as before,
        which also says what is damaged)."""
        window = _Window(source)
        while len(window.text) < _HEAD_CHARACTERS and not window.ended:
            window.fill(0)
        head = _SNAPSHOT_HEAD.match(window.text)
        if head is None:
            return None
        damage, read = len(self._damage), self.records_read
        position, index = head.end(), 0
        try:
            more = not window.starts(position, "]")
            while more:
                item, position = window.decode(position)
                index += 1
                self.records_read += 1
                more = window.starts(position, ",")
                position += more
                self._take_entry(path, index, item)
                position = window.let_go(position)  # what was decoded is not kept
            position = window.read_to_end(position)
            if _SNAPSHOT_END.fullmatch(window.text, position) is None:
                raise ValueError("not the end of a snapshot")
        except ValueError:  # not JSON where an entry or the end should be: read as a whole below
            self._models.clear()
            del self._damage[damage:]
            self.records_read = read
            return None
        seq = int(head[1])
        self._seq = max(self._seq, seq)
        return seq

    def _replay(self, journal: Path, first_seq: list[int] | None = None, replayed: set[ModelKey] | None = None) -> None:
        offset = self._journal_offset
        with open(journal, "rb") as handle:
            handle.seek(offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-append (or still being written): not acknowledged
                offset += len(raw)
                self._journal_line_number += 1
                self.records_read += 1
                try:
                    item = json.loads(raw)
                    key, record = _decode_change(item)
                except ValueError as exc:
                    # A whole line that cannot be used: skip it and keep the rest.
                    self._damage.append(f"{journal} line {self._journal_line_number} is unreadable ({exc}): "
                                        f"{_lost(raw.decode('utf-8', 'replace'))}")
                    continue
                seq = item.get("seq")
                if isinstance(seq, int):
                    if first_seq is not None and not first_seq:
                        first_seq.append(seq)
                    self._seq = max(self._seq, seq)
                if replayed is not None:
                    replayed.add(key)
                if record is None:
                    self._models.pop(key, None)
                    self._unsettled.discard(key)
                    self._pulling.discard(key)
                else:
                    if self._share is not None:
                        key, record = self._share(key, record)
                    self._models[key] = record
                    self._index(key, record)
                self._journal_lines += 1
        self._journal_offset = offset

    def _load_sync(self) -> int | None:
        """Read the sync summary; returns the last change sequence number it says was written.

        A damaged summary is replaced by a fresh one: it holds nothing the next cycle does not rewrite.
        """
        path = self.directory / SYNC
        try:
            summary, error = read_summary(self.directory), None
        except ValueError as exc:
            summary, error = None, str(exc)
        if summary is None and error is None:
            self._sync_written = self._records_saved = None
            return None
        self._sync_mtime = mtime_ns(path)
        written, self._records_saved = None, None
        if summary is not None:
            written, self.sync, self._records_saved = summary
        self._sync_written = written
        if error is not None:
            self._damage.append(f"{path} is unreadable ({error}): starting with a fresh sync summary (last "
                                "cycle, commits and file problems are forgotten until the next cycle writes "
                                "them again); no model's record is affected")
        return written

    def _mend(self) -> None:
        """Say what the load lost, keep the damaged files aside, and write clean ones (lock holder only)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = []
        for name in (SNAPSHOT, JOURNAL, SYNC):
            path = self.directory / name
            if path.exists() and any(str(path) in line for line in self._damage):
                aside = path.with_name(f"{name}.broken-{stamp}")
                path.rename(aside)
                kept.append(aside.name)
        where = f"; the damaged file(s) are kept as {', '.join(kept)} in {self.directory} for inspection" if kept else ""
        for line in self._damage:
            log.warning("action=state-damaged %s%s", line, where)
        self.mended = True
        self._compact()
        self.save_sync(self.sync)
        self._damage = []


def _to_json(record: ModelRecord) -> dict[str, Any]:
    # What `dataclasses.asdict` gives (every value is a scalar), without its deep copies: a cold start
    # writes every record.
    spec = record.spec
    servers = {name: {field: getattr(status, field) for field in _STATUS_FIELDS}
               for name, status in sorted(record.servers.items())}
    return {"spec": {field: getattr(spec, field) for field in _SPEC_FIELDS}, "servers": servers}


_STATE = {state: state for state in STATES}
_SNAPSHOT_HEAD = re.compile(r'\{"version":\d+,"seq":(\d+),"models":\[')  # as `_compact` writes it
_SNAPSHOT_END = re.compile(r"\]\}\s*")
_JSON = json.JSONDecoder()
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(AppliedSpec))
_STATUS_FIELDS = tuple(f.name for f in dataclasses.fields(ModelStatus) if f.name not in _TRANSIENT)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_PIECE = 1000  # records encoded and written at a time


_READ = 1 << 16  # characters of a snapshot read at a time
_HEAD_CHARACTERS = 64  # enough for `_SNAPSHOT_HEAD` to match


class _Window:
    """A text file read a piece at a time: `text` is what was read and not yet let go of (positions
    are in it); a JSON value is decoded once the text holds all of it."""

    def __init__(self, source: TextIO) -> None:
        self._source = source
        self.text = ""
        self.ended = False

    def fill(self, position: int) -> None:
        """Let go of the text before `position` (which is then 0) and read one more piece."""
        piece = self._source.read(_READ)
        self.text = self.text[position:] + piece
        self.ended = not piece

    def let_go(self, position: int) -> int:
        """`position` in the text, with what is before it let go of once it is half a piece."""
        if position < _READ // 2:
            return position
        self.text = self.text[position:]
        return 0

    def starts(self, position: int, prefix: str) -> bool:
        """Does the text at `position` start with the one character `prefix`?"""
        while len(self.text) <= position and not self.ended:
            self.fill(0)  # (all kept: `position` stays where it is)
        return self.text.startswith(prefix, position)

    def decode(self, position: int) -> tuple[Any, int]:
        """The JSON value at `position` (ValueError if there is none) and the position after it. A
        value that ends where the text read so far ends is read on: a number cut short reads as another."""
        while True:
            try:
                value, end = _JSON.raw_decode(self.text, position)
            except ValueError:
                if self.ended:
                    raise
            else:
                if end < len(self.text) or self.ended:
                    return value, end
            self.fill(position)
            position = 0

    def read_to_end(self, position: int) -> int:
        """`position` in the text once the rest of the file is read."""
        while not self.ended:
            self.fill(position)
            position = 0
        return position


def _from_json(data: Mapping[str, Any]) -> ModelRecord:
    """A record from JSON. One written before fleets (`status`, one server) is the `default` server's:
    one server given the old way is named `default`, so an upgrade keeps what ollama-gitops owns."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a record must be an object, not {type_name(data)}")
    unknown = set(data) - {"spec", "status", "servers"}
    if unknown:
        raise ValueError(f"unknown field(s) in the record: {', '.join(sorted(map(str, unknown)))}")
    if "servers" in data:
        if "status" in data:
            raise ValueError("a record has either 'status' (written before fleets) or 'servers', not both")
        servers = data["servers"]
        if not isinstance(servers, dict):
            raise ValueError(f"'servers' must be an object, not {type_name(servers)}")
    else:
        servers = {DEFAULT_SERVER: data.get("status", {})}
    spec = data.get("spec")
    record = ModelRecord(decode(AppliedSpec, spec),
                         {sys.intern(str(name)): decode(ModelStatus, status) for name, status in servers.items()})
    for name, status in record.servers.items():
        if status.state not in STATES:
            raise ValueError(f"state {status.state!r} on server {name!r} is not one of {', '.join(STATES)}")
        status.state = _STATE[status.state]  # the constant, not a string of each record's
        if status.applied_commit is not None:  # a few commits for every record: one string each
            status.applied_commit = sys.intern(status.applied_commit)
        if status.last_pull_time is not None:  # models found or pulled in the same second: one string
            status.last_pull_time = _one_string(status.last_pull_time)
    return record


# The first of equal strings, from a bounded cache (not interned: the interpreter's table would grow
# by one slot a model); a cold start's records share their times alike (`reconcile._seed_time`).
_one_string = functools.lru_cache(maxsize=4096)(str)


_LOST_EFFECT = ("ollama-gitops treats the weights of {what} as not pulled by it, so it will not prune them when "
                "their file is removed (delete them from Ollama by hand then); everything else is found again "
                "from Git and Ollama at the next cycle")
_KEY_IN_TEXT = re.compile(r'"key"\s*:\s*\[\s*"([^"\\]*)"\s*,\s*"([^"\\]*)"\s*\]')


def _lost(text: object) -> str:
    """What losing one entry means, naming its model when the entry still shows which it was."""
    match = _KEY_IN_TEXT.search(text if isinstance(text, str) else json.dumps(text, default=str))
    what = f"the record of {match[1]}/{match[2]} is lost" if match else "the record it held (of an unknown model) is lost"
    return f"{what}; {_LOST_EFFECT.format(what='that model')}"


def _decode_change(item: object) -> tuple[ModelKey, ModelRecord | None]:
    """One snapshot entry or journal line: `{"key": [namespace, name], "record": {...} | null}`."""
    if not isinstance(item, dict):
        raise ValueError(f"an entry must be an object, not {type_name(item)}")
    key = item.get("key")
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(part, str) for part in key)):
        raise ValueError("'key' must be [namespace, name]")
    record = item.get("record")
    # The namespace: a few for every record, one string each.
    return ModelKey(sys.intern(key[0]), key[1]), None if record is None else _from_json(record)


def _read_snapshot(text: str) -> tuple[list[Any], int, str | None]:
    """The entries of a snapshot, its sequence number, and what was wrong with it (None if nothing).

    A snapshot cut short still yields every entry before the cut: they are decoded one by one.
    """
    try:
        document = json.loads(text)
    except ValueError as exc:
        error = f"not JSON: {exc}" if text.strip() else "empty"
    else:
        if isinstance(document, dict) and isinstance(document.get("models"), list):
            seq = document.get("seq", 0)
            return document["models"], seq if isinstance(seq, int) else 0, None
        return [], 0, "not a snapshot of records"
    start = text.find('"models":[')
    if start < 0:
        return [], 0, error
    decoder, position, items = json.JSONDecoder(), start + len('"models":['), []
    while True:
        try:
            item, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        items.append(item)
        if text[position:position + 1] != ",":
            break
        position += 1
    seq = re.search(r'"seq":(\d+)', text[:start])
    return items, int(seq[1]) if seq else 0, error


class _Changes(Sequence[tuple[ModelKey, "ModelRecord | None"]]):
    """An edit's changes, `(key, record or None)` in key order, read from the records as they are
    when asked for (under the store's lock): no list of a pair per record touched."""

    def __init__(self, keys: list[ModelKey], models: Mapping[ModelKey, ModelRecord]) -> None:
        self._keys, self._models = keys, models

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return [(key, self._models.get(key)) for key in self._keys[index]]
        key = self._keys[index]
        return key, self._models.get(key)

    def __iter__(self) -> Iterator[tuple[ModelKey, ModelRecord | None]]:
        models = self._models
        return ((key, models.get(key)) for key in self._keys)


class _Edit:
    """The mutable view handed out by StateStore.editing(); remembers what it touched.

    Copy on write: a record is never changed, it is replaced, so the records `records()` handed out
    stay as they were. `status()` gives a copy of the status to change (the same one for the rest of
    the edit), in a new record put in place of the old one."""

    def __init__(self, models: dict[ModelKey, ModelRecord]) -> None:
        self._models = models
        # Per key touched, its record's normalised reference before the edit (None: it had none).
        self.before: dict[ModelKey, str | None] = {}
        # The statuses made or copied in this edit, by id (kept, so that no id is reused meanwhile):
        # the edit's own, changed in place.
        self._own: dict[int, ModelStatus] = {}

    @property
    def touched(self) -> AbstractSet[ModelKey]:
        """The keys this edit touched (no set of its own: a cold start's edit is of every record)."""
        return self.before.keys()

    def _touch(self, key: ModelKey) -> None:
        if key not in self.before:
            record = self._models.get(key)
            self.before[key] = normalize_reference(record.spec.reference) if record else None

    def _is_own(self, key: ModelKey, status: ModelStatus) -> bool:
        """Was `status` made in this edit (so nothing handed out has it)? Every status of a model
        that had no record before the edit is (a cold start's are all), and those copied or placed."""
        return id(status) in self._own or key in self.before and self.before[key] is None

    def get(self, key: ModelKey) -> ModelRecord | None:
        """The record of `key` (read-only: change it through the edit's other methods)."""
        return self._models.get(key)

    def keys(self) -> list[ModelKey]:
        """Every recorded model, at the time of the call."""
        return list(self._models)

    def share(self, key: ModelKey, spec: AppliedSpec) -> None:
        """Let the record of `key`, whose spec is equal to `spec`, hold `spec` itself (a plan's, made of
        the loaded file's and Ollama's listing's strings, as a cold start's records are): nothing
        changes for any reader, so nothing is written, announced or touched. The one change made to
        a record in place, since it changes no value: a record read from the state directory would
        otherwise hold its own copy of each string beside them, for the process's life."""
        record = self._models.get(key)
        if record is not None and record.spec is not spec and record.spec == spec:
            record.spec = spec

    def put(self, key: ModelKey, record: ModelRecord) -> None:
        self._touch(key)
        old = self._models.get(key)
        if old is not None:  # (for a model new in this edit, every status is the edit's own anyway)
            kept = {id(s) for s in old.servers.values()}
            # A status new with this record is this edit's own; one kept from the old record is not.
            self._own.update((id(s), s) for s in record.servers.values() if id(s) not in kept)
        self._models[key] = record

    def status(self, key: ModelKey, server: str) -> ModelStatus | None:
        """The status on `server` to change in place (the record is written at the end of the edit);
        None if the model has no record or was never planned there."""
        record = self._models.get(key)
        status = record.servers.get(server) if record is not None else None
        if status is None:
            return None
        self._touch(key)
        if not self._is_own(key, status):
            status = status.copy()
            self._own[id(status)] = status
            self._models[key] = record.with_status(server, status)  # type: ignore[union-attr]
        return status

    def place(self, key: ModelKey, server: str, status: ModelStatus) -> None:
        """Give a recorded model an entry on `server` (it is now planned there)."""
        self._touch(key)
        if not self._is_own(key, status):
            self._own[id(status)] = status
        self._models[key] = self._models[key].with_status(server, status)

    def drop(self, key: ModelKey, server: str) -> None:
        """Forget a model's entry on `server` (and so ollama-gitops's ownership of the weights there);
        a record left with no server is forgotten entirely."""
        record = self._models.get(key)
        if record is None or record.servers.get(server) is None:
            return
        self._touch(key)
        rest = record.without(server)
        if rest.servers:
            self._models[key] = rest
        else:
            del self._models[key]

    def forget(self, key: ModelKey) -> None:
        if key in self._models:
            self._touch(key)
            del self._models[key]
