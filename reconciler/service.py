"""Wiring: settings in, a running reconciler out. The only module that builds the edges."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import events
from .events import EventBus
from .git.repo import GitRepo
from .history import History
from .history import entry as history_entry
from .ollama.server import OllamaServer
from .plan import Delete, Forget, MarkReady, Plan, Pull, RecordError, Skip, Suspend
from .privatedir import make_private
from .reconcile import CycleReport, Reconciler
from .repository import check_repository, repository_url
from .settings import ConfigurationError, Settings, kubernetes_mode
from .state import DEFAULT_SERVER, StateLocked, StateStore, utc_rfc3339
from .syncfile import SyncFileWatcher

if TYPE_CHECKING:
    from .scheduler import CycleScheduler
    from .ollama.inventory import InventorySource
    from .cluster.connect import ClusterParts
    from .cluster.discovery import ServiceDiscovery
    from .cluster.election import LeaderElector
    from .cluster.syncrequest import SyncRequestWatcher

log = logging.getLogger("ollama_gitops")


@dataclass
class Service:
    """A reconciler with its edges and its schedule."""

    settings: Settings
    store: StateStore
    reconciler: Reconciler
    scheduler: CycleScheduler | None = None
    cluster: ClusterParts | None = None
    elector: LeaderElector | None = None
    sync_requests: SyncRequestWatcher | SyncFileWatcher | None = None  # cycles an API process asks for
    events: EventBus = field(default_factory=EventBus)  # cycle starts and ends, for live pages
    history: History | None = None  # the last cycles, in the state directory
    discovery: ServiceDiscovery | None = None  # --ollama-service: the fleet's servers, an inventory source
    scratch: Path | None = None  # a dry run's own clone, removed at stop()
    full_first: bool = False  # `--full`: the next cycle is a full one, whatever the recorded state says
    _stopping: bool = False
    _new_term: bool = False  # Kubernetes mode: leading again, the records not read again yet

    def request_cycle(self) -> None:
        if self.scheduler is not None:
            self.scheduler.request_cycle()

    def pull_finished(self, retry_at: float | None) -> None:
        """A pull ended: a cycle now records it, and one when its retry is due, if it failed."""
        self.request_cycle()
        if retry_at is not None and self.scheduler is not None:
            self.scheduler.request_cycle_at(retry_at)

    def start(self) -> None:
        """Run cycles on the schedule; in Kubernetes mode only while this replica holds the Lease."""
        if self.cluster is None:
            # An `ollama-gitops api` sharing the state directory asks for cycles through a file.
            self.sync_requests = SyncFileWatcher(self.settings.state_dir, self.request_cycle).start()
            self._start_schedule()
            return
        from .cluster.election import LeaderElector
        from .cluster.syncrequest import SyncRequestWatcher

        # Every replica watches (and creates, if missing) the ConfigMap the API annotates on a
        # webhook push; only the one holding the Lease acts on it.
        self.sync_requests = SyncRequestWatcher(
            self.cluster.api, self.settings.leader_election_namespace, self.request_cycle,
            leading=lambda: self.elector is not None and self.elector.is_leader).start()
        lease = self.settings.lease_duration
        self.elector = LeaderElector(
            self.cluster.api, namespace=self.settings.leader_election_namespace, identity=_identity(),
            lease_duration=lease, renew_deadline=lease * 2 / 3, retry_period=max(1.0, lease / 7.5),
            on_started=self._start_schedule, on_stopped=self._stop_schedule)
        self.reconciler.leading = lambda: self.elector is not None and self.elector.is_leader
        self.elector.start()

    def _start_schedule(self) -> None:
        log.info("leading: reconciling")
        self._new_term = self.cluster is not None
        from .scheduler import CycleScheduler  # APScheduler: not imported by a `reconcile --once`

        self.scheduler = CycleScheduler(self._cycle, self.settings.interval)
        self.scheduler.start()

    def _cycle(self) -> None:
        if self._new_term:
            # The records were read at this process's start, or are those of an earlier term: the last
            # leader has pulled, pruned and refreshed since, and says so on the resources.
            assert self.cluster is not None
            if not self.cluster.store.reload():
                log.warning("the resource cache has not listed yet: not reconciling before it has")
                return
            self.reconciler.forget_observations()
            self._new_term = False
            log.info("records read again from %d resources", len(self.cluster.store.keys()))
        self.run_cycle()

    def run_cycle(self) -> CycleReport:
        """One cycle, announced on the event bus and, unless it was a no-op, kept in the history."""
        self.events.publish(events.CYCLE_STARTED, {"time": utc_rfc3339(time.time())})
        started = time.monotonic()
        full, self.full_first = self.full_first, False
        report = self.reconciler.run_cycle(full=full)
        seconds = time.monotonic() - started
        ended = utc_rfc3339(time.time())
        if self.history is not None and not report.noop:
            pulled, deleted = cycle_changes(report)
            try:
                self.history.append(history_entry(ended, report.commit, seconds, report.outcome, report.message,
                                                  pulled, deleted))
            except OSError as exc:  # the cycle is done and recorded in sync.json: history is a view of it
                log.error("action=save-history-failed error=%r", str(exc))
        self.events.publish(events.CYCLE_ENDED, {
            "time": ended, "outcome": report.outcome, "commit": report.commit, "message": report.message,
            "durationSeconds": round(seconds, 6), "noop": report.noop})
        return report

    def _stop_schedule(self) -> None:
        # The elector has already made `leading` false, so a cycle under way stops before its next write.
        # On a lost Lease this runs in the election's threads, which must not wait; on stop() it runs
        # in the stopping thread, which waits for the cycle so that the Lease is released after it.
        if not self._stopping:
            log.warning("not leading any more: standing by")
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=self._stopping)

    def stop(self) -> None:
        self._stopping = True
        if self.elector is not None:
            self.elector.stop()  # stops the schedule (on_stopped), then releases the Lease
        if self.sync_requests is not None:
            self.sync_requests.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self.reconciler.close()
        if self.discovery is not None:
            self.discovery.stop()
        if self.cluster is not None:
            self.cluster.close()
        self.store.release_process_lock()
        self.events.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def build(settings: Settings, *, dry_run: bool = False) -> Service:
    """Create the service's parts; takes the state directory's lock.

    In Kubernetes mode (`--kubernetes on`, or `auto` with a cluster configuration) the models become
    OllamaModel resources and their records live on them; otherwise in the state directory.
    With `dry_run`, when another process (a running `serve` or `reconcile`) holds the lock of a
    standalone state directory, its records are read without the lock and the branch is fetched into
    a clone of the dry run's own: nothing in the state directory is written.
    """
    check_repository(settings, serves_writes=False)
    if settings.ollama_service and settings.servers_file is not None:
        raise ConfigurationError("--ollama-service and --servers-file cannot be used together: the Service's pods "
                                 "are the servers")
    make_private(settings.state_dir)
    service = Service(settings, None, None)  # type: ignore[arg-type]
    if kubernetes_mode(settings):
        from .cluster.connect import ClusterUnavailable, connect

        try:
            service.cluster = connect(settings.state_dir, settings.leader_election_namespace,
                                      allow_empty=settings.allow_empty,
                                      on_change=lambda keys: service.request_cycle(),
                                      leading=lambda: service.reconciler is None or service.reconciler.leading())
        except ClusterUnavailable as exc:
            raise ConfigurationError(str(exc)) from None
        service.store = service.cluster.store
        if settings.ollama_service:
            service.discovery = _discover(service)
    elif settings.ollama_service:
        raise ConfigurationError("--ollama-service needs Kubernetes mode (--kubernetes on, or auto in a pod)")
    else:
        # The records are read when first used: a cycle that ends after the fetch needs none of them.
        service.store = StateStore(settings.state_dir, lazy=True)
    try:
        service.store.acquire_process_lock()
    except StateLocked:
        if not dry_run or service.cluster is not None:
            raise
        return _build_dry_run(settings)
    service.history = History(settings.state_dir)
    repo = GitRepo(repository_url(settings), settings.branch, settings.state_dir / "clone.git", settings.credentials)
    service.reconciler = _reconciler(
        settings, repo, service.store, service.discovery if service.discovery is not None else inventory_source(settings),
        on_pull_finished=service.pull_finished,
        cluster=service.cluster.sync if service.cluster is not None else None,
    )
    if service.cluster is not None:  # the resources' status is the whole over the servers a model's selector picks
        service.cluster.store.placements = service.reconciler.placements
    return service


def _reconciler(settings: Settings, repo: GitRepo, store: StateStore, servers: InventorySource,
                **hooks: Any) -> Reconciler:
    """The reconciler of `settings` over `repo`, `store` and the fleet `servers` give."""
    return Reconciler(repo, servers, store, client_factory=lambda server: OllamaServer(server.url),
                      concurrency=settings.concurrency, resync_interval=settings.resync_interval,
                      allow_empty=settings.allow_empty, **hooks)


def cycle_changes(report: CycleReport) -> tuple[list[str], list[str]]:
    """The models a cycle started pulling and deleted, as `namespace/name`, prefixed `server: ` in a
    fleet (bare for the one server `default`, given the old way)."""
    named = set(report.plans) != {DEFAULT_SERVER}
    pulled: list[str] = []
    deleted: list[str] = []
    for server, server_plan in sorted(report.plans.items()):
        prefix = f"{server}: " if named else ""
        for action in server_plan.actions:
            if isinstance(action, (Pull, Delete)):
                names = [f"{prefix}{key}" for key in action.keys]
                (pulled if isinstance(action, Pull) else deleted).extend(names)
    return pulled, deleted


def _discover(service: Service) -> ServiceDiscovery:
    """The servers behind --ollama-service; a change among them asks for a cycle."""
    from .cluster.connect import discover
    from .ollama.inventory import InventoryError

    assert service.cluster is not None and service.settings.ollama_service
    try:
        return discover(service.cluster.api, service.settings.ollama_service, service.request_cycle)
    except InventoryError as exc:
        service.cluster.close()
        raise ConfigurationError(str(exc)) from None


def inventory_source(settings: Settings) -> InventorySource:
    """The servers to keep in line: `--ollama-url`'s, and a `--servers-file` followed as it changes
    (ConfigurationError, one line, when they cannot be used)."""
    from .ollama.inventory import FileInventory, InventoryError, StaticInventory

    try:
        given = settings.inventory()
        if settings.servers_file is not None:
            return FileInventory(settings.servers_file, alongside=given)
        return StaticInventory(given)
    except InventoryError as exc:
        raise ConfigurationError(str(exc)) from None


def servers_text(settings: Settings) -> str:
    """Which servers are kept in line, for the start-up line."""
    if settings.ollama_service:
        return f"the ready pods of Service {settings.ollama_service}"
    given = settings.ollama_url if settings.ollama_urls else ""
    if settings.servers_file is None:
        return given
    return f"the servers in {settings.servers_file}" + (f" and {given}" if given else "")


def _build_dry_run(settings: Settings) -> Service:
    """A dry run beside the process that holds the state directory: its records read only, a clone
    of its own (removed at stop)."""
    store = StateStore(settings.state_dir, readonly=True)
    scratch = Path(tempfile.mkdtemp(prefix="ollama-gitops-dry-run-"))
    repo = GitRepo(repository_url(settings), settings.branch, scratch / "clone.git", settings.credentials)
    reconciler = _reconciler(settings, repo, store, inventory_source(settings))
    return Service(settings, store, reconciler, scratch=scratch)


def dry_run_caveats(service: Service) -> list[str]:
    """What a reader of a dry run must know about the records it planned against: read from a running
    reconciler's state directory, or none at all (so no deletion could be planned)."""
    store, where = service.store, service.settings.state_dir
    lines = []
    if service.scratch is not None:
        lines.append(f"note: another ollama-gitops process is reconciling {where}: planned against its records, "
                     "read without its lock; `ollama-gitops plan --ref BRANCH` asks it, with download sizes")
    if not store.keys() and store.sync.last_applied_commit is None:
        lines.append(f"warning: {where} has no records (no reconciler has applied anything with it): nothing is "
                     "known to have been pulled by ollama-gitops, so no deletion can be planned. Use the state "
                     "directory of the running reconciler (--state-dir), or ask it: ollama-gitops plan --ref BRANCH")
    return lines


