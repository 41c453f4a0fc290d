"""What the read endpoints answer: the desired state at the newest commit, merged with live status.

A model's seed fields are the whole over the servers its `servers:` selector picks in the current
inventory (the servers the last cycle recorded, `SyncStatus.servers`); in a fleet its view adds the
model on each of them.

Reads are served from memory. A namespace's list is kept serialised, its body in pieces of many items
(`pieces.PackedPieces`, kept deflated and sent as they are kept), and rebuilt when the commit, the status or the servers' names
and labels move: a model whose file's fields, record and placement (the servers it is shown on) are
as they were keeps its bytes, so the list after a write serialises the models that changed, not all
of them, and shares the last list's pieces around them.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import gc
import itertools
import json
import operator
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol

from ..reconciler.fleetstatus import overall
from ..reconciler.fleetstatus import selected as selected_servers
from ..reconciler.models.desired import DesiredModel, DesiredState, ModelKey
from ..reconciler.models.modelfile import ModelFields
from ..reconciler.models.selector import LabelSelector
from ..reconciler.models.sizes import format_size
from ..reconciler.state import DEFAULT_SERVER, FAILED, PENDING, PULLING, READY, ModelRecord, ModelStatus, ServerSeen, SyncStatus

from . import metrics
from .pieces import PIECE_BYTES, Packed, PackedPieces, Pieces

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one per call
_LIST_START, _LIST_END = b'{"items":[', b"]}\n"
_PACKED_START, _PACKED_COMMA, _PACKED_END = Packed(_LIST_START), Packed(b","), Packed(_LIST_END)


ALL_NAMESPACES = "*"


class StatusSource(Protocol):
    """Live status of models: the reconciler's store, a follower of it, or (later) the cluster."""

    version: int
    sync: SyncStatus

    def record(self, key: ModelKey) -> ModelRecord | None: ...

    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]: ...


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which servers a model is shown on: what its view's seed fields are taken over."""

    selected: tuple[str, ...] = ()  # server names, sorted
    fleet: bool = False  # show the additive `servers` list: there is more than the one server `default`
    known: bool = False  # the inventory is known; if not, `selected` is what the record has, and none is no error


SEED_PLACEMENT = Placement()
"""No inventory known and nothing recorded (before the first cycle): the seed's Pending."""


def model_view(key: ModelKey, model_name: str, tag: str, record: ModelRecord | None,
               suspended: bool = False, placement: Placement = SEED_PLACEMENT,
               error: str | None = None) -> dict[str, Any]:
    """One model as the seed's API shows it; fields beyond the seed's come last and are additive.

    The seed's fields describe the whole, over the servers `placement` selects (`fleetstatus.overall`);
    `error` replaces the whole's error when given (a model kept at its last good version says why).
    `suspended` (the file says `suspend: true`) adds `"suspended": true`; it is left out otherwise,
    so that the seed's clients see the seed's fields only. In a fleet, `servers` lists the model on
    each selected server; with the one server `default` it is left out, for the same reason."""
    view: dict[str, Any] = {"name": key.name, "namespace": key.namespace, "modelName": model_name, "tag": tag}
    status = overall(record, placement.selected) if placement.selected or placement.known else None
    view["state"] = status.state if status is not None else PENDING
    error = error if error is not None else status.error if status is not None else None
    if status is not None:
        if status.size:  # the seed leaves out empty values
            view["size"] = status.size
            view["formattedSize"] = format_size(status.size)
        if status.last_pull_time:
            view["lastPullTime"] = status.last_pull_time
    if error:
        view["error"] = error
    if status is not None:
        if progress := _progress(status):
            view["progress"] = progress
        if status.digest:
            view["digest"] = status.digest
    if suspended:
        view["suspended"] = True
    if placement.fleet:
        view["servers"] = [_server_entry(name, record.servers.get(name) if record is not None else None)
                           for name in placement.selected]
    return view


def _server_entry(name: str, status: ModelStatus | None) -> dict[str, Any]:
    """The model on one server (no status: never planned there yet, so Pending)."""
    entry: dict[str, Any] = {"name": name, "state": status.state if status is not None else PENDING}
    if status is None:
        return entry
    if status.size:
        entry["size"] = status.size
        entry["formattedSize"] = format_size(status.size)
    if status.digest:
        entry["digest"] = status.digest
    if status.last_pull_time:
        entry["lastPullTime"] = status.last_pull_time
    if status.error:
        entry["error"] = status.error
    if progress := _progress(status):
        entry["progress"] = progress
    return entry


