"""One reconcile cycle: fetch, load, observe, plan, apply, record.

The order is the data flow: Git -> desired state -> plan (pure) -> Ollama -> status. A cycle whose
commit is already applied, with nothing pending and no drift check due, stops after the fetch.

Cycles are incremental. A full cycle (the first one, after a failure, and every resync interval)
lists Ollama and plans every model; in between, a cycle plans only the models whose files changed
or that have work left, against the last listing kept up to date by the reconciler's own pulls and
deletes. Drift made behind its back is found by the next full cycle.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol
from datetime import datetime, timezone

from . import metrics
from .models.desired import DesiredState, GitLoader, ModelKey, changed_between
from .git.repo import GitError, GitRepo
from .ollama.server import ModelOperationFailed, ModelServer, ServerUnreachable
from .models.naming import normalize_reference
from .plan import Delete, Forget, InstalledModel, MarkReady, Plan, Pull, RecordError, Skip, Suspend, plan
from .ollama.pulls import BACKOFF_BASE, PullPool, model_names
from .state import FAILED, PENDING, READY, ModelRecord, ModelStatus, StateStore, utc_rfc3339

log = logging.getLogger("ollama_gitops.reconcile")

SUCCEEDED, FAILED_OUTCOME = "Succeeded", "Failed"


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    outcome: str  # Succeeded or Failed
    commit: str | None
    message: str
    plan: Plan | None = None
    noop: bool = False
    full: bool = False  # Ollama was listed and every model planned

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED


class ClusterStep(Protocol):
    """Kubernetes mode's extra step (see `cluster.sync.ClusterSync`)."""

    def changed(self) -> set[ModelKey]: ...

    def sync(self, desired: DesiredState, scope: set[ModelKey] | None) -> list[str]: ...

    def amend(self, desired: DesiredState, scope: set[ModelKey] | None) -> DesiredState: ...


