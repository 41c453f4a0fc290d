"""What the read endpoints answer: the desired state at the newest commit, merged with live status.

Reads are served from memory. A namespace's list is kept serialised, one slice of its body per model,
and rebuilt when the commit or the status moves: a model whose file (blob) and record are as they were
keeps its bytes, so the list after a write serialises the models that changed, not all of them.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import gc
import gzip
import itertools
import json
import os
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from ..reconciler.models.desired import DesiredModel, DesiredState, ModelKey
from ..reconciler.models.sizes import format_size
from ..reconciler.fleetstatus import overall_recorded
from ..reconciler.state import DEFAULT_SERVER, PENDING, PULLING, ModelRecord, SyncStatus

from . import metrics

GZIP_LEVEL = 5  # a list of 100,000 models (25 MiB) compresses 12x in a quarter of a second, once per change
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one per call
_LIST_START, _LIST_END = b'{"items":[', b"]}\n"


class StatusSource(Protocol):
    """Live status of models: the reconciler's store, a follower of it, or (later) the cluster."""

    version: int
    sync: SyncStatus

    def record(self, key: ModelKey) -> ModelRecord | None: ...

    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]: ...


def model_view(key: ModelKey, model_name: str, tag: str, record: ModelRecord | None,
               suspended: bool = False) -> dict[str, Any]:
    """One model as the seed's API shows it; fields beyond the seed's come last and are additive.

    `suspended` (the file says `suspend: true`) adds `"suspended": true`; it is left out otherwise,
    so that the seed's clients see the seed's fields only."""
    view: dict[str, Any] = {"name": key.name, "namespace": key.namespace, "modelName": model_name, "tag": tag}
    status = overall_recorded(record) if record is not None else None
    view["state"] = status.state if status is not None else PENDING
    if status is None:
        if suspended:
            view["suspended"] = True
        return view
    if status.size:  # the seed leaves out empty values
        view["size"] = status.size
        view["formattedSize"] = format_size(status.size)
    if status.last_pull_time:
        view["lastPullTime"] = status.last_pull_time
    if status.error:
        view["error"] = status.error
    if status.state == PULLING and status.progress_total:
        view["progress"] = {"completed": status.progress_completed or 0, "total": status.progress_total}
    if status.digest:
        view["digest"] = status.digest
    if suspended:
        view["suspended"] = True
    return view


@dataclasses.dataclass(frozen=True)
class ModelList:
    """A namespace's list, serialised: `body` is `{"items":[...]}` as the seed answers it, and item `i`
    (the model `keys[i]`, in name order) ends at `ends[i]`, after a comma or the list's start. `tag`
    changes whenever the body does (the list's ETag)."""

    keys: Sequence[ModelKey]
    states: Sequence[object]  # what each item was made from: a model is serialised again only when it differs
    ends: array.array
    body: bytes
    tag: str
    _gzipped: list[bytes] = dataclasses.field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def gzipped(self) -> bytes:
        """The body gzip-compressed, made once (mtime 0, so the same list compresses to the same bytes)."""
        with self._lock:
            if not self._gzipped:
                self._gzipped.append(gzip.compress(self.body, GZIP_LEVEL, mtime=0))
            return self._gzipped[0]

    def start(self, i: int) -> int:
        """Where item `i` begins in `body`."""
        return self.ends[i - 1] + 1 if i else len(_LIST_START)

    def page(self, after: str | None, limit: int) -> tuple[bytes, str | None, int]:
        """The body of at most `limit` items named after `after` (None: from the first), the name of the
        last one when more follow (else None) and how many follow."""
        start = bisect.bisect_right(self.keys, after, key=_name) if after is not None else 0
        end = min(len(self.keys), start + limit)
        items = self.body[self.start(start):self.ends[end - 1]] if end > start else b""
        remaining = len(self.keys) - end
        return items, (self.keys[end - 1].name if remaining and end > start else None), remaining


@dataclasses.dataclass
class CatalogStats:
    """How much work lists did (for tests and benchmarks)."""

    lists_built: int = 0  # lists rebuilt because the commit or the status moved
    serialised: int = 0  # models serialised into them