def _progress(status: ModelStatus) -> dict[str, int] | None:
    """`{"completed", "total"}` bytes while Pulling, when the pull has said how much there is."""
    if status.state == PULLING and status.progress_total:
        return {"completed": status.progress_completed or 0, "total": status.progress_total}
    return None


STATE_ORDER = (READY, PENDING, PULLING, FAILED)  # as the servers' counts list them


def server_reachability(server: ServerSeen) -> dict[str, Any]:
    """Who a server is and whether it answers: `GET /api/v1/servers`' fields but its counts (what
    the events stream's `servers` event carries, so that it changes only when a server does)."""
    return {"name": server.name, "url": server.url, "labels": dict(server.labels), "reachable": server.reachable,
            "version": server.version, "lastSeen": server.last_seen, "error": server.error}


def server_view(server: ServerSeen, records: Iterable[ModelRecord]) -> dict[str, Any]:
    """One server as `GET /api/v1/servers` shows it: who it is, whether it answers, and how many
    of the models recorded on it are in each state."""
    counts = dict.fromkeys(STATE_ORDER, 0)
    for record in records:
        status = record.servers.get(server.name)
        if status is not None:
            counts[status.state] += 1
    return {**server_reachability(server), "models": counts}


@dataclasses.dataclass(frozen=True)
class ModelList:
    """A namespace's list, serialised: `body` is `{"items":[...]}` as the seed answers it, kept in pieces
    deflated (`PackedPieces`): its parts are the list's start, then pieces of whole items with a comma between two,
    then its end. Item `i` (the model `keys[i]`, in name order) ends at `ends[i]` in the body, after a
    comma or the list's start; piece `k` begins with item `firsts[k]`. `tag` changes whenever the body
    does (the list's ETag)."""

    keys: Sequence[ModelKey]
    states: _States  # what each item was made from: a model is serialised again only when it differs
    ends: array.array
    body: PackedPieces
    firsts: array.array
    tag: str
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def gzipped(self) -> Pieces:
        """The body gzip-compressed: its own deflated pieces in a gzip stream, made once."""
        with self._lock:
            return self.body.gzip()

    @property
    def items(self) -> tuple[Packed, ...]:
        """The pieces of items, in order (the body's parts between its start and its end, less the commas)."""
        return self.body.parts[1:-1:2]

    def start(self, i: int) -> int:
        """Where item `i` begins in `body`."""
        return self.ends[i - 1] + 1 if i else len(_LIST_START)

    def page(self, after: str | None, limit: int) -> tuple[bytes, str | None, int]:
        """The body of at most `limit` items named after `after` (None: from the first), the name of the
        last one when more follow (else None) and how many follow."""
        start = bisect.bisect_right(self.keys, after, key=_name) if after is not None else 0
        end = min(len(self.keys), start + limit)
        items = self.body.slice(self.start(start), self.ends[end - 1]) if end > start else b""
        remaining = len(self.keys) - end
        return items, (self.keys[end - 1].name if remaining and end > start else None), remaining


def _body(pieces: Sequence[Packed]) -> PackedPieces:
    """A list's body from its pieces of items: the list's start, the pieces with a comma between two, its end."""
    parts: list[Packed] = [_PACKED_START]
    for piece in pieces:
        if len(parts) > 1:
            parts.append(_PACKED_COMMA)
        parts.append(piece)
    parts.append(_PACKED_END)
    return PackedPieces(parts)


