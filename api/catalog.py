"""What the read endpoints answer: the desired state at the newest commit, merged with live status.

Reads are served from memory. A namespace's list is serialised once per (commit, status version) and
the bytes reused until either changes, so listing ten thousand models is a dictionary lookup.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Collection
from typing import Any, Protocol

from ..reconciler.models.desired import DesiredState, ModelKey
from ..reconciler.models.sizes import format_size
from ..reconciler.fleetstatus import overall_recorded
from ..reconciler.state import DEFAULT_SERVER, PENDING, PULLING, ModelRecord, SyncStatus


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


class Catalog:
    """The models of each namespace, as the API shows them."""

    def __init__(self, desired: Callable[[], DesiredState | None], status: StatusSource,
                 follow: Callable[[], object] | None = None) -> None:
        self._desired = desired
        self._status = status
        self._follow = follow  # called before reads, to take in status written by another process
        self._lock = threading.Lock()
        self._lists: dict[str, tuple[tuple[str | None, int], bytes]] = {}

    def list_json(self, namespace: str) -> bytes:
        """`{"items": [...]}` for a namespace, ordered by name, as JSON bytes."""
        self._refresh()
        desired = self._desired()
        stamp = (desired.commit if desired else None, self._status.version)
        with self._lock:
            cached = self._lists.get(namespace)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        items = self._views(namespace, desired)
        body = (json.dumps({"items": items}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._lists[namespace] = (stamp, body)
        return body

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

    def _views(self, namespace: str, desired: DesiredState | None) -> list[dict[str, Any]]:
        if desired is None:
            return []
        models = desired.in_namespace(namespace)
        if desired.namespace_unreadable(namespace):  # every recorded model of it is kept
            records = {k: r for k, r in self._status.records().items() if k.namespace == namespace}
            broken = sorted(records)
        else:
            broken = sorted(k for k in desired.unreadable if k.namespace == namespace)
            records = self._status.records([m.key for m in models] + broken)
        views = {m.key: model_view(m.key, m.fields.name, m.fields.tag, records.get(m.key), m.fields.suspend)
                 for m in models}
        for key in broken:  # a broken file's model is still managed, at its last good version
            if key in records:
                views[key] = _last_good_view(key, records[key], desired.kept_reason(key, records[key].spec.path))
        views.update((k, v) for k, v in self._kept_at_zero(desired).items() if k.namespace == namespace)
        return [views[k] for k in sorted(views)]

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
        if desired.models or desired.any_unreadable or desired.commit == self._status.sync.last_applied_commit:
            return {}
        message = (f"kept: its file is gone, but commit {(desired.commit or '')[:12]} would remove every model, "
                   "and ollama-gitops refuses to prune to zero without --allow-empty")
        return {key: _last_good_view(key, record, message) for key, record in self._status.records().items()}


def _last_good_view(key: ModelKey, record: ModelRecord, why: str) -> dict[str, Any]:
    """A model kept at its last good version, showing `why` as its error (the reconciler records the same)."""
    name, _, tag = record.spec.reference.rpartition(":")
    shown = ModelRecord(record.spec, {DEFAULT_SERVER: dataclasses.replace(overall_recorded(record), error=why)})
    return model_view(key, name, tag, shown, record.spec.suspend)
