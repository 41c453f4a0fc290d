"""One reconcile cycle: fetch, load, observe, plan, apply, record.

The order is the data flow: Git -> desired state -> plan (pure, per server) -> Ollama -> status. A
cycle whose commit is already applied, with nothing pending and no drift check due, stops after the
fetch.

The reconciler keeps a fleet of Ollama servers (`ollama/fleet.py`; one server given the old way is
a fleet of one, named `default`). Each server is planned on its own, over the models placed on it
(`placement.py`). Cycles are incremental, per server: a server is listed and every model planned
on it when it is new, relabelled, after a failure there, when a pull found it unreachable, and
everywhere in a fresh process, after a crashed cycle and on `run_cycle(full=True)`; in between, a
cycle plans only the models whose files changed or that have work left, against each server's last
listing kept up to date by the reconciler's own pulls and deletes. A resync (every resync interval)
lists every server, in parallel, and plans there also the models its listing shows changed: drift
made behind the reconciler's back is found then, and an unchanged listing costs no planning. A
server that cannot be listed has nothing pulled or deleted on it and fails the cycle (naming it);
the others go on. What a one-change cycle costs beyond the fetch is in proportion to the change:
the load goes from the last commit by the changed paths and says which models changed, and the
plan, the records copied and the state store's writes cover only those and the models with work left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Protocol

from . import metrics
from .models.desired import DesiredModel, DesiredState, GitLoader, ModelKey, SharedLoader, changed_between
from .fleetstatus import Placements
from .git.repo import GitError, GitRepo
from .ollama.fleet import ClientFactory, Fleet, Listing, Member, listed_entry
from .ollama.inventory import Inventory, InventorySource, Server, StaticInventory, normalize_url
from .ollama.server import ModelOperationFailed, ModelServer, ServerUnreachable
from .models.naming import normalize_reference
from .placement import ServerView, plan_servers
from .plan import Delete, Forget, InstalledModel, MarkReady, Plan, Pull, RecordError, Skip, Suspend, merge_plans
from .ollama.pulls import BACKOFF_BASE, model_names
from .state import (DEFAULT_SERVER, FAILED, FAILED_OUTCOME, PENDING, READY, SUCCEEDED, AppliedSpec, ModelRecord,
                    ModelStatus, StateStore, utc_rfc3339)
from .uptodate import recorded_up_to_date, up_to_date_message

if TYPE_CHECKING:
    from .state import _Edit

log = logging.getLogger("ollama_gitops.reconcile")


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    outcome: str  # Succeeded or Failed
    commit: str | None
    message: str
    plans: Mapping[str, Plan] = field(default_factory=dict)  # per server, sorted by name
    noop: bool = False
    full: bool = False  # every server was listed (a resync)
    everything: bool = False  # and every model planned on every server (see `Reconciler.run_cycle(full=True)`)

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
        # Keys whose files changed since `applied` (None: not known, compare the two states).
        self._since_applied: set[ModelKey] | None = None
        # Recorded models no longer in Git, as of the commit `_unpruned_commit`, and the keys to look
        # at again before it is used (their records or files changed since; None: every key).
        self._unpruned_keys: set[ModelKey] = set()
        self._unpruned_commit: str | None = None
        self._unpruned_dirty: set[ModelKey] | None = None
        self._unpruned_lock = threading.Lock()  # the store's listener runs on the pulls' threads
        store.add_listener(self._records_changed)
        store.sharing = self._strings_to_share
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

    def run_cycle(self, *, dry_run: bool = False, full: bool = False) -> CycleReport:
        """Run one cycle and record how it went. Never raises: a cycle that crashed (a bug, or a fault
        no one foresaw) is recorded as Failed with its error, and the next cycle is a full one.

        `full` lists every server and plans every model on each, whatever was kept (as the first
        cycle of a process, one after a crash, and a dry run do); a resync otherwise lists every
        server but plans only what its listing shows changed."""
        with self._cycle_lock:
            started = time.monotonic()
            try:
                report = self._cycle(dry_run, full)
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
        self.applied, self._since_applied = None, None
        with self._unpruned_lock:
            self._unpruned_dirty = None
        self._converged = False

    # -- the cycle ------------------------------------------------------------------------------------
    def _cycle(self, dry_run: bool, forced: bool) -> CycleReport:
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
        if (self.applied is None and not dry_run and not forced and not change.problems
                and self._recorded_up_to_date(commit, now)):
            self.fleet.adopt_seen(self.store.sync.servers)  # as the last cycle saw them: it asked them last
            return CycleReport(SUCCEEDED, commit, up_to_date_message(commit), noop=True)
        self._leaving |= set(change.removed)
        self._leaving -= set(names)
        self._forget_leaving(dry_run, bool(change.problems))
        due = self.fleet.due()  # to list and plan in full: new, relabelled, failed, found unreachable
        everything = dry_run or forced or self._plan_everything_due()
        resync = everything or self._resync_due(now)
        if everything:
            due = set(names)
        listed = set(names) if resync else due
        touched_in_cluster = self.cluster.changed() if self.cluster is not None and not dry_run else set()
        if (not resync and not due and commit == self.store.sync.last_applied_commit and not touched_in_cluster
                and not change.problems and not self._work_left(now)):
            return CycleReport(SUCCEEDED, commit, up_to_date_message(commit), noop=True)

        kept = {name: self.fleet.observed(name) for name in listed - due}  # what each new listing is compared with
        if listed:
            # The servers are listed while the commit loads: their answers (the servers' time) and
            # git's reading of the blobs overlap the parsing, which a cold start is mostly made of.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing-ahead") as ahead:
                listed_ahead = ahead.submit(self.fleet.list_servers, listed)
                desired = self._load(commit)
                listings = listed_ahead.result()
        else:
            desired, listings = self._load(commit), {}
        if self.applied is None:  # the first cycle: servers recorded by an earlier run may have left since
            # (The records are first read here, once the commit is loaded and the servers listed: a
            # restart's records are then made of their strings, see `_strings_to_share`.)
            self._leaving |= self.store.servers_recorded() - set(names)
            self._forget_leaving(dry_run, bool(change.problems))
        due |= {name for name, before in kept.items() if before is None or listings[name].observed is None}
        incremental = [name for name in names if name not in due]
        scope = None
        drift: dict[str, frozenset[ModelKey]] = {}
        if incremental:
            scope = (self._changed_since_applied(desired) | self.store.unsettled(now) | self._unpruned(desired)
                     | touched_in_cluster)
            drift = self._drift(kept, listings, incremental)
        drifted = scope | set().union(*drift.values()) if scope is not None else None
        records = self.store.records() if due else self.store.records(
            self.store.related(drifted or set(), _references(desired, drifted or set())))
        cluster_problems = []
        if self.cluster is not None and not dry_run:
            cluster_problems = self.cluster.sync(desired, scope)
            desired = self.cluster.amend(desired, drifted)
        plans = plan_servers(desired, [self._view(name, listings[name].observed) for name in names if name in due],
                             records, now=now, allow_empty=self.allow_empty)
        by_drift: dict[frozenset[ModelKey], list[str]] = {}
        for name in incremental:  # servers whose listings changed alike (most often: not at all) plan together
            by_drift.setdefault(drift.get(name, frozenset()), []).append(name)
        for extra, group in by_drift.items():
            assert scope is not None
            plans.update(plan_servers(desired, [self._view(name, self.fleet.observed(name)) for name in group],
                                      records, scope=scope | extra, now=now, allow_empty=self.allow_empty))
        plans = dict(sorted(plans.items()))
        not_listed = {name: self._not_listed(name, listing) for name, listing in listings.items()
                      if listing.observed is None}
        if dry_run:
            problems = list(not_listed.values())
            return CycleReport(FAILED_OUTCOME if problems else SUCCEEDED, commit,
                               "; ".join(problems) or f"would make {merge_plans(list(plans.values())).summary()}",
                               plans, full=True, everything=True)

        if resync:
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
        self.store.sync = replace(self.store.sync, converged=False)  # until this cycle is known to have succeeded
        problems = [*change.problems, *(m for name in sorted(first) for m in first[name]), *cluster_problems,
                    *(m for name in sorted(failures) for m in failures[name])]
        self._converged = not cluster_problems
        listed_all, planned_all = listed == set(names), due == set(names)
        summary = merge_plans(list(plans.values())).summary()
        if problems:
            return CycleReport(FAILED_OUTCOME, commit, "; ".join(problems), plans, full=listed_all,
                               everything=planned_all)
        self.applied, self._since_applied = desired, set()
        if self.store.sync.last_applied_commit != commit:
            metrics.LAST_APPLIED.set(now)
        self.store.sync = replace(self.store.sync, last_applied_commit=commit,
                                  converged=self._converged and not self._unpruned(desired))
        return CycleReport(SUCCEEDED, commit, f"applied {commit[:12]}: {summary}", plans, full=listed_all,
                           everything=planned_all)

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

    def _plan_everything_due(self) -> bool:
        """Is every model to be planned on every server, whatever was kept? In a fresh process, and
        after a cycle that crashed or left the cluster's resources behind."""
        return not self._converged or self.applied is None

    def _resync_due(self, now: float) -> bool:
        """Is every server to be listed this cycle?"""
        last = self.store.sync.last_resync_at
        return last is None or now - last >= self.resync_interval

    def _drift(self, kept: Mapping[str, Mapping[str, InstalledModel] | None], listings: Mapping[str, Listing],
               names: list[str]) -> dict[str, frozenset[ModelKey]]:
        """Per server listed again this cycle, the recorded models whose entry in its new listing
        differs from the kept one (none when the listing is the same: nothing more to plan there).

        That finds all drift. What a server's plan decides of a model depends on its file and its
        record (both in the cycle's scope whenever they changed, or when work is left), on the pulls
        in flight, and on its entry in the listing. The kept listing is the last real one with the
        reconciler's own pulls and deletes applied, and every model was planned against it, so a
        full plan could only decide differently for a model whose entry the server now lists
        otherwise: removed, added or changed behind the reconciler's back."""
        drift = {}
        for name in names:
            listing = listings.get(name)
            before, after = kept.get(name), listing.observed if listing is not None else None
            if before is None or after is None:
                continue
            if listing is not None and listing.unchanged:  # the fleet knows which entries differ, unread
                references: frozenset[str] | set[str] = listing.drifted
            elif before == after:
                continue
            else:
                references = {ref for ref in before.keys() | after.keys()
                              if listed_entry(before.get(ref)) != listed_entry(after.get(ref))}
            if references:
                drift[name] = frozenset(self.store.related((), references))
        return drift

    def _recorded_up_to_date(self, commit: str, now: float) -> bool:
        """Does the recorded state say there is nothing to do, for a process with nothing in memory
        (`reconcile --once`, or a restart)? Yes when the fetched commit is the recorded last applied
        one, the last cycle succeeded and left nothing to prune or retry (`converged`), its resync
        is not due yet, the servers are those it kept (names, URLs and labels) and no record has
        work left (a pull to start or to retry). Then the cycle ends after the fetch, as the running
        loop's no-op does: no model file is read, no server asked. It is safe because it is exactly
        what the loop would conclude: the next resync is still due at `last_resync_at` plus the
        interval, and anything else (a commit, a failure, a server, a record) makes a full cycle.
        The records are not read when `sync.json` says none had work left when it was saved and
        nothing was written to them since (as `reconcile --once` leaves them): then, as after any
        successful cycle, every record's servers are among those kept. Not in Kubernetes mode, whose
        records are the resources (a change there is a reason to act)."""
        sync = self.store.sync
        if self.cluster is not None or not recorded_up_to_date(sync, commit, now, self.resync_interval,
                                                               self.fleet.seen()):
            return False
        if self.store.settled_on_disk():
            return True
        # Records lost to damage (said at their load) are found again only by planning every model.
        return (not self.store.unsettled(now) and not self.store.mended
                and self.store.servers_recorded() <= {s.name for s in sync.servers})

    def _forget_leaving(self, dry_run: bool, problems: bool) -> None:
        """Forget the servers gone from the inventory. An inventory that could not be read as it is
        now (`problems`: discovery refused by the API server, say) is no news of a server leaving:
        what ollama-gitops pulled there is forgotten only once the inventory is read again and the
        server is still not in it."""
        if self._leaving and not dry_run and not problems:
            self._forget_servers(tuple(sorted(self._leaving)))
            self._leaving.clear()

    def _strings_to_share(self) -> Callable[[ModelKey, ModelRecord], tuple[ModelKey, ModelRecord]] | None:
        """For the store (`StateStore.sharing`), as it reads records from the state directory (in the
        first cycle, or before when the API asks for one): what makes each of the loaded commit's
        key and path and of the servers' kept listings' reference, digest and size, where the
        record says the same. A cold start's records are made of those very objects; a restart's
        would otherwise hold a copy of each beside them. (Read before the servers are listed, the
        listing takes the records' strings instead: `Fleet`.)"""
        # (`serve`: the loader the API shares may have loaded a newer commit, for a write, since.)
        shared = self.shared_loader.last if self.shared_loader is not None else None
        desired = shared if shared is not None else self.desired
        listings = {name: observed for name in self.fleet.names if (observed := self.fleet.observed(name))}
        if (desired is None or not desired.models) and not listings:
            return None
        return partial(_shared_record, desired.models if desired is not None else {}, listings)

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
        """Recorded models no longer in Git (e.g. their pull was in flight when the file went).

        Kept up to date from what changed: a key can only join the set when its file goes (a load
        says which) or its record is written (the store's listener says which), so only those
        and the set itself are looked at again; every key when either is not known."""
        with self._unpruned_lock:
            dirty, self._unpruned_dirty = self._unpruned_dirty, set()
        if dirty is None or desired.commit != self._unpruned_commit:
            candidates: Iterable[ModelKey] = self.store.keys()
        else:
            candidates = self._unpruned_keys | dirty
        self._unpruned_commit = desired.commit
        self._unpruned_keys = {key for key in candidates if key not in desired.models and self.store.has(key)
                               and not desired.is_unreadable(key)}
        return set(self._unpruned_keys)

    def _records_changed(self, keys: frozenset[ModelKey] | None) -> None:
        with self._unpruned_lock:
            if self._unpruned_dirty is not None:
                self._unpruned_dirty = None if keys is None else self._unpruned_dirty | keys

    def _changed_since_applied(self, desired: DesiredState) -> set[ModelKey]:
        assert self.applied is not None
        if self._since_applied is not None:
            return set(self._since_applied)
        return changed_between(self.applied, desired)

    def _load(self, commit: str) -> DesiredState:
        previous = self.desired
        if self.shared_loader is not None:
            self.desired = self.shared_loader.load(commit, source=self.repo)  # fetched into this clone
        else:
            if self._loader is None or self._loader_generation != self.repo.generation:
                self._loader, self._loader_generation = GitLoader(self.repo.repo), self.repo.generation  # a new clone
            self.desired = self._loader.load(commit)
        if self.desired is not previous:
            self._follow_changes(previous, self.desired)
        # Every problem is logged once, when a commit brings it (status shows them all, always).
        known = set(previous.problems) if previous is not None else set()
        for problem in self.desired.problems:
            if problem not in known:
                log.warning("action=problem commit=%s path=%s line=%s message=%r", commit[:12], problem.path,
                            problem.line or "-", problem.message)
        return self.desired

    def _follow_changes(self, previous: DesiredState | None, desired: DesiredState) -> None:
        """Carry what the load says changed (since the state before) into what is kept since then."""
        changes = desired.changes
        known = changes is not None and previous is not None and changes.base == previous.commit
        if self._since_applied is not None:
            self._since_applied = self._since_applied | changes.keys if known else None  # type: ignore[union-attr]
        with self._unpruned_lock:
            if known and previous is not None and self._unpruned_commit == previous.commit:
                self._unpruned_commit = desired.commit
                if self._unpruned_dirty is not None:
                    self._unpruned_dirty |= changes.keys  # type: ignore[union-attr]
            else:
                self._unpruned_dirty = None

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
        outcomes: list[Callable[[_Edit], None]] = []  # what the deletes did, to record
        for name, the_plan in plans.items():
            member = self.fleet.member(name)
            assert member is not None
            lines = _Log(commit, name)
            for action in the_plan.actions:
                if isinstance(action, Pull):
                    if member.pulls.submit(action, commit):
                        lines.add("pull", action.keys, action.reference, action.reason)
                elif isinstance(action, Delete):
                    failure = self._delete(member, action, lines, outcomes)
                    if failure:
                        failures.setdefault(name, []).append(self._on(name, failure))
            if the_plan.refused:
                log.warning("action=refused commit=%s server=%s reason=%r", commit[:12], name, the_plan.refused)
        if outcomes:
            # Every delete's outcome in one edit (one journal append, one fsync), each recorded only
            # after Ollama answered: a crash before this repeats the deletes, never loses one.
            with self.store.editing() as edit:
                for outcome in outcomes:
                    outcome(edit)
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
            else:  # (read from the state directory, it holds its own strings: it takes the plan's)
                edit.share(key, spec)
            if name not in record.servers:
                edit.place(key, name, new)
        for action in the_plan.actions:
            if isinstance(action, MarkReady):
                status = edit.status(action.key, name)
                assert status is not None
                _mark_ready(status, action, lines.commit)
                # Ollama is not changed: at INFO, a cold start over N models found in Ollama would log
                # N lines. The cycle's line counts them ("N already in Ollama").
                lines.add("ready", action.key, action.installed.reference, action.reason, level=logging.DEBUG)
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

    def _delete(self, member: Member, action: Delete, lines: _Log, outcomes: list[Callable[[_Edit], None]]
                ) -> str | None:
        """Delete on Ollama; what to record of it is added to `outcomes`. Returns why it failed."""
        try:
            member.client.delete(action.reference)
        except (ModelOperationFailed, ServerUnreachable) as exc:
            message = f"could not delete {action.reference}: {exc}"
            outcomes.append(partial(_set_error, keys=action.keys, server=member.name, message=message))
            lines.add("failed", action.keys, action.reference, message, level=logging.WARNING)
            return message
        self.fleet.deleted(member.name, normalize_reference(action.reference))
        # Forget only after Ollama confirmed: a crash in between repeats the delete, never loses it.
        outcomes.append(partial(_drop, keys=action.keys, server=member.name))
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
            # Not fsynced: the journal (fsynced by every edit, before this) is what must survive a
            # crash. sync.json is a summary replaced atomically; a crash may leave the one before it
            # (whose last applied commit is older, and whose journal_seq is never ahead of the
            # journal, so nothing reads as lost) or, on a filesystem that lost the new file's
            # data, a damaged one that start-up replaces: either way the next start runs a full
            # cycle, which is the first cycle of a process anyway. One fsync per cycle at most.
            self.store.save_sync(sync, durable=False)
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


