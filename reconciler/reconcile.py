"""One reconcile cycle: fetch, load, observe, plan, apply, record.

The order is the data flow: Git -> desired state -> plan (pure, per server) -> Ollama -> status. A
cycle whose commit is already applied, with nothing pending and no drift check due, stops after the
fetch.

The reconciler keeps a fleet of Ollama servers (`ollama/fleet.py`; one server given the old way is
a fleet of one, named `default`). Each server is planned on its own, over the models placed on it
(`placement.py`). Cycles are incremental, per server: a server is listed and every model planned
on it when it is new, after a failure there, when a pull found it unreachable, and on every resync
(every server, in parallel); in between, a cycle plans only the models whose files changed or that
have work left, against each server's last listing kept up to date by the reconciler's own pulls
and deletes. Drift made behind its back is found by the next resync. A server that cannot be
listed has nothing pulled or deleted on it and fails the cycle (naming it); the others go on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol
from datetime import datetime, timezone

from . import metrics
from .models.desired import DesiredState, GitLoader, ModelKey, SharedLoader, changed_between
from .fleetstatus import Placements
from .git.repo import GitError, GitRepo
from .ollama.fleet import ClientFactory, Fleet, Listing, Member
from .ollama.inventory import Inventory, InventorySource, Server, StaticInventory, normalize_url
from .ollama.server import ModelOperationFailed, ModelServer, ServerUnreachable
from .models.naming import normalize_reference
from .placement import ServerView, plan_servers
from .plan import Delete, Forget, InstalledModel, MarkReady, Plan, Pull, RecordError, Skip, Suspend, merge_plans
from .ollama.pulls import BACKOFF_BASE, model_names
from .state import DEFAULT_SERVER, FAILED, PENDING, READY, ModelRecord, ModelStatus, StateStore, utc_rfc3339

if TYPE_CHECKING:
    from .state import _Edit

log = logging.getLogger("ollama_gitops.reconcile")

SUCCEEDED, FAILED_OUTCOME = "Succeeded", "Failed"


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    outcome: str  # Succeeded or Failed
    commit: str | None
    message: str
    plans: Mapping[str, Plan] = field(default_factory=dict)  # per server, sorted by name
    noop: bool = False
    full: bool = False  # every server was listed and every model planned

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED

    @property
    def plan(self) -> Plan | None:
        """The servers' plans as one (a single server's, as it is): what was done, over the fleet."""
        if not self.plans:
            return None
        return merge_plans(list(self.plans.values()))


class ClusterStep(Protocol):
    """Kubernetes mode's extra step (see `cluster.sync.ClusterSync`)."""

    def changed(self) -> set[ModelKey]: ...

    def sync(self, desired: DesiredState, scope: set[ModelKey] | None) -> list[str]: ...

    def amend(self, desired: DesiredState, scope: set[ModelKey] | None) -> DesiredState: ...