class _ListBuilder:
    """Lays out a rebuilt list's items in pieces: runs of items whose bytes are the last list's reuse
    its pieces whole where they can (shared, not copied), and the rest (new items, and the parts of
    the last list's pieces around them) are joined into new pieces of about `piece_bytes`. A piece
    under half that is joined with a neighbour whenever it can be (new bytes beside it, or another
    small piece), so that no two small pieces are side by side: changes made one at a time do not
    leave a list of ever more, ever smaller pieces."""

    def __init__(self, old: ModelList | None, piece_bytes: int = PIECE_BYTES) -> None:
        self._old = old
        self._small = piece_bytes // 2
        self._piece_bytes = piece_bytes
        self.joined = 0  # new pieces made (each one join)
        self.ends = array.array("q")
        self._position = len(_LIST_START) - 1  # where the last item ended (before the first: the comma it lacks)
        self._pieces: list[Packed] = []
        self._firsts = array.array("q")
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._pending_first = 0
        self._placed = 0  # items laid out in pieces or pending
        self._run: list[int] | None = None  # the last list's items reused in a row: [first, last]

    def reuse(self, i: int) -> None:
        """The next item is item `i` of the last list, as it was."""
        old = self._old
        assert old is not None
        if self._run is not None and self._run[1] == i - 1:
            self._run[1] = i
        else:
            self._lay_out_run()
            self._run = [i, i]
        self._ended(old.ends[i] - old.start(i))

    def add(self, item: bytes) -> None:
        """The next item is `item`, just serialised."""
        self._lay_out_run()
        self._pend(item, 1)
        self._ended(len(item))

    def finish(self) -> tuple[PackedPieces, array.array]:
        """The body and where each of its pieces begins (`ModelList.body`, `ModelList.firsts`)."""
        self._lay_out_run()
        self._flush()
        return _body(self._pieces), self._firsts

    def _ended(self, length: int) -> None:
        self._position += length + 1
        self.ends.append(self._position)

    def _last_is_small(self) -> bool:
        return bool(self._pieces) and len(self._pieces[-1]) < self._small

    def _whole(self, piece: Packed, items: int) -> None:
        """A piece of the last list, all of whose items come next as they were."""
        if len(piece) < self._small and (self._pending or self._last_is_small()):
            self._pend(piece.raw(), items)
            return
        self._flush()
        self._pieces.append(piece)
        self._firsts.append(self._placed)
        self._placed += items

    def _pend(self, part: bytes | memoryview, items: int) -> None:
        if not self._pending:
            if self._last_is_small():  # joined with the small piece before it
                self._pending.append(self._pieces.pop().raw())
                self._pending_size = len(self._pending[0])
                self._pending_first = self._firsts.pop()
            else:
                self._pending_first = self._placed
        self._pending.append(part)
        self._pending_size += len(part)
        self._placed += items
        if self._pending_size >= self._piece_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pieces.append(Packed(b",".join(self._pending)))
            self.joined += 1
            self._firsts.append(self._pending_first)
            self._pending.clear()
            self._pending_size = 0

    def _lay_out_run(self) -> None:
        if self._run is None:
            return
        old, (first, last), self._run = self._old, self._run, None
        assert old is not None
        items = old.items
        k = bisect.bisect_right(old.firsts, first) - 1
        while first <= last:
            begins = old.firsts[k]
            ends = old.firsts[k + 1] if k + 1 < len(old.firsts) else len(old.keys)
            through = min(last + 1, ends)
            if first == begins and through == ends:
                self._whole(items[k], through - first)
            else:
                base = old.start(begins)
                self._pend(memoryview(items[k].raw())[old.start(first) - base:old.ends[through - 1] - base], through - first)
            first, k = through, k + 1


@dataclasses.dataclass
class CatalogStats:
    """How much work lists did (for tests and benchmarks)."""

    lists_built: int = 0  # lists rebuilt because the commit or the status moved
    serialised: int = 0  # models serialised into them
    pieces_joined: int = 0  # new pieces of their bodies (the rest are the last list's, shared)


