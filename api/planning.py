"""`GET /api/v1/plan?ref=REF`: the inputs of a plan preview, gathered from the running service.

Read only: the ref is fetched into the API's clone apart from the tracked branch
(`GitRepo.fetch_ref`), loaded with the API's loader, and planned against the records and what the
reconciler last listed (serve), or what its records say (api, which does not talk to Ollama). No
pull, delete, write to the cluster or to the state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..reconciler.git.repo import GitError, InvalidRef, RefNotFound
from ..reconciler.models.desired import DesiredState, ModelKey
from ..reconciler.ollama.downloads import RegistrySizes
from ..reconciler.ollama.registry import BlobHolder, RegistryClient
from ..reconciler.ollama.server import ModelOperationFailed, ServerUnreachable
from ..reconciler.placement import ServerView
from ..reconciler.state import DEFAULT_SERVER, ModelRecord, ServerSeen
from ..reconciler.preview import (PULLS, PlanPreview, ServerInput, preview, recorded_observations,
                                  references_of, related_records, scope_from_paths, scope_of)

from .catalog import StatusSource
from .repository import ModelsRepository

if TYPE_CHECKING:
    from ..reconciler.reconcile import Reconciler

log = logging.getLogger("ollama_gitops.api.plan")

SERVER_NAME = DEFAULT_SERVER  # one server given the old way (reconciler/ollama/inventory.py)


class PlanUnavailable(Exception):
    """No plan: the ref is invalid (400), unknown (404), or Git cannot be read now (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Planner:
    """Plans refs of the models repository against the live state, changing nothing."""

    def __init__(self, repository: ModelsRepository, status: StatusSource, *, follow: Callable[[], object] | None = None,
                 reconciler: Reconciler | None = None, allow_empty: bool = False,
                 registry: RegistryClient | None = None) -> None:
        self.repository = repository
        self.status = status
        self.follow = follow
        self.reconciler = reconciler
        self.allow_empty = allow_empty
        self.registry = registry

    def plan(self, ref: str) -> PlanPreview:
        """What applying `ref` would do now (raises PlanUnavailable)."""
        if self.repository.desired is None:
            raise PlanUnavailable(503, self.repository.last_error or "the models repository has not been fetched yet")
        commit = self._fetch(ref)
        desired = self.repository.load(commit)
        if self.follow is not None:
            self.follow()
        notes: list[str] = []
        base = self._base(self.status.sync.last_applied_commit, notes)
        scope = self._scope(desired, base)
        records = related_records(self.status, scope, references_of(desired, scope))
        servers, holders = self._servers(records)
        sizes = RegistrySizes(self.registry, holders) if self.registry is not None else None
        found = preview(ref, desired, base, servers, records, scope=scope, now=time.time(),
                        allow_empty=self.allow_empty, sizes=sizes, notes=notes)
        if sizes is not None:  # why a pull's size is missing, once per model
            unsized = {a.reference for a in found.actions if a.action in PULLS and a.download_bytes is None}
            found = dataclasses.replace(found, notes=found.notes + tuple(
                f"{reference}: size unknown: {why}" for reference, why in sorted(sizes.unknown.items())
                if reference in unsized))
        return found

    def _fetch(self, ref: str) -> str:
        try:
            return self.repository.repo.fetch_ref(ref)
        except InvalidRef as exc:
            raise PlanUnavailable(400, f"invalid ref: {exc}") from None
        except RefNotFound as exc:
            raise PlanUnavailable(404, str(exc)) from None
        except GitError as exc:
            raise PlanUnavailable(503, str(exc)) from None

    def _scope(self, desired: DesiredState, base: DesiredState | None) -> set[ModelKey] | None:
        """The models whose files differ from the base's, as Git compares the two trees (at the cost
        of the change); by comparing the two states when Git cannot say."""
        if base is None or base.commit is None or desired.commit is None:
            return scope_of(desired, base)
        try:
            return scope_from_paths(self.repository.repo.changed_paths(base.commit, desired.commit), desired, base)
        except GitError:
            return scope_of(desired, base)

    def _base(self, applied: str | None, notes: list[str]) -> DesiredState | None:
        """The desired state the records answer to: the last applied commit's."""
        current = self.repository.desired
        if applied is None:  # nothing applied yet, or not known here (the API alone in Kubernetes mode)
            notes.append("the last applied commit is not known here: planned against the branch's head")
            return current
        if current is not None and current.commit == applied:
            return current
        try:
            return self.repository.load(self.repository.repo.fetch_ref(applied))
        except (GitError, ValueError) as exc:
            notes.append(f"the last applied commit {applied[:12]} could not be read ({exc}): every model is planned")
            return None

    def _servers(self, records: Mapping[ModelKey, ModelRecord]) -> tuple[list[ServerInput], dict[str, BlobHolder | None]]:
        """Every server of the fleet: as the reconciler last listed it with `serve` (or listed now,
        read only, if it has not yet), else as the records say; and, by name, what to ask which blobs
        a server holds (None: its sizes are unknown)."""
        reconciler = self.reconciler
        if reconciler is None:
            seen = self.status.sync.servers or (ServerSeen(SERVER_NAME, ""),)
            note = ("`ollama-gitops api` does not talk to Ollama: what the server holds is as the reconciler's "
                    "records say, and sizes are unknown (ask `serve`)")
            inputs = [ServerInput(ServerView(s.name, s.labels, recorded_observations(records, s.name)), s.url or None,
                                  "records", note) for s in seen]
            return inputs, {}
        inputs, holders = [], {}
        fleet = reconciler.fleet
        for member in fleet:
            observed, source, note = fleet.observed(member.name), "listing", None
            if observed is None:
                try:
                    observed = member.client.installed()  # GET /api/tags: reads only
                except (ServerUnreachable, ModelOperationFailed) as exc:
                    observed, source = recorded_observations(records, member.name), "records"
                    note = f"{exc}: what it holds is as the records say, and sizes are unknown"
            view = ServerView(member.name, member.server.labels, observed, fleet.in_flight(member.name))
            inputs.append(ServerInput(view, member.server.url, source, note))
            holders[member.name] = member.client if source == "listing" and hasattr(member.client, "has_blob") else None
        return inputs, holders  # type: ignore[return-value]