class Reconciler:
    """Keeps a fleet of Ollama servers in line with one branch of a models repository."""

    def __init__(
        self,
        repo: GitRepo,
        servers: ModelServer | InventorySource,
        store: StateStore,
        *,
        concurrency: int = 2,
        resync_interval: float = 300.0,
        allow_empty: bool = False,
        clock: Callable[[], float] = time.time,
        on_pull_finished: Callable[[float | None], None] | None = None,
        cluster: ClusterStep | None = None,
        backoff_base: float = BACKOFF_BASE,
        client_factory: ClientFactory | None = None,
    ) -> None:
        """`servers` is the inventory to follow (with `client_factory` making each server's client,
        `OllamaServer(url)` by default), or one server's client: a fleet of one, named `default`.
        `concurrency` is per server. `on_pull_finished(retry_at)` runs after each pull; `retry_at`
        (a `clock()` time) when it failed, for a cycle to be run when its retry is due."""
        if not isinstance(servers, InventorySource):
            client = servers
            servers = StaticInventory(Inventory((Server(DEFAULT_SERVER, normalize_url(client.url)),)))
            client_factory = lambda server: client  # noqa: E731
        self.repo = repo
        self.store = store
        self.resync_interval = resync_interval
        self.allow_empty = allow_empty
        self._clock = clock
        self._loader: GitLoader | None = None
        self._loader_generation = 0  # the clone's generation the loader reads
        self.shared_loader: SharedLoader | None = None  # `serve`: one loader with the API, in place of its own
        self._cycle_lock = threading.Lock()
        self._converged = False  # did the last cycle leave nothing to retry (beyond a server's own)?
        self.applied: DesiredState | None = None  # the desired state of the last applied cycle
        self.desired: DesiredState | None = None  # the desired state of the last loaded commit
        self._on_pull_finished = on_pull_finished
        self.fleet = Fleet(servers, store, client_factory=client_factory, concurrency=concurrency, clock=clock,
                           on_pull_finished=self._pull_finished, backoff_base=backoff_base)
        self.cluster = cluster  # Kubernetes mode: Git to resources, before Ollama
        self.leading: Callable[[], bool] = lambda: True  # Kubernetes mode: holds the Lease
        self._unpruned_cache: tuple[object, set[ModelKey]] = (None, set())
        self._leaving: set[str] = set()  # servers gone from the inventory, not yet forgotten

    def placements(self) -> Placements | None:
        """Which servers each model of the last loaded commit is on in the current inventory (None
        before a commit is loaded or while no server is known): for writers of a model's whole."""
        desired = self.desired
        return Placements(desired, self.fleet.seen()) if desired is not None and self.fleet.names else None

    @property
    def pulls(self) -> Fleet:
        """The pulls of every server (`wait()` for them all)."""
        return self.fleet

    def run_cycle(self, *, dry_run: bool = False) -> CycleReport:
        """Run one cycle and record how it went. Never raises: a cycle that crashed (a bug, or a fault
        no one foresaw) is recorded as Failed with its error, and the next cycle is a full one."""
        with self._cycle_lock:
            started = time.monotonic()
            try:
                report = self._cycle(dry_run)
            except Exception as exc:
                log.exception("action=cycle-crashed")
                self._converged = False
                report = CycleReport(FAILED_OUTCOME, self.store.sync.last_fetched_commit,
                                     f"cycle crashed: {type(exc).__name__}: {exc}")
            if not dry_run:
                self._record_cycle(report, time.monotonic() - started)
            return report

    def close(self) -> None:
        """Stop taking pulls and let go of the clone and, unless a pull still uses them, the
        connections to Ollama (what a pull in flight uses is freed when it ends or the process does)."""
        self.fleet.shutdown()
        self.repo.close()

    def forget_observations(self) -> None:
        """Forget what earlier cycles saw and applied (the store was read again, e.g. by a replica that
        starts leading): the next cycle lists every server and plans every model."""
        self.fleet.forget_listings()
        self.applied = None
        self._converged = False

    # -- the cycle ------------------------------------------------------------------------------------
    def _cycle(self, dry_run: bool) -> CycleReport:
        if not dry_run and not self.leading():
            return CycleReport(SUCCEEDED, None, "not the leader; standing by", noop=True)
        try:
            commit = self.repo.fetch()
        except GitError as exc:
            log.warning("action=fetch-failed error=%r", str(exc))
            return CycleReport(FAILED_OUTCOME, self.store.sync.last_fetched_commit, f"{exc}; nothing changed")
        self.store.sync = replace(self.store.sync, last_fetched_commit=commit)
        now = self._clock()
        change = self.fleet.refresh()
        names = self.fleet.names
        self._leaving |= set(change.removed)
        if self.applied is None:  # the first cycle: servers recorded by an earlier run may have left since
            self._leaving |= {name for record in self.store.records().values() for name in record.servers}
        self._leaving -= set(names)
        # An inventory that could not be read as it is now (discovery refused by the API server, say)
        # is no news of a server leaving: what ollama-gitops pulled there is forgotten only once the
        # inventory is read again and the server is still not in it.
        if self._leaving and not dry_run and not change.problems:
            self._forget_servers(tuple(sorted(self._leaving)))
            self._leaving.clear()
        due = self.fleet.due()
        full = dry_run or self._resync_due(now)
        if full:
            due = set(names)
        touched_in_cluster = self.cluster.changed() if self.cluster is not None and not dry_run else set()
        if (not full and not due and commit == self.store.sync.last_applied_commit and not touched_in_cluster
                and not change.problems and not self._work_left(now)):
            return CycleReport(SUCCEEDED, commit, f"up to date at {commit[:12]}", noop=True)

        desired = self._load(commit)
        listings = self.fleet.list_servers(due)
        incremental = [name for name in names if name not in due]
        scope = None
        if incremental:
            scope = (self._changed_since_applied(desired) | self.store.unsettled(now) | self._unpruned(desired)
                     | touched_in_cluster)
        records = self.store.records() if due else self.store.records(
            self.store.related(scope or set(), _references(desired, scope or set())))
        cluster_problems = []
        if self.cluster is not None and not dry_run:
            cluster_problems = self.cluster.sync(desired, scope)
            desired = self.cluster.amend(desired, scope)
        plans = plan_servers(desired, [self._view(name, listings[name].observed) for name in names if name in due],
                             records, now=now, allow_empty=self.allow_empty)
        plans.update(plan_servers(desired, [self._view(name, self.fleet.observed(name)) for name in incremental],
                                  records, scope=scope, now=now, allow_empty=self.allow_empty))
        plans = dict(sorted(plans.items()))
        not_listed = {name: self._not_listed(name, listing) for name, listing in listings.items()
                      if listing.observed is None}
        if dry_run:
            problems = list(not_listed.values())
            return CycleReport(FAILED_OUTCOME if problems else SUCCEEDED, commit,
                               "; ".join(problems) or f"would make {merge_plans(list(plans.values())).summary()}",
                               plans, full=True)

        if full:
            self.store.sync = replace(self.store.sync, last_resync_at=now)
        if not self.leading():  # lost the Lease while planning: another replica applies now
            return CycleReport(FAILED_OUTCOME, commit, "lost leadership before applying; nothing changed", plans)
        failures = self._apply(plans, commit, not_listed, desired)
        # In the order a single server always said them: not listed, refused, the cluster's, deletes.
        first = {name: [message] for name, message in not_listed.items()}
        for name, the_plan in plans.items():
            if the_plan.refused:
                first.setdefault(name, []).append(self._on(name, the_plan.refused))
        self.fleet.mark({*first, *failures})  # a server with a problem is listed again next cycle
        problems = [*change.problems, *(m for name in sorted(first) for m in first[name]), *cluster_problems,
                    *(m for name in sorted(failures) for m in failures[name])]
        self._converged = not cluster_problems
        listed_all = set(due) == set(names)
        summary = merge_plans(list(plans.values())).summary()
        if problems:
            return CycleReport(FAILED_OUTCOME, commit, "; ".join(problems), plans, full=listed_all)
        self.applied = desired
        if self.store.sync.last_applied_commit != commit:
            metrics.LAST_APPLIED.set(now)
        self.store.sync = replace(self.store.sync, last_applied_commit=commit)
        return CycleReport(SUCCEEDED, commit, f"applied {commit[:12]}: {summary}", plans, full=listed_all)

    def _view(self, name: str, observed: Mapping[str, InstalledModel] | None) -> ServerView:
        member = self.fleet.member(name)
        assert member is not None
        return ServerView(name, member.server.labels, observed, member.pulls.in_flight())

    def _on(self, name: str, message: str) -> str:
        """A problem on one server, as the cycle says it: named, unless the server is the lone `default`
        (whose messages are as they were before fleets)."""
        return message if self.fleet.lone_default else f"server {name}: {message}"

    def _not_listed(self, name: str, listing: Listing) -> str:
        if self.fleet.lone_default:
            return listing.error or "not listed"
        what = "unreachable" if listing.unreachable else "could not be listed"
        return f"server {name} {what}: {listing.error}"

    def _resync_due(self, now: float) -> bool:
        """Is every server to be listed (and every model planned) this cycle?"""
        last = self.store.sync.last_resync_at
        return not self._converged or self.applied is None or last is None or now - last >= self.resync_interval

    def _forget_servers(self, names: tuple[str, ...]) -> None:
        """Servers that left the inventory (since the last cycle, or since the last run): their
        entries go from every record (ownership there with them); nothing is deleted on them."""
        gone = set(names)
        keys = [key for key, record in self.store.records().items() if gone & record.servers.keys()]
        with self.store.editing() as edit:
            for key in keys:
                for name in names:
                    edit.drop(key, name)
        log.info("action=servers-forgotten servers=%s models=%d", ",".join(names), len(keys))

    def _work_left(self, now: float) -> bool:
        assert self.applied is not None
        return bool(self.store.unsettled(now)) or bool(self._unpruned(self.applied))

    def _unpruned(self, desired: DesiredState) -> set[ModelKey]:
        """Recorded models no longer in Git (e.g. their pull was in flight when the file went)."""
        cache_key = (self.store.version, desired.commit)
        if self._unpruned_cache[0] != cache_key:
            gone = self.store.keys() - desired.models.keys() - desired.unreadable
            if desired.any_unreadable:  # a namespace folder (or models/) cannot be read: its models stay
                gone = {key for key in gone if not desired.is_unreadable(key)}
            self._unpruned_cache = (cache_key, set(gone))
        return set(self._unpruned_cache[1])

    def _changed_since_applied(self, desired: DesiredState) -> set[ModelKey]:
        assert self.applied is not None
        return changed_between(self.applied, desired)

    def _load(self, commit: str) -> DesiredState:
        loader: GitLoader | SharedLoader | None = self.shared_loader
        if loader is None:
            if self._loader is None or self._loader_generation != self.repo.generation:
                self._loader, self._loader_generation = GitLoader(self.repo.repo), self.repo.generation  # a new clone
            loader = self._loader
        previous, self.desired = self.desired, loader.load(commit)
        # Every problem is logged once, when a commit brings it (status shows them all, always).
        known = set(previous.problems) if previous is not None else set()
        for problem in self.desired.problems:
            if problem not in known:
                log.warning("action=problem commit=%s path=%s line=%s message=%r", commit[:12], problem.path,
                            problem.line or "-", problem.message)
        return self.desired

    def _pull_finished(self, server: str, reference: str, installed: InstalledModel | None,
                       retry_at: float | None) -> None:
        if self._on_pull_finished is not None:
            self._on_pull_finished(retry_at)

    # -- applying ----------------------------------------------------------------------------------------
    def _apply(self, plans: Mapping[str, Plan], commit: str, not_listed: Mapping[str, str],
               desired: DesiredState) -> dict[str, list[str]]:
        """Carry the plans out; returns, per server, messages for what could not be done (to retry
        next cycle)."""
        with self.store.editing() as edit:
            for name, the_plan in plans.items():
                self._record(edit, name, the_plan, _Log(commit, name))
            for name, message in not_listed.items():
                if not self.fleet.lone_default:
                    _keep_with_error(edit, name, message, desired)
        failures: dict[str, list[str]] = {}
        for name, the_plan in plans.items():
            member = self.fleet.member(name)
            assert member is not None
            lines = _Log(commit, name)
            for action in the_plan.actions:
                if isinstance(action, Pull):
                    if member.pulls.submit(action, commit):
                        lines.add("pull", action.keys, action.reference, action.reason)
                elif isinstance(action, Delete):
                    failure = self._delete(member, action, lines)
                    if failure:
                        failures.setdefault(name, []).append(self._on(name, failure))
            if the_plan.refused:
                log.warning("action=refused commit=%s server=%s reason=%r", commit[:12], name, the_plan.refused)
        return failures

    @staticmethod
    def _record(edit: _Edit, name: str, the_plan: Plan, lines: _Log) -> None:
        """Record one server's plan: each planned model's spec and entry there, then what the plan
        says of them (pulls and deletes are Ollama's, done after)."""
        for key, spec in the_plan.specs.items():
            record = edit.get(key)
            # A refresh value already in a new file is history: the model is pulled or found anyway.
            new = ModelStatus(PENDING, refresh_handled=spec.refresh_requested_at)
            if record is None:
                edit.put(key, ModelRecord(spec, {name: new}))
                continue
            if record.spec != spec:
                edit.put(key, ModelRecord(spec, record.servers))
            if name not in record.servers:
                edit.place(key, name, new)
        for action in the_plan.actions:
            if isinstance(action, MarkReady):
                status = edit.status(action.key, name)
                assert status is not None
                _mark_ready(status, action.installed, action.owned, lines.commit)
                lines.add("ready", action.key, action.installed.reference, action.reason)
            elif isinstance(action, RecordError):
                status = edit.status(action.key, name)
                if status is not None:
                    status.error = action.message[:1024]
                lines.add("skipped", action.key, None, action.message)
            elif isinstance(action, Suspend):
                status = edit.status(action.key, name)
                if status is not None:
                    status.error, status.failures, status.next_retry_at = None, 0, None
                    if status.state == FAILED:
                        status.state = PENDING
                lines.add("suspended", action.key, None, action.reason)
            elif isinstance(action, Forget):
                edit.drop(action.key, name)
                lines.add("forgotten", action.key, action.reference, action.reason)
            elif isinstance(action, Skip):
                # Not an action: at INFO, Ollama down would log a line per model per cycle
                # besides the cycle's own line saying so.
                lines.add("skipped", action.key, None, action.reason, level=logging.DEBUG)

    def _delete(self, member: Member, action: Delete, lines: _Log) -> str | None:
        try:
            member.client.delete(action.reference)
        except (ModelOperationFailed, ServerUnreachable) as exc:
            message = f"could not delete {action.reference}: {exc}"
            with self.store.editing() as edit:
                for key in action.keys:
                    status = edit.status(key, member.name)
                    if status is not None:
                        status.error = message[:1024]
            lines.add("failed", action.keys, action.reference, message, level=logging.WARNING)
            return message
        self.fleet.deleted(member.name, normalize_reference(action.reference))
        # Forget only after Ollama confirmed: a crash in between repeats the delete, never loses it.
        with self.store.editing() as edit:
            for key in action.keys:
                edit.drop(key, member.name)
        lines.add("deleted", action.keys, action.reference, action.reason)
        return None

    def _record_cycle(self, report: CycleReport, seconds: float) -> None:
        desired = self.desired
        sync = replace(
            self.store.sync,
            last_cycle_at=utc_rfc3339(self._clock()),
            last_cycle_duration=round(seconds, 6),
            last_cycle_outcome=report.outcome,
            last_cycle_message=report.message,
            problems=desired.problems if desired is not None else self.store.sync.problems,
            servers=self.fleet.seen(),
        )
        try:
            self.store.save_sync(sync, durable=not report.noop)  # a no-op only moves the cycle time
        except OSError as exc:  # still recorded in memory, so status and metrics say how the cycle went
            log.error("action=save-sync-failed error=%r", str(exc))
        metrics.CYCLES.labels("noop" if report.noop else report.outcome.lower()).inc()
        metrics.CYCLE_DURATION.observe(seconds)
        metrics.LAST_CYCLE.set(self._clock())
        metrics.FILE_PROBLEMS.set(len(sync.problems))
        if not report.noop:
            level = logging.INFO if report.ok else logging.WARNING
            log.log(level, "action=cycle outcome=%s commit=%s full=%s seconds=%.3f message=%r", report.outcome,
                    (report.commit or "-")[:12], report.full, seconds, report.message)