class Catalog:
    """The models of each namespace, as the API shows them."""

    def __init__(self, desired: Callable[[], DesiredState | None], status: StatusSource,
                 follow: Callable[[], object] | None = None) -> None:
        self._desired = desired
        self._status = status
        self._follow = follow  # called before reads, to take in status written by another process
        self._lock = threading.Lock()  # one rebuild at a time: the others wait and take its result
        self._lists: dict[str, tuple[tuple[object, ...], ModelList]] = {}
        self._servers: tuple[tuple[object, ...], bytes] | None = None
        self._all: tuple[tuple[object, ...], PackedPieces] | None = None  # every namespace's list (list_all)
        self._generation = itertools.count(1)
        self._boot = os.urandom(4).hex()  # tags of another process (or an earlier one) never match ours
        self.stats = CatalogStats()

    def list_json(self, namespace: str) -> bytes:
        """`{"items": [...]}` for a namespace, ordered by name, as JSON bytes (joined: the API itself
        answers from the pieces, `model_list(namespace).body`)."""
        return bytes(self.model_list(namespace).body)

    def list_all(self) -> PackedPieces:
        """`{"items": [...]}` over every namespace, ordered by namespace then name (the dashboard's list):
        the namespaces' lists' pieces, shared, so it copies none of their bytes and is remade only when
        one of them is."""
        self._refresh()
        desired = self._desired()
        stamp = (desired.commit if desired else None, self._status.version, _Fleet(self._status.sync.servers).stamp)
        with self._lock:
            if self._all is not None and self._all[0] == stamp:
                return self._all[1]
        lists = [self.model_list(namespace) for namespace in self.namespaces(desired)]
        body = _body([piece for l in lists for piece in l.items])
        with self._lock:
            self._all = (stamp, body)
        return body

    def model_list(self, namespace: str) -> ModelList:
        """The namespace's list, serialised, as of the newest commit, status and inventory."""
        self._refresh()
        with self._lock:
            desired = self._desired()
            fleet = _Fleet(self._status.sync.servers)
            # The servers' names and labels are in the stamp: a server joining, leaving or relabelled
            # changes which servers a model is shown on (and its seed fields) with no write and,
            # when the summary is saved apart from the records, possibly no status version either.
            stamp = (desired.commit if desired else None, self._status.version, fleet.stamp)
            cached = self._lists.get(namespace)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            old = cached[1] if cached is not None else None
            # With the status where it was (a write moved the commit, or the servers moved), the records
            # are as the last list saw them: only the records of models whose file or placement changed
            # are read, not every one (the store copies each). An unknown inventory places a model by
            # its record, so the last list's placements hold only over the same (unknown) inventory.
            same_status = (cached is not None and cached[0][1] == stamp[1]
                           and (fleet.known or cached[0][2] == stamp[2]))
            # No collection while a list is rebuilt: it reads a copy of every record and makes a state
            # of each, and at 100,000 models the full collections they set off took half the time
            # (each one scanning every record again). What it leaves is freed by reference counting.
            collecting = gc.isenabled()
            gc.disable()
            try:
                built = self._build(namespace, desired, fleet, old, same_status)
            finally:
                if collecting:
                    gc.enable()
            self._lists[namespace] = (stamp, built)
            return built

    def _build(self, namespace: str, desired: DesiredState | None, fleet: _Fleet, old: ModelList | None,
               same_status: bool) -> ModelList:
        self.stats.lists_built += 1
        places = _Places(old.keys if old is not None else ())
        keys: list[ModelKey] = []
        states = _States()
        built = _ListBuilder(old)
        # Each item is serialised as it comes: no view, and no copy of a record, outlives its own item.
        for key, state, make in self._items(namespace, desired, fleet, old if same_status else None):
            keys.append(key)
            states.append(state)
            i = places.find(key)
            if i is not None and old.states.same(i, state):  # type: ignore[union-attr]
                built.reuse(i)
            else:
                self.stats.serialised += 1
                metrics.LIST_ITEMS_SERIALISED.inc()
                built.add(_ENCODE(make()).encode())
        body, firsts = built.finish()
        self.stats.pieces_joined += built.joined
        if old is not None and list(old.keys) == keys and old.states == states:
            return old  # nothing shown changed (a record changed in what no view shows): same body, same tag
        return ModelList(tuple(keys), states, built.ends, body, firsts, f"{self._boot}-{next(self._generation)}")

    def namespaces(self, desired: DesiredState | None) -> list[str]:
        """Every namespace with a model file or a record."""
        if desired is None:
            return []
        found = {k.namespace for k in desired.models} | {k.namespace for k in desired.unreadable}
        found.update(k.namespace for k in self._status.records())
        return sorted(found)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One model, or None when no file defines it."""
        self._refresh()
        key = ModelKey(namespace, name)
        desired = self._desired()
        if desired is None:
            return None
        model = desired.models.get(key)
        record = self._status.record(key)
        fleet = _Fleet(self._status.sync.servers)
        if model is not None:
            return _desired_view(model, record, fleet.placement(model.fields.servers, record))
        if record is not None and desired.is_unreadable(key):
            return _last_good_view(key, record, desired.kept_reason(key, record.spec.path), fleet.recorded(record))
        return self._kept_at_zero(desired, fleet).get(key)

    def new_view(self, key: ModelKey, fields: ModelFields) -> dict[str, Any]:
        """A model just written, before any cycle has seen it: Pending, on the servers it selects."""
        self._refresh()
        fleet = _Fleet(self._status.sync.servers)
        return model_view(key, fields.name, fields.tag, None, fields.suspend, fleet.placement(fields.servers, None))

    def servers_json(self) -> bytes:
        """`{"items": [...]}`: every server of the inventory the last cycle recorded, by name, as JSON bytes."""
        self._refresh()
        servers = self._status.sync.servers
        stamp = (self._status.version, servers)
        with self._lock:
            if self._servers is not None and self._servers[0] == stamp:
                return self._servers[1]
        records = list(self._status.records().values()) if servers else []
        items = [server_view(server, records) for server in sorted(servers, key=lambda s: s.name)]
        body = (json.dumps({"items": items}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._servers = (stamp, body)
        return body

    def servers_reachability(self) -> list[dict[str, Any]]:
        """Every server of the inventory the last cycle recorded, by name, without its counts
        (`server_reachability`)."""
        self._refresh()
        return [server_reachability(server) for server in sorted(self._status.sync.servers, key=lambda s: s.name)]

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

    def _items(self, namespace: str, desired: DesiredState | None, fleet: _Fleet,
               unchanged: ModelList | None) -> Iterable[_Item]:
        """The namespace's models in name order: each one's key, its state (its file's fields, its
        placement and its record: what its view is made from) and how to make its view. `unchanged`:
        the last list, made with the records as they still are."""
        if desired is None:
            return []
        models = desired.in_namespace(namespace)
        if unchanged is not None and not desired.any_unreadable and desired.models:
            reused = self._reused_items(models, fleet, unchanged)
            if reused is not None:
                return reused
        kept_at_zero = {k: kept for k, kept in self._kept_at_zero_records(desired).items() if k.namespace == namespace}
        if desired.namespace_unreadable(namespace):  # every recorded model of it is kept
            records = {k: r for k, r in self._status.records().items() if k.namespace == namespace}
            broken = sorted(records)
        else:
            broken = sorted(k for k in desired.unreadable if k.namespace == namespace)
            if not broken and not kept_at_zero:  # the models alone, in name order: their records read a piece at a time
                return self._streamed(models, fleet)
            records = self._status.records([m.key for m in models] + broken)
        items: dict[ModelKey, _Item] = {}
        for m in models:
            items[m.key] = (m.key, *_desired_item(m, records.get(m.key), fleet))
        for key in broken:  # a broken file's model is still managed, at its last good version
            if key in records:
                items[key] = (key, *_kept_item(key, records[key], desired.kept_reason(key, records[key].spec.path), fleet))
        for key, (record, why) in kept_at_zero.items():
            items[key] = (key, *_kept_item(key, record, why, fleet))
        return [items[k] for k in sorted(items)]

    def _streamed(self, models: list[DesiredModel], fleet: _Fleet) -> Iterator[_Item]:
        # A list of a hundred thousand models never holds a copy of every record at once. Each piece's
        # records are read together; a record that changes meanwhile moves the status version, so the
        # next list looks again.
        for start in range(0, len(models), _PIECE):
            piece = models[start:start + _PIECE]
            records = self._status.records([m.key for m in piece])
            for m in piece:
                yield (m.key, *_desired_item(m, records.get(m.key), fleet))

    def _reused_items(self, models: list[DesiredModel], fleet: _Fleet, old: ModelList) -> Iterator[_Item] | None:
        """`_items` of models whose records have not changed since `old` was made: a model whose file
        and placement are as they were keeps its state from `old`; only the records of models new to
        it, or whose file or placement changed, are read. None when `old` kept a model (whose view
        depends on more than its record)."""
        if old.states.kept:
            return None
        places = _Places(old.keys)
        where = array.array("q")  # each model's place in `old`, or -1: its record is read
        wanted: list[ModelKey] = []
        for m in models:
            i = places.find(m.key)
            if i is not None:
                fields, placement = old.states.first(i, 2)
                # Placed on other servers, its seed fields are over others.
                if fields is m.fields and not (fleet.known and fleet.placement(m.fields.servers, None) != placement):
                    where.append(i)
                    continue
            where.append(-1)
            wanted.append(m.key)
        return self._reused(models, fleet, old, where, self._status.records(wanted))

    @staticmethod
    def _reused(models: list[DesiredModel], fleet: _Fleet, old: ModelList, where: array.array,
                records: dict[ModelKey, ModelRecord]) -> Iterator[_Item]:
        for m, i in zip(models, where):
            if i < 0:
                yield (m.key, *_desired_item(m, records.get(m.key), fleet))
            else:  # its state is the last list's: its bytes are reused, it is never made again
                yield (m.key, old.states[i], _unmade)

    def kept_at_zero(self, namespace: str, name: str) -> str | None:
        """Why a model whose file is gone is still kept (a refused prune to zero), or None."""
        self._refresh()
        desired = self._desired()
        if desired is None:
            return None
        view = self._kept_at_zero(desired, _Fleet(self._status.sync.servers)).get(ModelKey(namespace, name))
        return view["error"] if view else None

    def _kept_at_zero(self, desired: DesiredState, fleet: _Fleet) -> dict[ModelKey, dict[str, Any]]:
        """The recorded models a commit with no model file left would prune, while the reconciler
        has not applied it: it refuses to prune to zero (without --allow-empty), and keeps them all.
        Shown as kept, so that the list says what Ollama still has and why."""
        return {key: _last_good_view(key, record, why, fleet.recorded(record))
                for key, (record, why) in self._kept_at_zero_records(desired).items()}

    def _kept_at_zero_records(self, desired: DesiredState) -> dict[ModelKey, tuple[ModelRecord, str]]:
        if desired.models or desired.any_unreadable or desired.commit == self._status.sync.last_applied_commit:
            return {}
        message = (f"kept: its file is gone, but commit {(desired.commit or '')[:12]} would remove every model, "
                   "and ollama-gitops refuses to prune to zero without --allow-empty")
        return {key: (record, message) for key, record in self._status.records().items()}


class _Fleet:
    """The inventory the last cycle recorded, as the views need it: which servers a model is on.

    Before any cycle has recorded one (or where no reconciler's summary is read, as for the API
    alone in Kubernetes mode) the inventory is unknown: a model is shown on the servers its record
    has entries for, and a model on none is the seed's Pending, with no error.
    """

    def __init__(self, servers: tuple[ServerSeen, ...]) -> None:
        self._servers = tuple(sorted(servers, key=lambda s: s.name))
        self._names = tuple(s.name for s in self._servers)
        self._placed: dict[LabelSelector | None, Placement] = {}

    @property
    def known(self) -> bool:
        """Has a cycle recorded the inventory? (If not, a model is placed by its record.)"""
        return bool(self._names)

    @property
    def stamp(self) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """What the views depend on: the servers' names and labels (not whether they answer)."""
        return tuple((s.name, tuple(sorted(s.labels.items()))) for s in self._servers)

    def placement(self, selector: LabelSelector | None, record: ModelRecord | None) -> Placement:
        """Where a model whose file says `servers: selector` (None: every server) is."""
        if not self.known:
            return self._unknown(record)
        placed = self._placed.get(selector)
        if placed is None:  # one match per selector and list (a fleet's files share a few), and one
            # Placement each, which every list item placed so shares
            selected = tuple(selected_servers(selector, self._servers))
            placed = self._placed[selector] = Placement(selected, self._names != (DEFAULT_SERVER,), known=True)
        return placed

    def recorded(self, record: ModelRecord) -> Placement:
        """Where a model without a readable file is: the servers of the inventory its record has."""
        if not self.known:
            return self._unknown(record)
        selected = tuple(name for name in self._names if name in record.servers)
        return Placement(selected, self._names != (DEFAULT_SERVER,), known=True)

    @staticmethod
    def _unknown(record: ModelRecord | None) -> Placement:
        selected = tuple(sorted(record.servers)) if record is not None else ()
        return Placement(selected, fleet=bool(set(selected) - {DEFAULT_SERVER}))