class Reconciler:
    """Keeps one Ollama server in line with one branch of a models repository."""

    def __init__(
        self,
        repo: GitRepo,
        server: ModelServer,
        store: StateStore,
        *,
        concurrency: int = 2,
        resync_interval: float = 300.0,
        allow_empty: bool = False,
        clock: Callable[[], float] = time.time,
        on_pull_finished: Callable[[float | None], None] | None = None,
        cluster: ClusterStep | None = None,
        backoff_base: float = BACKOFF_BASE,
    ) -> None:
        """`on_pull_finished(retry_at)` runs after each pull; `retry_at` (a `clock()` time) when it
        failed, for a cycle to be run when its retry is due."""
        self.repo = repo
        self.server = server
        self.store = store
        self.resync_interval = resync_interval
        self.allow_empty = allow_empty
        self._clock = clock
        self._loader: GitLoader | None = None
        self._loader_generation = 0  # the clone's generation the loader reads
        self._cycle_lock = threading.Lock()
        self._converged = False  # did the last cycle leave nothing to retry?
        self._observed: dict[str, InstalledModel] | None = None  # the last listing, kept current
        self._observed_lock = threading.Lock()
        self.applied: DesiredState | None = None  # the desired state of the last applied cycle
        self.desired: DesiredState | None = None  # the desired state of the last loaded commit
        self.pulls = PullPool(server, store, concurrency=concurrency, clock=clock,
                              on_finished=self._pull_finished, backoff_base=backoff_base)
        self._on_pull_finished = on_pull_finished
        self.cluster = cluster  # Kubernetes mode: Git to resources, before Ollama
        self.leading: Callable[[], bool] = lambda: True  # Kubernetes mode: holds the Lease
        self._unpruned_cache: tuple[object, set[ModelKey]] = (None, set())

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
        self.pulls.shutdown(wait=False)
        self.repo.close()
        close_server = getattr(self.server, "close", None)
        if close_server is not None and not self.pulls.in_flight():
            close_server()

    def forget_observations(self) -> None:
        """Forget what earlier cycles saw and applied (the store was read again, e.g. by a replica that
        starts leading): the next cycle lists Ollama and plans every model."""
        with self._observed_lock:
            self._observed = None
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
        full = dry_run or self._full_cycle_due(now)
        touched_in_cluster = self.cluster.changed() if self.cluster is not None and not dry_run else set()
        if (not full and commit == self.store.sync.last_applied_commit and not self._work_left(now)
                and not touched_in_cluster):
            return CycleReport(SUCCEEDED, commit, f"up to date at {commit[:12]}", noop=True)

        desired = self._load(commit)
        unreachable = None
        if full:
            try:
                observed = self.server.installed()
            except (ServerUnreachable, ModelOperationFailed) as exc:
                observed, unreachable = None, str(exc)
            scope = None
            records = self.store.records()
        else:
            observed = self._current_observed()
            scope = (self._changed_since_applied(desired) | self.store.unsettled(now) | self._unpruned(desired)
                     | touched_in_cluster)
            records = self.store.records(self.store.related(scope, _references(desired, scope)))
        cluster_problems = []
        if self.cluster is not None and not dry_run:
            cluster_problems = self.cluster.sync(desired, scope)
            desired = self.cluster.amend(desired, scope)
        the_plan = plan(desired, observed, records, scope=scope, in_flight=self.pulls.in_flight(),
                        now=now, allow_empty=self.allow_empty)
        if dry_run:
            return CycleReport(SUCCEEDED if unreachable is None else FAILED_OUTCOME, commit,
                               unreachable or f"would make {the_plan.summary()}", the_plan, full=True)

        if observed is not None and full:
            with self._observed_lock:
                self._observed = dict(observed)
            self.store.sync = replace(self.store.sync, last_resync_at=now)
        if not self.leading():  # lost the Lease while planning: another replica applies now
            return CycleReport(FAILED_OUTCOME, commit, "lost leadership before applying; nothing changed", the_plan)
        failures = self._apply(the_plan, commit)
        problems = [m for m in (unreachable, the_plan.refused, *cluster_problems, *failures) if m]
        self._converged = not problems
        if problems:
            return CycleReport(FAILED_OUTCOME, commit, "; ".join(problems), the_plan, full=full)
        self.applied = desired
        if self.store.sync.last_applied_commit != commit:
            metrics.LAST_APPLIED.set(now)
        self.store.sync = replace(self.store.sync, last_applied_commit=commit)
        return CycleReport(SUCCEEDED, commit, f"applied {commit[:12]}: {the_plan.summary()}", the_plan, full=full)

    def _full_cycle_due(self, now: float) -> bool:
        last = self.store.sync.last_resync_at
        with self._observed_lock:
            never_listed = self._observed is None
        # A pull that could not reach Ollama: list it now, so that the cycle fails while it stays away
        # (incremental cycles ask Ollama nothing and would go on reporting success).
        unreachable = self.pulls.take_unreachable() is not None
        return (unreachable or not self._converged or self.applied is None or never_listed
                or last is None or now - last >= self.resync_interval)

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
        if self._loader is None or self._loader_generation != self.repo.generation:
            self._loader, self._loader_generation = GitLoader(self.repo.repo), self.repo.generation  # a new clone
        previous, self.desired = self.desired, self._loader.load(commit)
        # Every problem is logged once, when a commit brings it (status shows them all, always).
        known = set(previous.problems) if previous is not None else set()
        for problem in self.desired.problems:
            if problem not in known:
                log.warning("action=problem commit=%s path=%s line=%s message=%r", commit[:12], problem.path,
                            problem.line or "-", problem.message)
        return self.desired

    def last_listing(self) -> dict[str, InstalledModel] | None:
        """What Ollama holds as of the last listing, kept current by this reconciler's own pulls and
        deletes (a copy); None before the first listing. Read by plan previews: no request."""
        return self._current_observed()

    def _current_observed(self) -> dict[str, InstalledModel] | None:
        with self._observed_lock:
            return None if self._observed is None else dict(self._observed)

    def _pull_finished(self, reference: str, installed: InstalledModel | None, retry_at: float | None) -> None:
        with self._observed_lock:
            if self._observed is not None and installed is not None:
                self._observed[reference] = installed
        if self._on_pull_finished is not None:
            self._on_pull_finished(retry_at)

    # -- applying ----------------------------------------------------------------------------------------
    def _apply(self, the_plan: Plan, commit: str) -> list[str]:
        """Carry the plan out; returns messages for what could not be done (to retry next cycle)."""
        lines = _Log(commit)
        with self.store.editing() as edit:
            for key, spec in the_plan.specs.items():
                record = edit.get(key)
                if record is None:
                    # A refresh value already in a new file is history: the model is pulled or found anyway.
                    edit.put(key, ModelRecord(spec, ModelStatus(PENDING, refresh_handled=spec.refresh_requested_at)))
                elif record.spec != spec:
                    edit.put(key, ModelRecord(spec, record.status))
            for action in the_plan.actions:
                if isinstance(action, MarkReady):
                    status = edit.status(action.key)
                    assert status is not None
                    _mark_ready(status, action.installed, action.owned, commit)
                    lines.add("ready", action.key, action.installed.reference, action.reason)
                elif isinstance(action, RecordError):
                    status = edit.status(action.key)
                    if status is not None:
                        status.error = action.message[:1024]
                    lines.add("skipped", action.key, None, action.message)
                elif isinstance(action, Suspend):
                    status = edit.status(action.key)
                    if status is not None:
                        status.error, status.failures, status.next_retry_at = None, 0, None
                        if status.state == FAILED:
                            status.state = PENDING
                    lines.add("suspended", action.key, None, action.reason)
                elif isinstance(action, Forget):
                    edit.forget(action.key)
                    lines.add("forgotten", action.key, action.reference, action.reason)
                elif isinstance(action, Skip):
                    # Not an action: at INFO, Ollama down would log a line per model per cycle
                    # besides the cycle's own line saying so.
                    lines.add("skipped", action.key, None, action.reason, level=logging.DEBUG)
        failures: list[str] = []
        for action in the_plan.actions:
            if isinstance(action, Pull):
                if self.pulls.submit(action, commit):
                    lines.add("pull", action.keys, action.reference, action.reason)
            elif isinstance(action, Delete):
                failure = self._delete(action, lines)
                if failure:
                    failures.append(failure)
        if the_plan.refused:
            log.warning("action=refused commit=%s reason=%r", commit[:12], the_plan.refused)
        return failures

    def _delete(self, action: Delete, lines: _Log) -> str | None:
        try:
            self.server.delete(action.reference)
        except (ModelOperationFailed, ServerUnreachable) as exc:
            message = f"could not delete {action.reference}: {exc}"
            with self.store.editing() as edit:
                for key in action.keys:
                    status = edit.status(key)
                    if status is not None:
                        status.error = message[:1024]
            lines.add("failed", action.keys, action.reference, message, level=logging.WARNING)
            return message
        with self._observed_lock:
            if self._observed is not None:
                self._observed.pop(normalize_reference(action.reference), None)
        # Forget only after Ollama confirmed: a crash in between repeats the delete, never loses it.
        with self.store.editing() as edit:
            for key in action.keys:
                edit.forget(key)
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


class _Log:
    """One structured log line per action, each with the commit."""

    def __init__(self, commit: str) -> None:
        self._commit = commit[:12]

    def add(self, action: str, keys: ModelKey | tuple[ModelKey, ...], reference: str | None, reason: str,
            level: int = logging.INFO) -> None:
        # A ModelKey is a tuple too: joining its fields would name it `default,gemma3-1b`.
        shown = str(keys) if isinstance(keys, ModelKey) else model_names(keys)
        log.log(level, "action=%s models=%s reference=%s commit=%s reason=%r", action, shown, reference or "-", self._commit, reason)