def _set_error(edit: _Edit, *, keys: tuple[ModelKey, ...], server: str, message: str) -> None:
    for key in keys:
        status = edit.status(key, server)
        if status is not None:
            status.error = message[:1024]


def _drop(edit: _Edit, *, keys: tuple[ModelKey, ...], server: str) -> None:
    for key in keys:
        edit.drop(key, server)


def _shared_record(models: Mapping[ModelKey, DesiredModel], listings: Mapping[str, Mapping[str, InstalledModel]],
                   key: ModelKey, record: ModelRecord) -> tuple[ModelKey, ModelRecord]:
    """`key` and `record`, just read, made of the loaded model's key and path and of each server's
    listing's reference, digest and size where they are equal (see `Reconciler._strings_to_share`).
    The record's statuses are its own still (nothing has it yet): changed in place."""
    spec = record.spec
    reference, path = spec.reference, spec.path
    model = models.get(key)
    if model is not None:
        key = model.key
        path = model.path if model.path == path else path
    normal = None
    for server, status in record.servers.items():
        listing = listings.get(server)
        if listing is None:
            continue
        normal = normal or normalize_reference(spec.reference)
        entry = listing.get(normal)
        if entry is None:
            continue
        reference = entry.reference if entry.reference == reference else reference
        status.digest = entry.digest if status.digest == entry.digest else status.digest
        status.size = entry.size if status.size == entry.size else status.size
    if reference is spec.reference and path is spec.path:
        return key, record
    return key, ModelRecord(AppliedSpec(reference, path, spec.prune, spec.suspend, spec.refresh_requested_at),
                            record.servers)


def _references(desired: DesiredState, keys: set[ModelKey]) -> list[str]:
    return [desired.models[k].reference for k in keys if k in desired.models]


def _mark_ready(status: ModelStatus, action: MarkReady, commit: str) -> None:
    installed = action.installed
    status.state, status.error, status.failures, status.next_retry_at = READY, action.error, 0, None
    # "" (a listing kept since a pull, which gave no digest) is recorded as unknown, as the pull did.
    status.size, status.digest, status.applied_commit = installed.size, installed.digest or None, commit
    status.owned = status.owned or action.owned
    if status.last_pull_time is None and installed.modified is not None:
        status.last_pull_time = _seed_time(installed.modified)


# Cached: a cold start marks every model Ready, and those pulled in the same second share one string.
_seed_time = lru_cache(maxsize=4096)(utc_rfc3339)


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
        if not log.isEnabledFor(level):  # a cold start adds a DEBUG line per model: not even formatted
            return
        # A ModelKey is a tuple too: joining its fields would name it `default,gemma3-1b`.
        shown = str(keys) if isinstance(keys, ModelKey) else model_names(keys)
        log.log(level, "action=%s models=%s reference=%s commit=%s server=%s reason=%r", action, shown,
                reference or "-", self._commit, self._server, reason)