def _desired_view(model: DesiredModel, record: ModelRecord | None, placement: Placement) -> dict[str, Any]:
    fields = model.fields
    return model_view(model.key, fields.name, fields.tag, record, fields.suspend, placement)


_Item = tuple[ModelKey, object, Callable[[], dict[str, Any]]]  # a model's key, state and how to make its view
_PIECE = 1000  # records read at a time for a list


def _desired_item(model: DesiredModel, record: ModelRecord | None, fleet: _Fleet
                  ) -> tuple[list[object], Callable[[], dict[str, Any]]]:
    """A model's state in a list (its file's fields, where it is placed, its record) and how to make its view."""
    placement = fleet.placement(model.fields.servers, record)
    return [model.fields, placement, record], lambda: _desired_view(model, record, placement)


_KEPT = "kept"  # the first value of a kept model's state (a model file's is its fields)


def _kept_item(key: ModelKey, record: ModelRecord, why: str, fleet: _Fleet
               ) -> tuple[list[object], Callable[[], dict[str, Any]]]:
    """A model kept at its last good version: its state in a list and how to make its view."""
    placement = fleet.recorded(record)
    return [_KEPT, why, placement, record.spec, record], lambda: _last_good_view(key, record, why, placement)


def _unmade() -> dict[str, Any]:
    raise AssertionError("a model whose state is the last list's keeps its bytes: it is never made again")


