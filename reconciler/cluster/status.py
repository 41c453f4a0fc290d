"""Kubernetes mode's memory: the reconciler's records kept on the OllamaModel resources themselves.

Status goes to the status subresource (and only there): the seed's fields for the model as a whole
(`fleetstatus.overall` over the servers the model is recorded on), and `servers`, the model on each server of the fleet. What only
ollama-gitops needs to remember (it pulled these weights there, it handled that refresh request)
goes into annotations, per server; forgetting a model releases its finalizer so that its deletion
can finish. A new leader reads both back (`record_from`), server by server. Writes leave the
reconciler's thread at once and are made by a small pool, the newest record of a key winning, so a
cycle never waits on the API server; a write that fails is tried again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import metrics
from ..models.desired import ModelKey
from ..models.sizes import format_size
from ..fleetstatus import overall_recorded
from ..state import (DEFAULT_SERVER, FAILED, PENDING, PULLING, READY, AppliedSpec, ModelRecord, ModelStatus, StateStore,
                     utc_rfc3339)
from .cache import ResourceCache
from .conditions import model_conditions
from .client import ClusterClient, ClusterError
from .resources import (FINALIZER, PRUNE, PULLED, REFRESH_HANDLED, REFRESH_REQUESTED_AT, SEED_REFRESH,
                        SERVERS_MEMORY, SOURCE_COMMIT, SOURCE_PATH, SUSPEND, Resource)

log = logging.getLogger("ollama_gitops.cluster.status")

SEED_REFRESH_TOKEN = "seed-refresh"


def refresh_token(resource: Resource) -> str | None:
    """What asks for a re-pull: the file's refreshRequestedAt, and the seed's `refresh: "true"`."""
    parts = [resource.annotations.get(REFRESH_REQUESTED_AT)]
    if resource.annotations.get(SEED_REFRESH) == "true":
        parts.append(SEED_REFRESH_TOKEN)
    token = "|".join(p for p in parts if p)
    return token or None


def record_from(resource: Resource, *, restarting: bool = True) -> ModelRecord:
    """The reconciler's record of a model, read back from its resource: per server from
    `status.servers`; a status written before fleets (no `servers`) is the one server `default`'s.

    `restarting`: for a reconciler taking the records up, a Pulling model is Pending there (the pull
    died with the process that ran it); a reader (the API deployed apart) shows the state as it is,
    with the pull's progress when the status carries it.
    """
    annotations, status = resource.annotations, resource.status
    spec = AppliedSpec(
        reference=resource.reference,
        path=annotations.get(SOURCE_PATH, ""),
        prune=annotations.get(PRUNE) != "false",
        suspend=annotations.get(SUSPEND) == "true",
        refresh_requested_at=refresh_token(resource),
    )
    memory = _memory(annotations)
    entries = status.get("servers")
    if not isinstance(entries, list):
        entries = [{**status, "name": DEFAULT_SERVER}]
    servers = {}
    for entry in entries:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name:
            owned, handled = memory.get(name, (False, None))
            servers[name] = _server_status(entry, owned, handled, annotations.get(SOURCE_COMMIT), restarting)
    return ModelRecord(spec, servers)


def _server_status(entry: Mapping[str, Any], owned: bool, refresh_handled: str | None, commit: str | None,
                   restarting: bool) -> ModelStatus:
    state = entry.get("state") or PENDING
    progress = entry.get("progress") if not restarting and state == PULLING else None
    progress = progress if isinstance(progress, dict) else {}
    return ModelStatus(
        state=PENDING if restarting and state == PULLING else state,
        size=entry.get("size"), digest=entry.get("digest"), last_pull_time=entry.get("lastPullTime"),
        error=entry.get("error"), applied_commit=commit, owned=owned, refresh_handled=refresh_handled,
        progress_completed=_count(progress.get("completed")), progress_total=_count(progress.get("total")))


def _memory(annotations: Mapping[str, str]) -> dict[str, tuple[bool, str | None]]:
    """Per server: did ollama-gitops pull the model there, which refresh did it handle there."""
    memory = {DEFAULT_SERVER: (annotations.get(PULLED) == "true", annotations.get(REFRESH_HANDLED))}
    try:
        others = json.loads(annotations.get(SERVERS_MEMORY) or "{}")
    except ValueError:
        others = {}  # edited by hand into nonsense: nothing is owned there, so nothing is pruned there
    for name, kept in (others.items() if isinstance(others, dict) else ()):
        if name != DEFAULT_SERVER and isinstance(kept, dict):
            handled = kept.get("refreshHandled")
            memory[name] = (kept.get("pulled") is True, handled if isinstance(handled, str) else None)
    return memory


def memory_annotations(record: ModelRecord, existing: Mapping[str, str]) -> dict[str, str | None]:
    """The controller's annotations for `record` (None removes one): the server `default`'s memory
    where it always was, the other servers' in `SERVERS_MEMORY`; and, once every server has handled
    the seed's `refresh: "true"`, its `completed-<time>` (the seed's protocol)."""
    default = record.servers.get(DEFAULT_SERVER) or ModelStatus()
    others = {name: {k: v for k, v in (("pulled", True if status.owned else None),
                                        ("refreshHandled", status.refresh_handled)) if v is not None}
              for name, status in sorted(record.servers.items()) if name != DEFAULT_SERVER}
    others = {name: kept for name, kept in others.items() if kept}
    annotations: dict[str, str | None] = {
        PULLED: "true" if default.owned else None, REFRESH_HANDLED: default.refresh_handled,
        SERVERS_MEMORY: json.dumps(others, sort_keys=True, separators=(",", ":")) if others else None}
    statuses = list(record.servers.values())
    if (statuses and all(SEED_REFRESH_TOKEN in (s.refresh_handled or "") for s in statuses)
            and existing.get(SEED_REFRESH) == "true"):
        latest = max((s.last_pull_time for s in statuses if s.last_pull_time), default=None)
        annotations[SEED_REFRESH] = f"completed-{latest or utc_rfc3339(time.time())}"
    return annotations


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def server_entry(name: str, status: ModelStatus) -> dict[str, Any]:
    """One entry of `status.servers` (as the API shows a server's status, but for `progress`, which
    is never written: it changes by the second, and status is written only when a state changes)."""
    entry = {"name": name, "state": status.state, "size": status.size,
             "formattedSize": format_size(status.size) if status.size else None, "digest": status.digest or None,
             "lastPullTime": status.last_pull_time, "error": status.error}
    return {k: v for k, v in entry.items() if v is not None}


def status_body(status: ModelStatus, *, servers: Mapping[str, ModelStatus] | None = None, suspended: bool = False,
                generation: int | None = None, previous_conditions: Sequence[Mapping[str, Any]] | None = None,
                now: str | None = None) -> dict[str, Any]:
    """The status subresource: the seed CRD's fields for the whole `status` (None removes one, as the
    controller owned it), `servers` (one entry per server, sorted by name) when given, and beside
    them `observedGeneration` and the kstatus conditions (see `conditions`), whose transition times
    are carried over from `previous_conditions` while their status holds."""
    return {
        "state": status.state,
        "size": status.size,
        "formattedSize": format_size(status.size) if status.size else None,
        "digest": status.digest or None,
        "lastPullTime": status.last_pull_time,
        "error": status.error,
        "servers": [server_entry(name, s) for name, s in sorted(servers.items())] if servers is not None else None,
        "observedGeneration": generation or None,
        "conditions": model_conditions(status, suspended=suspended, generation=generation,
                                       previous=previous_conditions, now=now or utc_rfc3339(time.time())),
    }


class ClusterStateStore(StateStore):
    """A StateStore whose records live on the resources (the sync summary stays in the state dir)."""

    def __init__(self, directory: Path, client: ClusterClient, cache: ResourceCache, *, workers: int = 8,
                 leading: Callable[[], bool] = lambda: True) -> None:
        self._client = client
        self._leading = leading
        self._cache = cache
        self._pending: dict[ModelKey, ModelRecord | None] = {}
        # The status each resource was last given here: newer than the cache while the watch lags.
        self._written: dict[ModelKey, dict[str, Any]] = {}
        self._forced: set[ModelKey] = set()
        # One write per resource at a time, in order: a newer record waits for the one being
        # written (two workers writing Pulling and Ready at once could land them in either order).
        self._writing: set[ModelKey] = set()
        self._queued: set[ModelKey] = set()  # pending behind a write in flight: sent when it ends
        self._pending_lock = threading.Lock()
        self._idle = threading.Condition(self._pending_lock)
        self._in_flight = 0
        self._crashes: dict[ModelKey, str] = {}  # unexpected errors of writes, until a cycle reports them
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-status")
        super().__init__(directory)

    def _load(self, truncate: bool = False) -> None:
        for key, resource in self._cache.snapshot().items():
            if not resource.deleting or FINALIZER in resource.finalizers:
                self._models[key] = record_from(resource)
                self._index(key, self._models[key])
        self._load_sync()

    def reload(self, timeout: float = 60.0) -> bool:
        """Read every record again from the resources (the watch cache), dropping the writes not made
        yet: a replica that starts leading must plan from what the last leader recorded on them, not
        from what it read at its own start. False if the cache has not taken in a first list."""
        if not self._cache.wait_synced(timeout):
            return False
        with self._lock, self._pending_lock:
            self._pending.clear()
            self._forced.clear()
            self._written.clear()  # another leader may have written since: the resources say what is
            self._reload(truncate=False)
            self.version += 1
        return True

    def _persist(self, changes: list[tuple[ModelKey, ModelRecord | None]]) -> None:
        with self._pending_lock:
            for key, record in changes:
                self._pending[key] = record.copy() if record is not None else None
        self._drain()

    def rewrite(self, keys: set[ModelKey], *, force: bool = True) -> None:
        """Write these records again: whatever the cache says (their resources were just recreated),
        or with `force=False` where what they would write now differs from what the cache holds."""
        with self._lock, self._pending_lock:
            for key in keys:
                if key in self._models:
                    self._pending[key] = self._models[key].copy()
                    if force:
                        self._forced.add(key)
        self._drain()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every write handed out so far has been attempted (writes parked until their
        resource appears, or to be tried again, stay parked); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout=timeout)

    def retry(self) -> None:
        """Try again the writes that failed."""
        self._drain()

    def crashes(self) -> dict[ModelKey, str]:
        """The unexpected errors of writes since the last call (those writes wait for a retry)."""
        with self._pending_lock:
            crashes, self._crashes = self._crashes, {}
        return crashes

    def crashed(self) -> set[ModelKey]:
        """Models whose last write failed unexpectedly and has not been reported yet."""
        with self._pending_lock:
            return set(self._crashes)

    def waiting(self) -> set[ModelKey]:
        """Models whose writes wait for a retry (failed, or their resource not seen yet)."""
        with self._pending_lock:
            return set(self._pending)

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)

    def _drain(self) -> None:
        with self._pending_lock:
            ready = [key for key in self._pending if key not in self._writing]
            self._queued.update(key for key in self._pending if key in self._writing)
            batch = [self._take(key) for key in ready]
        for key, record, forced in batch:
            self._pool.submit(self._write, key, record, forced)

    def _take(self, key: ModelKey) -> tuple[ModelKey, ModelRecord | None, bool]:
        """Move a pending write into flight (called under the pending lock)."""
        record = self._pending.pop(key)
        forced = key in self._forced
        self._forced.discard(key)
        self._writing.add(key)
        self._in_flight += 1
        return key, record, forced

    def _write(self, key: ModelKey, record: ModelRecord | None, forced: bool) -> None:
        try:
            if not self._leading():
                return  # the new leader reads the resources and writes what it finds to be true

            if record is None:
                self._release(key)
            else:
                self._write_record(key, record, forced)
        except ClusterError as exc:
            log.warning("action=status-write-failed resource=%s status=%d error=%r", key, exc.status, exc.message)
            if exc.status in (0, 409, 429, 500, 503):  # worth another try; a 404 or 422 is not
                with self._pending_lock:
                    self._pending.setdefault(key, record)
        except Exception as exc:  # a bug or an incompatible client: never silent, never lost
            log.exception("action=status-write-crashed resource=%s", key)
            metrics.BACKGROUND_ERRORS.labels("status").inc()
            with self._pending_lock:
                self._pending.setdefault(key, record)
                self._crashes[key] = f"writing its status failed unexpectedly: {type(exc).__name__}: {exc}"
        finally:
            following = None
            with self._idle:
                self._writing.discard(key)
                if key in self._queued:
                    self._queued.discard(key)
                    if key in self._pending:
                        following = self._take(key)  # before this one counts as done: flush waits for both
                self._in_flight -= 1
                self._idle.notify_all()
            if following is not None:
                self._pool.submit(self._write, *following)

    def _release(self, key: ModelKey) -> None:
        with self._pending_lock:
            self._written.pop(key, None)
        resource = self._cache.get(key)
        if resource is None or FINALIZER not in resource.finalizers:
            return
        try:
            self._client.remove_finalizer(key, FINALIZER, list(resource.finalizers))
        except ClusterError as exc:
            if not exc.not_found:
                raise

    def _write_record(self, key: ModelKey, record: ModelRecord, forced: bool) -> None:
        resource = self._cache.get(key)
        if resource is None and not forced:
            # Not in the cache yet (just created, and the watch has not brought it): keep the write
            # for the next round rather than lose it; a record forgotten meanwhile drops it.
            with self._lock:
                still_recorded = key in self._models
            if still_recorded:
                with self._pending_lock:
                    self._pending.setdefault(key, record)
            return
        current = dict(resource.status) if resource is not None else {}
        with self._pending_lock:
            written = self._written.get(key)
        latest = written if written is not None else current  # what the resource says now
        # Just created (forced, not in the cache yet): a new resource is at generation 1.
        whole = overall_recorded(record)  # the seed's fields: over the servers the model is on
        status = status_body(whole, servers=record.servers, suspended=record.spec.suspend,
                             generation=resource.generation if resource is not None else 1,
                             previous_conditions=latest.get("conditions"))
        # Unchanged only if it is what the cache holds and what was last written (a quick Pulling and
        # back to Ready must not leave Pulling behind because the watch has not brought it yet).
        if forced or any(current.get(k) != v or latest.get(k) != v for k, v in status.items()):
            self._client.apply_status(key, status)
            with self._pending_lock:
                self._written[key] = status
            before = _states(latest)
            for name, server in sorted(record.servers.items()):
                self._event(key, name, before.get(name), server, resource)
        existing = resource.annotations if resource is not None else {}
        annotations = memory_annotations(record, existing)
        if any(existing.get(k) != v for k, v in annotations.items()):
            self._client.patch_annotations(key, annotations)

    def _event(self, key: ModelKey, server: str, before: str | None, status: ModelStatus,
               resource: Resource | None) -> None:
        """An Event for a server whose state changed, naming it (the one server `default` unnamed, as before)."""
        if status.state == before:
            return
        where = "" if server == DEFAULT_SERVER else f" on server {server}"
        if status.state == PULLING:
            self._client.event(key, "Pulling", f"pulling the model into Ollama{where}", resource=resource)
        elif status.state == READY and before == PULLING:
            self._client.event(key, "Pulled", f"pulled{where} ({format_size(status.size or 0)}, "
                               f"digest {status.digest or '-'})", resource=resource)
        elif status.state == FAILED:
            prefix = "" if server == DEFAULT_SERVER else f"{server}: "
            self._client.event(key, "PullFailed", prefix + (status.error or "the pull failed"), warning=True,
                               resource=resource)


def _states(status: Mapping[str, Any]) -> dict[str, str | None]:
    """Each server's state as a written status says (one written before fleets: the server `default`'s)."""
    entries = status.get("servers")
    if isinstance(entries, list):
        return {e.get("name"): e.get("state") for e in entries if isinstance(e, Mapping)}
    return {DEFAULT_SERVER: status.get("state")} if status.get("state") else {}
