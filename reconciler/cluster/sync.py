"""Carrying out a resource plan against the cluster, several writes at a time.

A failed write is that model's error, never the cycle's end: a namespace that does not exist, a
conflict (retried next cycle) or a refused object are reported per model, and the rest goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .. import metrics
from ..models.desired import DesiredState, ModelKey
from .cache import ResourceCache
from .client import ClusterClient, ClusterError
from .plan import ApplyResource, DeleteResource, ReleaseResource, ResourceAction, ResourcePlan, plan_resources
from .status import ClusterStateStore, refresh_token
from .resources import FINALIZER, Resource

log = logging.getLogger("ollama_gitops.cluster")

UNEXPECTED = -1  # the ClusterError status of a write that raised something else (no HTTP answer)


@dataclass
class SyncResult:
    applied: list[ModelKey] = field(default_factory=list)
    deleted: list[ModelKey] = field(default_factory=list)
    released: list[ModelKey] = field(default_factory=list)
    errors: dict[ModelKey, str] = field(default_factory=dict)
    unreachable: str | None = None  # the API server did not answer at all

    @property
    def ok(self) -> bool:
        return not self.errors and self.unreachable is None


class ResourceSync:
    """Applies resource plans with a small pool of writers."""

    def __init__(self, client: ClusterClient, *, workers: int = 8, leading: Callable[[], bool] = lambda: True) -> None:
        self._client = client
        self._leading = leading
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-write")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run(self, plan: ResourcePlan, resources: dict[ModelKey, Resource], commit: str | None) -> SyncResult:
        """Carry out every write of `plan`; `resources` is what the cache holds (for finalizers)."""
        result = SyncResult()
        writes = [a for a in plan.actions if isinstance(a, (ApplyResource, DeleteResource, ReleaseResource))]
        outcomes = self._pool.map(lambda action: self._write(action, resources), writes)
        for action, error in zip(writes, outcomes):
            if error is None:
                {ApplyResource: result.applied, DeleteResource: result.deleted,
                 ReleaseResource: result.released}[type(action)].append(action.key)
                log.info("action=%s resource=%s commit=%s reason=%r", _verb(action), action.key,
                         (commit or "-")[:12], action.reason)
            elif error.status == 0:
                result.unreachable = error.message
            else:
                result.errors[action.key] = error.message
                log.warning("action=failed resource=%s verb=%s status=%d error=%r", action.key, _verb(action),
                            error.status, error.message)
        return result

    def _write(self, action: ResourceAction, resources: dict[ModelKey, Resource]) -> ClusterError | None:
        if not self._leading():  # the Lease was lost: another replica applies now
            return ClusterError(0, "not the leader any more; standing by")
        try:
            if isinstance(action, ApplyResource):
                self._client.apply(action.body)
            elif isinstance(action, DeleteResource):
                self._client.event(action.key, "Pruning", f"{action.reason}; deleting the resource",
                                   resource=resources.get(action.key))
                self._client.delete(action.key)
            elif isinstance(action, ReleaseResource):
                self._client.remove_finalizer(action.key, FINALIZER, list(resources[action.key].finalizers))
                self._client.event(action.key, "Released", action.reason, resource=resources[action.key])
        except ClusterError as exc:
            return exc
        except Exception as exc:  # a bug or an incompatible client: the model's error, never silent
            log.exception("action=write-crashed resource=%s verb=%s", action.key, _verb(action))
            metrics.BACKGROUND_ERRORS.labels("resources").inc()
            return ClusterError(UNEXPECTED, f"failed unexpectedly: {type(exc).__name__}: {exc}")
        return None


def _verb(action: ResourceAction) -> str:
    return {ApplyResource: "applied", DeleteResource: "deleted", ReleaseResource: "released"}[type(action)]


class ClusterSync:
    """The Git-to-resources step of a Kubernetes-mode cycle."""

    def __init__(self, client: ClusterClient, cache: ResourceCache, store: ClusterStateStore, *,
                 allow_empty: bool = False, workers: int = 8, leading: Callable[[], bool] = lambda: True) -> None:
        self._cache = cache
        self._store = store
        self._writer = ResourceSync(client, workers=workers, leading=leading)
        self.allow_empty = allow_empty

    def changed(self) -> set[ModelKey]:
        """Resources changed in the cluster since the last call (edited or deleted by hand), and those
        whose status write failed unexpectedly (so that the next cycle reports it)."""
        return self._cache.take_changed() | self._store.crashed()

    def amend(self, desired: DesiredState, scope: set[ModelKey] | None) -> DesiredState:
        """Desired state with the refreshes asked for on the resources (the seed's annotation) added."""
        keys = desired.models.keys() if scope is None else scope
        amended = {}
        for key in keys:
            resource = self._cache.get(key)
            model = desired.models.get(key)
            if model is None or resource is None:
                continue
            token = refresh_token(resource)
            if token and token != model.fields.refresh_requested_at:
                amended[key] = replace(model, fields=replace(model.fields, refresh_requested_at=token))
        if not amended:
            return desired
        return replace(desired, models={**desired.models, **amended})

    def sync(self, desired: DesiredState, scope: set[ModelKey] | None) -> list[str]:
        """Make the managed resources in `scope` (all when None) match `desired`; returns problems."""
        if scope is None:
            resources = self._cache.snapshot()
        else:
            resources = {key: r for key in scope if (r := self._cache.get(key)) is not None}
        plan = plan_resources(desired, resources, scope=scope, allow_empty=self.allow_empty)
        result = self._writer.run(plan, resources, desired.commit)
        # A resource just created carries no status yet: write the model's record onto it.
        self._store.rewrite({key for key in result.applied if key not in resources})
        # A spec changed (by hand, or put back) has a new generation, which the status must answer
        # even though the model's record did not change.
        self._store.rewrite({key for key, r in resources.items() if r.status and not r.deleting
                             and r.status.get("observedGeneration") != r.generation}, force=False)
        crashes = self._store.crashes()  # before retry(): a write failing again shows in the next cycle
        self._store.retry()
        problems = [f"{key}: {message}" for key, message in sorted({**crashes, **result.errors}.items())]
        if result.unreachable:
            problems.append(result.unreachable)
        if plan.refused:
            problems.append(plan.refused)
        return problems

    def close(self) -> None:
        self._writer.close()