def _name(key: ModelKey) -> str:
    return key.name


# What the views show of a server's status (`model_view`, `_server_entry`): a list compares these only.
_SHOWN = operator.attrgetter("state", "size", "digest", "last_pull_time", "error", "progress_completed", "progress_total")


def _same_state(old: Sequence[object], new: Sequence[object]) -> bool:
    """Would a list show the model of state `new` as it showed that of `old`? Their values are equal,
    a record's in what a view shows of it: for each server, its name and the values of its status
    that a view shows. A record is never changed, only replaced (copy on write), so the last list's
    still says what it showed, and one that is the same object needs no look."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new):
        if a is b:
            continue
        if isinstance(a, ModelRecord) and isinstance(b, ModelRecord):
            if _shown(a) != _shown(b):
                return False
        elif a != b:
            return False
    return True


def _shown(record: ModelRecord) -> list[object]:
    return [(name, *_SHOWN(status)) for name, status in record.servers.items()]


class _Places:
    """Where keys that come in name order were in a list whose keys are in name order too: one walk
    along it, rather than a dict of its every key (a list of 100,000 models is rebuilt beside the last)."""

    __slots__ = ("_keys", "_at")

    def __init__(self, keys: Sequence[ModelKey]) -> None:
        self._keys = keys
        self._at = 0

    def find(self, key: ModelKey) -> int | None:
        """`key`'s place, or None; a key out of order is not found (and so is made again)."""
        keys, at = self._keys, self._at
        while at < len(keys) and keys[at] < key:
            at += 1
        self._at = at
        return at if at < len(keys) and keys[at] == key else None


