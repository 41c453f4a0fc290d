"""What the read endpoints answer: the desired state at the newest commit, merged with live status.

A model's seed fields are the whole over the servers its `servers:` selector picks in the current
inventory (the servers the last cycle recorded, `SyncStatus.servers`); in a fleet its view adds the
model on each of them.

Reads are served from memory. A namespace's list is serialised once per (commit, status version,
servers and their labels) and the bytes reused until one changes, so listing ten thousand models
is a dictionary lookup.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..reconciler.fleetstatus import overall
from ..reconciler.fleetstatus import selected as selected_servers
from ..reconciler.models.desired import DesiredModel, DesiredState, ModelKey
from ..reconciler.models.modelfile import ModelFields
from ..reconciler.models.selector import LabelSelector
from ..reconciler.models.sizes import format_size
from ..reconciler.state import DEFAULT_SERVER, FAILED, PENDING, PULLING, READY, ModelRecord, ModelStatus, ServerSeen, SyncStatus


ALL_NAMESPACES = "*"


class StatusSource(Protocol):
    """Live status of models: the reconciler's store, a follower of it, or (later) the cluster."""

    version: int
    sync: SyncStatus

    def record(self, key: ModelKey) -> ModelRecord | None: ...

    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]: ...


@dataclass(frozen=True)
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


class Catalog:
    """The models of each namespace, as the API shows them."""

    def __init__(self, desired: Callable[[], DesiredState | None], status: StatusSource,
                 follow: Callable[[], object] | None = None) -> None:
        self._desired = desired
        self._status = status
        self._follow = follow  # called before reads, to take in status written by another process
        self._lock = threading.Lock()
        self._lists: dict[str, tuple[tuple[object, ...], bytes]] = {}
        self._servers: tuple[tuple[object, ...], bytes] | None = None

    def list_json(self, namespace: str) -> bytes:
        """`{"items": [...]}` for a namespace, ordered by name, as JSON bytes."""
        return self._list(namespace, lambda desired, fleet: self._views(namespace, desired, fleet))

    def list_all_json(self) -> bytes:
        """`{"items": [...]}` over every namespace, ordered by namespace then name (the dashboard's list)."""
        return self._list(ALL_NAMESPACES, lambda desired, fleet: [
            view for namespace in self.namespaces(desired) for view in self._views(namespace, desired, fleet)])

    def _list(self, slot: str, items: Callable[[DesiredState | None, _Fleet], list[dict[str, Any]]]) -> bytes:
        self._refresh()
        desired = self._desired()
        fleet = _Fleet(self._status.sync.servers)
        stamp = (desired.commit if desired else None, self._status.version, fleet.stamp)
        with self._lock:
            cached = self._lists.get(slot)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        body = (json.dumps({"items": items(desired, fleet)}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._lists[slot] = (stamp, body)
        return body

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
            return _desired_view(model, record, fleet)
        if record is not None and desired.is_unreadable(key):
            return _last_good_view(key, record, desired.kept_reason(key, record.spec.path), fleet)
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

    def _views(self, namespace: str, desired: DesiredState | None, fleet: _Fleet) -> list[dict[str, Any]]:
        if desired is None:
            return []
        models = desired.in_namespace(namespace)
        if desired.namespace_unreadable(namespace):  # every recorded model of it is kept
            records = {k: r for k, r in self._status.records().items() if k.namespace == namespace}
            broken = sorted(records)
        else:
            broken = sorted(k for k in desired.unreadable if k.namespace == namespace)
            records = self._status.records([m.key for m in models] + broken)
        views = {m.key: _desired_view(m, records.get(m.key), fleet) for m in models}
        for key in broken:  # a broken file's model is still managed, at its last good version
            if key in records:
                views[key] = _last_good_view(key, records[key], desired.kept_reason(key, records[key].spec.path), fleet)
        views.update((k, v) for k, v in self._kept_at_zero(desired, fleet).items() if k.namespace == namespace)
        return [views[k] for k in sorted(views)]

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
        if desired.models or desired.any_unreadable or desired.commit == self._status.sync.last_applied_commit:
            return {}
        message = (f"kept: its file is gone, but commit {(desired.commit or '')[:12]} would remove every model, "
                   "and ollama-gitops refuses to prune to zero without --allow-empty")
        return {key: _last_good_view(key, record, message, fleet) for key, record in self._status.records().items()}


class _Fleet:
    """The inventory the last cycle recorded, as the views need it: which servers a model is on.

    Before any cycle has recorded one (or where no reconciler's summary is read, as for the API
    alone in Kubernetes mode) the inventory is unknown: a model is shown on the servers its record
    has entries for, and a model on none is the seed's Pending, with no error.
    """

    def __init__(self, servers: tuple[ServerSeen, ...]) -> None:
        self._servers = tuple(sorted(servers, key=lambda s: s.name))
        self._names = tuple(s.name for s in self._servers)
        self._selected: dict[LabelSelector | None, tuple[str, ...]] = {}

    @property
    def stamp(self) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """What the views depend on: the servers' names and labels (not whether they answer)."""
        return tuple((s.name, tuple(sorted(s.labels.items()))) for s in self._servers)

    def placement(self, selector: LabelSelector | None, record: ModelRecord | None) -> Placement:
        """Where a model whose file says `servers: selector` (None: every server) is."""
        if not self._names:
            return self._unknown(record)
        selected = self._selected.get(selector)
        if selected is None:  # one match per selector and list: a fleet's files share a few selectors
            selected = self._selected[selector] = tuple(selected_servers(selector, self._servers))
        return Placement(selected, self._names != (DEFAULT_SERVER,), known=True)

    def recorded(self, record: ModelRecord) -> Placement:
        """Where a model without a readable file is: the servers of the inventory its record has."""
        if not self._names:
            return self._unknown(record)
        selected = tuple(name for name in self._names if name in record.servers)
        return Placement(selected, self._names != (DEFAULT_SERVER,), known=True)

    @staticmethod
    def _unknown(record: ModelRecord | None) -> Placement:
        selected = tuple(sorted(record.servers)) if record is not None else ()
        return Placement(selected, fleet=bool(set(selected) - {DEFAULT_SERVER}))


def _desired_view(model: DesiredModel, record: ModelRecord | None, fleet: _Fleet) -> dict[str, Any]:
    fields = model.fields
    return model_view(model.key, fields.name, fields.tag, record, fields.suspend, fleet.placement(fields.servers, record))


def _last_good_view(key: ModelKey, record: ModelRecord, why: str, fleet: _Fleet) -> dict[str, Any]:
    """A model kept at its last good version, showing `why` as its error (the reconciler records the same)."""
    name, _, tag = record.spec.reference.rpartition(":")
    return model_view(key, name, tag, record, record.spec.suspend, fleet.recorded(record), error=why)