def _identity() -> str:
    """Who holds the Lease: the pod (its hostname) and the process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StopSignals:
    """SIGTERM or SIGINT, taken from the moment this is made.

    Made before anything starts: a signal that arrives while the service is still starting must
    stop it gracefully too, not kill the process with the default action.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())

    def wait(self) -> None:
        """Block until one of the signals has come."""
        # Never an untimed wait: the kernel gives a process's signal to any of its threads, and
        # CPython runs the handler only when the main thread next runs Python code, which a main
        # thread blocked on a lock for good never does (SIGTERM was lost so under load). A timed
        # wait comes back to Python code every second.
        while not self._stop.wait(1.0):
            pass


def stop_signals() -> StopSignals:
    """Take SIGTERM and SIGINT from now on (see `StopSignals`)."""
    return StopSignals()


def run_forever(service: Service, health_listen: tuple[str, int] | None = None) -> int:
    """Run cycles on the schedule until SIGTERM or SIGINT; with `health_listen`, serve probes and
    metrics there."""
    stop = stop_signals()
    probes = None
    if health_listen is not None:
        from prometheus_client import REGISTRY

        from .health import Health, HealthServer
        from .metrics import ModelsByState

        REGISTRY.register(ModelsByState(service.store.records, service.store.tally))  # a StateStore: it copies no record
        health = Health(lambda: service.scheduler, service.settings.interval, lambda: service.reconciler.leading())
        probes = HealthServer(health, *health_listen).start()
    service.start()
    log.info("reconciling %s branch %s into %s every %.0fs", service.reconciler.repo.display_url,
             service.settings.branch, servers_text(service.settings), service.settings.interval)
    stop.wait()
    log.info("shutting down")
    if probes is not None:
        probes.stop()
    service.stop()
    return 0