class _States:
    """What each item of a list was made from (`_desired_item`, `_kept_item`), every item's values in
    one flat list of references: a list of a hundred thousand models holds no object per model, and
    three references for most (a record, not what a view shows of it, which is compared when the
    record is another: a list rebuilt beside the last holds little more than two of these)."""

    __slots__ = ("_values", "_ends", "kept")

    def __init__(self) -> None:
        self._values: list[object] = []
        self._ends = array.array("q")
        self.kept = False  # is any item a model kept at its last good version?

    def append(self, state: list[object]) -> None:
        self._values.extend(state)
        self._ends.append(len(self._values))
        self.kept = self.kept or state[0] is _KEPT

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> list[object]:
        return self._values[self._ends[i - 1] if i else 0:self._ends[i]]

    def first(self, i: int, n: int) -> list[object]:
        """The first `n` values of item `i`'s state."""
        begin = self._ends[i - 1] if i else 0
        return self._values[begin:min(begin + n, self._ends[i])]

    def same(self, i: int, state: Sequence[object]) -> bool:
        """Is item `i`'s state one that shows as `state` does (`_same_state`)?"""
        return _same_state(self[i], state)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _States) and self._ends == other._ends
                and all(self.same(i, other[i]) for i in range(len(self))))


def _last_good_view(key: ModelKey, record: ModelRecord, why: str, placement: Placement) -> dict[str, Any]:
    """A model kept at its last good version, showing `why` as its error (the reconciler records the same)."""
    name, _, tag = record.spec.reference.rpartition(":")
    return model_view(key, name, tag, record, record.spec.suspend, placement, error=why)