class Catalog:
    """The models of each namespace, as the API shows them."""

    def __init__(self, desired: Callable[[], DesiredState | None], status: StatusSource,
                 follow: Callable[[], object] | None = None) -> None:
        self._desired = desired
        self._status = status
        self._follow = follow  # called before reads, to take in status written by another process
        self._lock = threading.Lock()  # one rebuild at a time: the others wait and take its result
        self._lists: dict[str, tuple[tuple[str | None, int], ModelList]] = {}
        self._generation = itertools.count(1)
        self._boot = os.urandom(4).hex()  # tags of another process (or an earlier one) never match ours
        self.stats = CatalogStats()

    def list_json(self, namespace: str) -> bytes:
        """`{"items": [...]}` for a namespace, ordered by name, as JSON bytes."""
        return self.model_list(namespace).body

    def model_list(self, namespace: str) -> ModelList:
        """The namespace's list, serialised, as of the newest commit and status."""
        self._refresh()
        with self._lock:
            desired = self._desired()
            stamp = (desired.commit if desired else None, self._status.version)
            cached = self._lists.get(namespace)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            old = cached[1] if cached is not None else None
            # With the status where it was (a write moved the commit), the records are as the last
            # list saw them: only new models' records are read, not every one (the store copies each).
            same_status = cached is not None and cached[0][1] == stamp[1]
            # No collection while a list is rebuilt: it reads a copy of every record and makes a state
            # of each, and at 100,000 models the full collections they set off took half the time
            # (each one scanning every record again). What it leaves is freed by reference counting.
            collecting = gc.isenabled()
            gc.disable()
            try:
                built = self._build(namespace, desired, old, same_status)
            finally:
                if collecting:
                    gc.enable()
            self._lists[namespace] = (stamp, built)
            return built

    def _build(self, namespace: str, desired: DesiredState | None, old: ModelList | None,
               same_status: bool) -> ModelList:
        self.stats.lists_built += 1
        previous: dict[ModelKey, int] = {}
        if old is not None:
            previous = {key: i for i, key in enumerate(old.keys)}
        keys, states, makers = self._items(namespace, desired, (old, previous) if same_status and old else None)
        if old is not None and list(old.keys) == keys and list(old.states) == states:
            return old  # nothing shown changed (a record changed in what no view shows): same body, same tag
        view = memoryview(old.body) if old is not None else None
        parts: list[bytes | memoryview] = []
        for key, state, make in zip(keys, states, makers):
            i = previous.get(key)
            if i is not None and old.states[i] == state:  # type: ignore[union-attr]
                parts.append(view[old.start(i):old.ends[i]])  # type: ignore[index, union-attr]
            else:
                self.stats.serialised += 1
                metrics.LIST_ITEMS_SERIALISED.inc()
                parts.append(_ENCODE(make()).encode())
        ends, position = array.array("q"), len(_LIST_START) - 1
        for part in parts:
            position += len(part) + 1
            ends.append(position)
        body = _LIST_START + b",".join(parts) + _LIST_END
        return ModelList(tuple(keys), tuple(states), ends, body, f"{self._boot}-{next(self._generation)}")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One model, or None when no file defines it."""
        self._refresh()
        key = ModelKey(namespace, name)
        desired = self._desired()
        if desired is None:
            return None
        model = desired.models.get(key)
        record = self._status.record(key)
        if model is not None:
            return model_view(key, model.fields.name, model.fields.tag, record, model.fields.suspend)
        if record is not None and desired.is_unreadable(key):
            return _last_good_view(key, record, desired.kept_reason(key, record.spec.path))
        return self._kept_at_zero(desired).get(key)

    def unshown_file(self, namespace: str, name: str) -> str | None:
        """Why a model file that exists is no model `get` shows: it is broken and there is no last
        good version of it (e.g. a file that never parsed). None otherwise."""
        self._refresh()
        key = ModelKey(namespace, name)
        desired = self._desired()
        if desired is None or not desired.is_unreadable(key) or self._status.record(key) is not None:
            return None
        stems = {f"models/{namespace}/{name}{suffix}" for suffix in (".yaml", ".yml")}
        problems = [f"{p.path}: {p.message}" for p in desired.problems if p.path in stems]
        return "; ".join(problems) or "its model file is invalid"

    def sync(self) -> SyncStatus:
        self._refresh()
        return self._status.sync

    def _refresh(self) -> None:
        if self._follow is not None:
            self._follow()

    def _items(self, namespace: str, desired: DesiredState | None,
               unchanged: tuple[ModelList, dict[ModelKey, int]] | None
               ) -> tuple[list[ModelKey], list[object], list[Callable[[], dict[str, Any]]]]:
        """The namespace's models in name order: each one's state (its file's blob and its record: what
        its view is made from) and how to make its view. `unchanged`: the last list (and each key's
        place in it), made with the records as they still are."""
        if desired is None:
            return [], [], []
        models = desired.in_namespace(namespace)
        if unchanged is not None and not desired.any_unreadable and desired.models:
            reused = self._reused_items(models, *unchanged)
            if reused is not None:
                return reused
        if desired.namespace_unreadable(namespace):  # every recorded model of it is kept
            records = {k: r for k, r in self._status.records().items() if k.namespace == namespace}
            broken = sorted(records)
        else:
            broken = sorted(k for k in desired.unreadable if k.namespace == namespace)
            records = self._status.records([m.key for m in models] + broken)
        items: dict[ModelKey, tuple[object, Callable[[], dict[str, Any]]]] = {}
        for m in models:
            record = records.get(m.key)
            items[m.key] = ((m.blob, m.fields, *_state_of(record)),
                            lambda m=m, record=record: model_view(m.key, m.fields.name, m.fields.tag, record,
                                                                  m.fields.suspend))
        extra = False
        for key in broken:  # a broken file's model is still managed, at its last good version
            if key in records:
                why = desired.kept_reason(key, records[key].spec.path)
                items[key] = (("kept", why, *_state_of(records[key])),
                              lambda key=key, record=records[key], why=why: _last_good_view(key, record, why))
                extra = True
        for key, (record, why) in self._kept_at_zero_records(desired).items():
            if key.namespace == namespace:
                items[key] = (("kept", why, *_state_of(record)),
                              lambda key=key, record=record, why=why: _last_good_view(key, record, why))
                extra = True
        keys = sorted(items) if extra else list(items)  # the models alone are in name order already
        return keys, [items[k][0] for k in keys], [items[k][1] for k in keys]

    def _reused_items(self, models: list[DesiredModel], old: ModelList, previous: dict[ModelKey, int]
                      ) -> tuple[list[ModelKey], list[object], list[Callable[[], dict[str, Any]]]] | None:
        """`_items` of models whose records have not changed since `old` was made: each record's part
        of the state is taken from `old`; only the records of models new to it, or whose file changed,
        are read. None when `old` kept a model (whose view depends on more than its record)."""
        if any(state[0] == "kept" for state in old.states):  # type: ignore[index]
            return None
        wanted = [m.key for m in models if (i := previous.get(m.key)) is None
                  or old.states[i][0] != m.blob or old.states[i][1] is not m.fields]  # type: ignore[index]
        records = self._status.records(wanted)
        keys, states, makers = [], [], []
        for m in models:
            i = previous.get(m.key)
            if m.key in records or i is None:
                record = records.get(m.key)
                state = (m.blob, m.fields, *_state_of(record))
            else:
                state, record = (m.blob, m.fields, *old.states[i][2:]), None  # type: ignore[misc]
            keys.append(m.key)
            states.append(state)
            makers.append(lambda m=m, record=record: model_view(m.key, m.fields.name, m.fields.tag, record,
                                                                m.fields.suspend))
        return keys, states, makers

    def kept_at_zero(self, namespace: str, name: str) -> str | None:
        """Why a model whose file is gone is still kept (a refused prune to zero), or None."""
        self._refresh()
        desired = self._desired()
        view = self._kept_at_zero(desired).get(ModelKey(namespace, name)) if desired is not None else None
        return view["error"] if view else None

    def _kept_at_zero(self, desired: DesiredState) -> dict[ModelKey, dict[str, Any]]:
        """The recorded models a commit with no model file left would prune, while the reconciler
        has not applied it: it refuses to prune to zero (without --allow-empty), and keeps them all.
        Shown as kept, so that the list says what Ollama still has and why."""
        return {key: _last_good_view(key, record, why) for key, (record, why) in self._kept_at_zero_records(desired).items()}

    def _kept_at_zero_records(self, desired: DesiredState) -> dict[ModelKey, tuple[ModelRecord, str]]:
        if desired.models or desired.any_unreadable or desired.commit == self._status.sync.last_applied_commit:
            return {}
        message = (f"kept: its file is gone, but commit {(desired.commit or '')[:12]} would remove every model, "
                   "and ollama-gitops refuses to prune to zero without --allow-empty")
        return {key: (record, message) for key, record in self._status.records().items()}


def _name(key: ModelKey) -> str:
    return key.name


def _state_of(record: ModelRecord | None) -> tuple[object, ...]:
    """What a view is made from of a record, to compare with the last one, as one flat tuple of
    references (no copy): a mutable dataclass among its fields (the status, which the store copies
    on every read) by its values, anything else (the frozen spec, a mapping of statuses) as it is."""
    if record is None:
        return ()
    state: list[object] = []
    for value in _values(record):
        kind = type(value)
        flat = _FLAT.get(kind)
        if flat is None:
            flat = _FLAT[kind] = dataclasses.is_dataclass(value) and not kind.__dataclass_params__.frozen  # type: ignore[attr-defined]
        if flat:
            state.append(kind)  # where its values start
            state.extend(_values(value))
        else:
            state.append(value)
    return tuple(state)


_FLAT: dict[type, bool] = {}  # by type: is it a mutable dataclass, whose values a state holds


def _values(instance: object) -> Iterable[object]:
    """A dataclass instance's field values, in order."""
    values = getattr(instance, "__dict__", None)
    return values.values() if values is not None else [getattr(instance, f.name) for f in dataclasses.fields(instance)]  # type: ignore[arg-type]


def _last_good_view(key: ModelKey, record: ModelRecord, why: str) -> dict[str, Any]:
    """A model kept at its last good version, showing `why` as its error (the reconciler records the same)."""
    name, _, tag = record.spec.reference.rpartition(":")
    shown = ModelRecord(record.spec, {DEFAULT_SERVER: dataclasses.replace(overall_recorded(record), error=why)})
    return model_view(key, name, tag, shown, record.spec.suspend)