def run_once(service: Service, out: TextIO, dry_run: bool = False, err: TextIO | None = None) -> int:
    """One cycle; with pulls started, wait for them and report how they ended. Exit code 0 when all went well.
    A dry run's caveats (`dry_run_caveats`) go to `err` (stderr), beside the plan on `out`."""
    full, service.full_first = service.full_first, False
    report = service.reconciler.run_cycle(dry_run=dry_run, full=full)
    print_report(report, out, dry_run)
    if dry_run:
        for line in dry_run_caveats(service):
            (err or sys.stderr).write(line + "\n")
    ok = report.ok
    pulls = [(name, pull) for name, plan in report.plans.items() for pull in plan.of(Pull)]
    if not dry_run and pulls:
        service.reconciler.pulls.wait()
        # Saved again now that the pulls have ended, so that the next `--once` finds the records as
        # the summary says and, if nothing changed, need not read them (`StateStore.settled_on_disk`).
        service.store.save_sync(service.store.sync)
        named = set(report.plans) != {DEFAULT_SERVER}
        for name, pull in pulls:
            for key in pull.keys:
                record = service.store.record(key)
                status = record.servers.get(name) if record is not None else None
                if status is None:
                    continue
                detail = f": {status.error}" if status.error else ""
                where = f"  server={name}" if named else ""
                out.write(f"{status.state:<8} {key}  {pull.reference}{where}{detail}\n")
                ok = ok and status.state == "Ready"
    return 0 if ok else 1