def _references(desired: DesiredState, keys: set[ModelKey]) -> list[str]:
    return [desired.models[k].reference for k in keys if k in desired.models]


def _mark_ready(status: ModelStatus, installed: InstalledModel, owned: bool, commit: str) -> None:
    status.state, status.error, status.failures, status.next_retry_at = READY, None, 0, None
    status.size, status.digest, status.applied_commit = installed.size, installed.digest, commit
    status.owned = status.owned or owned
    if status.last_pull_time is None and installed.modified_at:
        status.last_pull_time = _seconds_z(installed.modified_at)


def _seconds_z(timestamp: str) -> str | None:
    """Ollama's `modified_at` (nanoseconds, any offset) as the seed writes times; None if unreadable."""
    # Python 3.10's fromisoformat takes neither `Z` nor more than six fractional digits.
    cleaned = re.sub(r"(\.\d{1,6})\d*", r"\1", timestamp.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keep_with_error(edit: _Edit, server: str, message: str, desired: DesiredState) -> None:
    """A server that could not be listed: its models there keep their last state, with the error
    naming it (a suspended model shows none, a broken file's model its file's)."""
    for key in edit.keys():
        record = edit.get(key)
        if record is None or server not in record.servers or record.spec.suspend or desired.is_unreadable(key):
            continue
        if record.servers[server].error != message[:1024]:
            status = edit.status(key, server)
            assert status is not None
            status.error = message[:1024]


class _Log:
    """One structured log line per action, each with the commit and the server."""

    def __init__(self, commit: str, server: str) -> None:
        self.commit = commit
        self._commit = commit[:12]
        self._server = server

    def add(self, action: str, keys: ModelKey | tuple[ModelKey, ...], reference: str | None, reason: str,
            level: int = logging.INFO) -> None:
        # A ModelKey is a tuple too: joining its fields would name it `default,gemma3-1b`.
        shown = str(keys) if isinstance(keys, ModelKey) else model_names(keys)
        log.log(level, "action=%s models=%s reference=%s commit=%s server=%s reason=%r", action, shown,
                reference or "-", self._commit, self._server, reason)
