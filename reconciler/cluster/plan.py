"""Git to resources: a pure plan from the desired state and the managed resources in the cluster.

Only resources that carry ollama-gitops's managed-by label are ever considered (the cache lists
nothing else), and the standalone mode's safety rules hold: a broken file keeps its resource as it
is, and a commit that would prune every resource is refused unless `allow_empty`.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from ..models.desired import DesiredState, ModelKey
from .resources import Resource, desired_body, matches


@dataclass(frozen=True)
class ApplyResource:
    """Create or put back the resource as the file says (server-side apply)."""

    key: ModelKey
    body: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class DeleteResource:
    """Delete a resource whose file is gone (its finalizer then lets the controller prune Ollama)."""

    key: ModelKey
    reason: str


@dataclass(frozen=True)
class ReleaseResource:
    """A resource deleted by hand while its file is still in Git: let the deletion finish without
    touching Ollama (drop the finalizer); the next cycle creates it again."""

    key: ModelKey
    reason: str


@dataclass(frozen=True)
class LeaveResource:
    key: ModelKey
    reason: str


ResourceAction = ApplyResource | DeleteResource | ReleaseResource | LeaveResource


@dataclass(frozen=True)
class ResourcePlan:
    actions: tuple[ResourceAction, ...]
    refused: str | None = None

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def plan_resources(
    desired: DesiredState,
    resources: Mapping[ModelKey, Resource],
    *,
    scope: Set[ModelKey] | None = None,
    allow_empty: bool = False,
) -> ResourcePlan:
    """What to create, change and delete so that the managed resources match `desired`."""
    keys = set(desired.models) | set(desired.unreadable) | set(resources) if scope is None else set(scope)
    actions: list[ResourceAction] = []
    removals: list[ResourceAction] = []
    for key in sorted(keys):
        model = desired.models.get(key)
        resource = resources.get(key)
        if model is not None:
            if resource is not None and resource.deleting:
                actions.append(ReleaseResource(key, "deleted by hand but still in Git; weights kept, it comes back"))
                continue
            body = desired_body(model, desired.commit)
            if resource is None:
                actions.append(ApplyResource(key, body, "new in Git" if key not in resources else "missing"))
            elif not matches(resource, body):
                actions.append(ApplyResource(key, body, "differs from Git"))
        elif desired.is_unreadable(key):
            actions.append(LeaveResource(key, "model file is invalid; the resource stays as it was"
                                         if key in desired.unreadable else "its namespace folder (or models/) cannot be read; the resource stays as it was"))
        elif resource is not None and not resource.deleting:
            removals.append(DeleteResource(key, "file removed from Git"))
    if removals and not allow_empty and not desired.models and not desired.any_unreadable:
        refused = (f"commit {(desired.commit or '')[:12]} would remove all {len(removals)} resources; "
                   "refusing to prune to zero without --allow-empty")
        return ResourcePlan(tuple(actions), refused)
    return ResourcePlan(tuple(actions + removals))