def print_report(report: CycleReport, out: TextIO, dry_run: bool) -> None:
    """The cycle's plan (per server, in a fleet), one line per action, then its outcome."""
    for line in describe_fleet(report.plans, include_skips=dry_run):
        out.write(line + "\n")
    prefix = "dry run: " if dry_run else ""
    out.write(f"{prefix}{report.outcome} at {(report.commit or 'no commit')[:12]}: {report.message}\n")


def describe_fleet(plans: Mapping[str, Plan], include_skips: bool = True) -> list[str]:
    """`describe` of each server's plan, each under a `server=NAME: ...` line; the one server
    `default` (the old way) as a plain table."""
    if set(plans) == {DEFAULT_SERVER}:
        return describe(plans[DEFAULT_SERVER], include_skips)
    lines = []
    for name, plan in plans.items():
        lines.append(f"server={name}: {plan.summary()}")
        lines.extend(f"  {line}" for line in describe(plan, include_skips))
    return lines


def describe(plan: Plan, include_skips: bool = True) -> list[str]:
    """Human lines for a plan, as a table: what would be pulled, deleted or left alone, and why."""
    rows: list[tuple[str, str, str, str]] = []
    for action in plan.actions:
        if isinstance(action, Pull):
            rows.append(("pull", ", ".join(map(str, action.keys)), action.reference, action.reason))
        elif isinstance(action, Delete):
            rows.append(("delete", ", ".join(map(str, action.keys)), action.reference, action.reason))
        elif isinstance(action, Forget):
            rows.append(("forget", str(action.key), action.reference, action.reason))
        elif isinstance(action, MarkReady):
            rows.append(("ready", str(action.key), action.installed.reference, action.reason))
        elif isinstance(action, RecordError):
            rows.append(("error", str(action.key), "-", action.message))
        elif isinstance(action, Suspend):
            rows.append(("leave", str(action.key), "-", action.reason))
        elif isinstance(action, Skip) and include_skips:
            rows.append(("leave", str(action.key), "-", action.reason))
    lines = []
    if rows:
        rows.insert(0, ("ACTION", "MODEL", "REFERENCE", "REASON"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[3]]) for row in rows]
    if plan.refused:
        lines.append(f"refused: {plan.refused}")
    return lines
