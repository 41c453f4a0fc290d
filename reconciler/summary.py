"""The state directory without its records: the lock that gives it to one process, and the sync
summary (`sync.json`), the reconciler as a whole. Also the JSON files' helpers the records share.

`state.StateStore` keeps the records and reads and writes the summary through this module. A
process whose cycle may end after the fetch (`reconcile --once` with nothing to do, `uptodate`)
uses this module alone: it creates none of the records' dataclasses, whose creation at import
(~5 ms) is more than half a no-op fetch.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tempfile
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, TextIO

from .models.key import Problem

FORMAT_VERSION = 1
SNAPSHOT, JOURNAL, SYNC = "models.json", "models.journal", "sync.json"


SUCCEEDED, FAILED_OUTCOME = "Succeeded", "Failed"  # how a cycle ended (`SyncStatus.last_cycle_outcome`)


@dataclass(frozen=True)
class ServerSeen:
    """One server of the fleet as the reconciler last saw it (saved in `sync.json`)."""

    name: str
    url: str  # credentials stripped
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    reachable: bool | None = None  # None: not asked yet
    version: str | None = None  # Ollama's GET /api/version
    last_seen: str | None = None  # RFC 3339 (seconds, Z) of the last successful contact
    error: str | None = None  # why unreachable

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", dict(self.labels))  # plain, for JSON


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
    # The last applied cycle left nothing to prune nor any other step to retry (what its pulls left
    # is in the records): with the same commit and servers, a restarted process has nothing to do.
    converged: bool = False
    problems: tuple[Problem, ...] = ()
    servers: tuple[ServerSeen, ...] = ()  # sorted by name


class StateLocked(RuntimeError):
    """Another process is reconciling the same state directory."""


def lock_state_directory(directory: Path) -> TextIO:
    """Take `directory` for this process: its `lock` file, locked until closed; StateLocked when
    another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateLocked(f"another ollama-gitops process is reconciling {directory}") from None
    return handle


def read_summary(directory: Path) -> tuple[int | None, SyncStatus, dict[str, Any] | None] | None:
    """`sync.json` in `directory`: the last change sequence number it says was written, the summary,
    and the record files as its last save saw them (`records_settled`); None when there is none.
    ValueError, saying what is wrong, when it is damaged."""
    try:
        data = read_json(directory / SYNC)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return None if data is None else _decode_sync(data)


def write_summary(directory: Path, sync: SyncStatus, journal_seq: int, records: Mapping[str, Any] | None,
                  durable: bool) -> None:
    """Replace `sync.json` in `directory` with `sync`, the last change sequence number written
    (a journal found behind it at start-up has lost lines) and what `records_settled` compares."""
    # Field by field, not `dataclasses.asdict`: its deep copies of a hundred servers were most
    # of a no-op cycle at fleet scale (every cycle saves the summary).
    payload = plain(sync)
    payload["problems"] = [plain(p) for p in sync.problems]
    payload["servers"] = [plain(s) for s in sync.servers]
    payload["journal_seq"] = journal_seq
    if records is not None:
        payload["records"] = records
    write_json(directory / SYNC, {"version": FORMAT_VERSION, **payload}, durable=durable)


def record_files(directory: Path, work_left: bool) -> dict[str, Any]:
    """The record files of `directory` as they are now, and whether any record has work left: what a
    save of the summary keeps for `records_settled`."""
    journal = directory / JOURNAL
    return {"snapshot_mtime_ns": mtime_ns(directory / SNAPSHOT),
            "journal_size": journal.stat().st_size if journal.exists() else 0, "work_left": work_left}


def records_settled(directory: Path, saved: Mapping[str, Any] | None) -> bool:
    """Without reading the records: the save of the summary that kept `saved` (`record_files`) found
    no record with work left, and nothing was written to them since (the snapshot and the journal
    are as it saw them)."""
    if saved is None or saved.get("work_left", True):
        return False
    now = record_files(directory, work_left=False)
    return saved.get("snapshot_mtime_ns") == now["snapshot_mtime_ns"] and saved.get("journal_size") == now["journal_size"]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def plain(instance: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, its values as they are (plain JSON values, or the lists and
    objects made of them, as the sync summary's are)."""
    cls = type(instance)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return {name: getattr(instance, name) for name in names}


def _decode_sync(data: object) -> tuple[int | None, SyncStatus, dict[str, Any] | None]:
    if not isinstance(data, dict):
        raise ValueError(f"it must be an object, not {type_name(data)}")
    data = dict(data)
    data.pop("version", None)
    written = data.pop("journal_seq", None)
    if written is not None and (not isinstance(written, int) or isinstance(written, bool)):
        raise ValueError("'journal_seq' must be an integer")
    records = data.pop("records", None)  # only compared with the files: a wrong one is a mismatch
    records = records if isinstance(records, dict) else None
    problems = data.pop("problems", [])
    if not isinstance(problems, list):
        raise ValueError("'problems' must be a list")
    servers = data.pop("servers", [])
    if not isinstance(servers, list):
        raise ValueError("'servers' must be a list")
    return written, decode(SyncStatus, data, problems=tuple(decode(Problem, p) for p in problems),
                           servers=tuple(decode(ServerSeen, s) for s in servers)), records


def decode(cls: type, data: object, **extra: Any) -> Any:
    """An instance of the dataclass `cls` from JSON, checking each field's type; ValueError if wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be an object, not {type_name(data)}")
    hints = _field_types(cls)
    for name, value in data.items():
        if name not in hints or name in extra:
            raise ValueError(f"unknown field {name!r} in {cls.__name__}")
        allowed = hints[name]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ValueError(f"field {name!r} of {cls.__name__} must be {' or '.join(t.__name__ for t in allowed)}, "
                             f"not {type_name(value)}")
    try:
        return cls(**data, **extra)
    except TypeError as exc:  # a required field missing
        raise ValueError(str(exc)) from None


_FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {}


def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Per field of a dataclass, the JSON types its value may have (`float` takes integers too)."""
    if cls not in _FIELD_TYPES:
        types = {}
        for name, hint in typing.get_type_hints(cls).items():
            union = typing.get_origin(hint) in (typing.Union, UnionType)
            args = typing.get_args(hint) if union else (hint,)
            allowed = tuple(typing.get_origin(a) or a for a in args)
            # `Mapping[str, str]` is read as a JSON object (its values are checked where it is used)
            allowed = tuple(dict if a is Mapping else a for a in allowed)
            types[name] = allowed + ((int,) if float in allowed else ())
        _FIELD_TYPES[cls] = types
    return _FIELD_TYPES[cls]


def type_name(value: object) -> str:
    """How an error names the JSON type of `value`."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def utc_rfc3339(epoch: float) -> str:
    """An epoch time as the seed writes times: RFC 3339, seconds precision, `Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))  # not datetime: ~1.5 ms to import


def write_json(path: Path, payload: Mapping[str, Any], durable: bool) -> None:
    """Replace `path` atomically with `payload` as compact JSON (`durable`: fsynced first)."""
    write_file(path, lambda handle: json.dump(payload, handle, separators=(",", ":")), durable)


def write_file(path: Path, write: Callable[[TextIO], None], durable: bool) -> None:
    """Replace `path` atomically with what `write` writes to a temporary file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def mtime_ns(path: Path) -> int:
    """`path`'s modification time in nanoseconds, 0 when there is no such file."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def read_json(path: Path) -> Any:
    """The JSON in `path`, None when there is no such file; ValueError when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
