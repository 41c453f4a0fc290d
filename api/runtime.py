"""Wiring the API: settings in, a served application out (`serve` with the reconciler, or `api` alone)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import git
from prometheus_client import REGISTRY

from ..reconciler import metrics as reconciler_metrics
from ..reconciler import service as reconciler_service
from ..reconciler.events import EventBus
from ..reconciler.history import History
from ..reconciler.models.desired import SharedLoader
from ..reconciler.git.repo import GitRepo
from ..reconciler.privatedir import make_private
from ..reconciler.scheduler import CycleScheduler
from ..reconciler.settings import Settings
from ..reconciler.state import StateLocked, StateStore
from ..reconciler.git.writer import ModelWriter, parse_author

from . import dashboard, malloc
from .app import ApiSettings, create_app, status_view
from .catalog import Catalog, StatusSource
from .live import LiveFeed
from .planning import Planner
from .repository import ModelsRepository
from .sameorigin import HostCheck
from .server import REQUEST_TIMEOUT, ApiServer, is_loopback, parse_listen
from .webhook import TriggerUnavailable, WebhookConfig

log = logging.getLogger("ollama_gitops.api")


class ConfigurationError(Exception):
    """The API settings cannot work; the message says why."""


@dataclass(frozen=True)
class ApiOptions:
    listen: str | None
    api_key: str | None
    namespace: str
    git_author: str
    insecure_no_auth: bool
    threads: int = 16
    webhook_secret: str | None = field(default=None, repr=False)  # None: webhooks are off
    allowed_hosts: tuple[str, ...] = ()  # host names served beyond loopback and the listen address
    request_timeout: float = REQUEST_TIMEOUT  # seconds a client may take to send a request
    event_heartbeat: float = dashboard.HEARTBEAT  # seconds between keep-alive comments on an events stream
    event_streams: int = dashboard.STREAMS  # events streams open at once, each with a thread of its own
    registry_url: str | None = None  # a mirror of registry.ollama.ai, for the plan's sizes


@dataclass
class RunningApi:
    server: ApiServer
    repository: ModelsRepository
    refresher: CycleScheduler
    service: reconciler_service.Service | None = None
    lock_file: TextIO | None = None
    close_status: Callable[[], None] = lambda: None  # the API alone in Kubernetes mode: its cache
    catalog: Catalog | None = None  # what reads are answered from (its `stats` count the work of lists)
    feed: LiveFeed | None = None
    planner: Planner | None = None

    def stop(self) -> None:
        """Stop in the order that loses nothing: no new requests, then writes, then cycles."""
        if self.feed is not None:
            self.feed.stop()  # ends the events streams, which would otherwise hold the shutdown
        self.server.shutdown()
        if self.planner is not None and self.planner.registry is not None:
            self.planner.registry.close()
        self.refresher.shutdown()
        self.repository.close()
        if self.service is not None:
            self.service.stop()
        self.close_status()
        if self.lock_file is not None:
            self.lock_file.close()


def listen_address(options: ApiOptions) -> tuple[str, int]:
    """Where to listen: all interfaces when an API key is set, loopback only when not; refuses to
    expose an unauthenticated API unless told explicitly."""
    default = "0.0.0.0:8082" if options.api_key else "127.0.0.1:8082"
    host, port = parse_listen(options.listen or default)
    if options.api_key is None and not is_loopback(host) and not options.insecure_no_auth:
        raise ConfigurationError(
            f"refusing to listen on {host} without an API key: set OLLAMA_GITOPS_API_KEY or "
            "--api-key-file, listen on 127.0.0.1, or pass --insecure-no-auth")
    return host, port


def host_check(options: ApiOptions) -> HostCheck | None:
    """The host names the API answers for; None (any) with an API key, which already stops what a
    check of the Host header is for (see sameorigin.py)."""
    host, _ = listen_address(options)
    try:
        check = HostCheck.serving(host, options.allowed_hosts)
    except ValueError as exc:
        raise ConfigurationError(f"--allowed-host: {exc}") from None
    return None if options.api_key else check


def start(settings: Settings, options: ApiOptions, *, with_reconciler: bool, schedules: bool = True) -> RunningApi:
    """Build and start everything; the caller waits for a signal, then calls `stop()`.

    `schedules=False` serves requests but runs no cycle or fetch on its own (tests drive them).
    """
    malloc.give_back_large_blocks()  # a long-running process of large transients (see malloc.py)
    malloc.limit_heaps()  # and of many threads
    host, port = listen_address(options)
    hosts = host_check(options)
    try:
        author = parse_author(options.git_author)
    except ValueError as exc:
        raise ConfigurationError(f"--git-author: {exc}") from None
    registry_problem = registry_url_problem(options.registry_url)
    if registry_problem is not None:
        raise ConfigurationError(f"--registry-url: {registry_problem}")
    # The port first, and the repository: a start that cannot work stops before the state
    # directory is made or seeded. The socket is bound now and served once the app exists.
    app_slot = _AppSlot()
    server = _bind(app_slot, host, port, options)
    try:
        reconciler_service.check_repository(settings, serves_writes=True)
        return _start(settings, options, server, app_slot, hosts, author, with_reconciler, schedules)
    except BaseException:
        server.shutdown(grace=0)
        raise


class _AppSlot:
    """The WSGI application, set once built: the socket is bound before it exists."""

    app: Callable | None = None

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        assert self.app is not None, "served only once started"
        return self.app(environ, start_response)


def _bind(app: Callable, host: str, port: int, options: ApiOptions) -> ApiServer:
    try:
        # Events streams hold a thread each for as long as they are open: they get their own.
        return ApiServer(app, host, port, threads=options.threads + options.event_streams,
                         request_timeout=options.request_timeout)
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"{shown} is already in use (another ollama-gitops serve?); "
                                     "choose another with --listen HOST:PORT") from None
        raise ConfigurationError(f"cannot listen on {shown}: {exc.strerror or exc}; "
                                 "choose another with --listen HOST:PORT") from None


def _start(settings: Settings, options: ApiOptions, server: ApiServer, app_slot: _AppSlot,
           hosts: HostCheck | None, author: git.Actor, with_reconciler: bool, schedules: bool) -> RunningApi:
    make_private(settings.state_dir)
    lock_file = _lock_api_clone(settings.state_dir)
    service = None
    close_status: Callable[[], None] = lambda: None
    trigger: Callable[[], None]  # what an accepted webhook push calls to start a cycle
    follow_files: Callable[[], object] | None = None  # beside a reconciler in another process
    if with_reconciler:
        service = reconciler_service.build(settings)
        status: StatusSource = service.store
        follow = None
        on_written = service.request_cycle
        if service.cluster is not None:
            trigger = _sync_request(service.cluster.api, settings.leader_election_namespace)
        else:
            trigger = service.request_cycle
    elif reconciler_service.kubernetes_mode(settings):
        # Apart from the reconciler in a cluster: status is read from the resources (get, list, watch).
        from ..reconciler.cluster.connect import (ClusterStatusSource, ClusterUnavailable, FleetReader, api_client,
                                                  start_cache)

        try:
            kube = api_client()
            cache = start_cache(kube)
        except ClusterUnavailable as exc:
            raise ConfigurationError(str(exc)) from None
        fleet = FleetReader(kube, settings.leader_election_namespace).start()  # the servers the leader publishes
        status = ClusterStatusSource(cache, fleet)

        def close_cluster() -> None:
            fleet.stop()
            cache.stop()

        close_status = close_cluster
        follow, on_written = None, (lambda: None)
        trigger = _sync_request(kube, settings.leader_election_namespace)
    else:
        store = StateStore(settings.state_dir, readonly=True)
        status, follow, on_written = store, _throttled(store.follow, 1.0), (lambda: None)
        follow_files = store.follow
        trigger = _sync_file(settings.state_dir)
    url = reconciler_service.repository_url(settings)
    repo = GitRepo(url, settings.branch, settings.state_dir / "api.git", settings.credentials)
    shared = None
    if service is not None:  # one loader for both clones: each commit is parsed once, the models held once
        shared = service.reconciler.shared_loader = SharedLoader(service.reconciler.repo, repo)
    repository = ModelsRepository(repo, ModelWriter(repo, author), shared)
    catalog = Catalog(lambda: repository.desired, status, follow)
    refresher = CycleScheduler(repository.refresh, settings.interval)
    webhook = None
    if options.webhook_secret:
        # A local repository is matched by its absolute path, however --repo spelt it.
        webhook = WebhookConfig(options.webhook_secret, os.path.abspath(url) if os.path.exists(url) else url,
                                settings.branch)

    def on_push() -> None:
        trigger()
        refresher.request_cycle()  # the API's own clone: reads show the pushed commit at once too

    planner = _planner(options, repository, status, follow, service)
    next_cycle = _next_cycle(service) if service is not None else (lambda: None)
    app = create_app(ApiSettings(options.api_key, options.namespace, webhook, hosts), catalog, repository,
                     on_written, max_writers=max(1, options.threads // 2), on_push=on_push, next_cycle=next_cycle,
                     planner=planner)
    bus = service.events if service is not None else EventBus()
    history = service.history if service is not None else History(settings.state_dir)
    dashboard.register(app, bus, history, heartbeat=options.event_heartbeat, streams=options.event_streams,
                       servers=catalog.servers_reachability)
    # Beside a reconciler in another process, the feed follows its state files (unthrottled: it
    # looks every half second, and only while a page listens).
    feed = LiveFeed(bus, catalog, lambda: status_view(catalog, repository, next_cycle), catalog.servers_reachability,
                    follow=follow_files, records=None if hasattr(status, "add_listener") else status)
    if hasattr(status, "add_listener"):  # the state store; the cluster's cache announces nothing
        status.add_listener(feed.changed)  # type: ignore[attr-defined]
    app_slot.app = app
    _register_collector(status)
    server.start()
    feed.start()
    if schedules:
        refresher.start()
        if service is not None:
            service.start()
    log.info("API listening on %s (namespace %s, %s, webhooks %s)", server.url, options.namespace,
             "API key required" if options.api_key else "no authentication",
             "on" if webhook is not None else "off")
    log.info("models repository: %s (branch %s); clone it with: git clone --branch %s %s",
             repo.display_url, settings.branch, settings.branch, repo.display_url)
    return RunningApi(server, repository, refresher, service, lock_file, close_status, catalog, feed, planner)


def _next_cycle(service: reconciler_service.Service) -> Callable[[], str | None]:
    """When this process's schedule runs its next cycle (RFC 3339), None while not scheduled (a
    standby replica, or before the start)."""
    from ..reconciler.state import utc_rfc3339

    def next_cycle() -> str | None:
        scheduler = service.scheduler
        when = scheduler.next_cycle_at() if scheduler is not None else None
        return utc_rfc3339(when) if when is not None else None

    return next_cycle


def registry_url_problem(url: str | None) -> str | None:
    """Why `--registry-url` cannot be used, or None."""
    from urllib.parse import urlsplit

    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "a registry URL is http:// or https:// with a host"
    return None


def _planner(options: ApiOptions, repository: ModelsRepository, status: StatusSource,
             follow: Callable[[], object] | None, service: reconciler_service.Service | None) -> Planner:
    """`GET /api/v1/plan`: against the reconciler's own listing with `serve`, its records with `api`."""
    from ..reconciler.ollama.registry import RegistryClient

    registry = RegistryClient(options.registry_url, timeout=5.0)  # checked at start()
    reconciler = service.reconciler if service is not None else None
    return Planner(repository, status, follow=follow, reconciler=reconciler,
                   allow_empty=service.settings.allow_empty if service is not None else False, registry=registry)


def _sync_request(api: object, namespace: str) -> Callable[[], None]:
    """In Kubernetes mode a push is passed on through the ConfigMap that the reconciler watches,
    whichever replica leads (it may be another process, or another pod)."""
    from ..reconciler.cluster.syncrequest import SyncRequestUnavailable, request_sync

    def trigger() -> None:
        try:
            request_sync(api, namespace)  # type: ignore[arg-type]
        except SyncRequestUnavailable as exc:
            raise TriggerUnavailable(str(exc)) from None

    return trigger


def _sync_file(state_dir: Path) -> Callable[[], None]:
    """Beside a reconciler in another process on this host, a push is passed on through a file in
    the state directory they share, which the reconciler reads every second."""
    from ..reconciler.syncfile import request_sync

    def trigger() -> None:
        try:
            request_sync(state_dir)
        except OSError as exc:
            raise TriggerUnavailable(f"could not request a cycle in {state_dir}: {exc.strerror or exc}") from None

    return trigger


def _lock_api_clone(state_dir: Path) -> TextIO:
    handle = open(state_dir / "api.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateLocked(f"another ollama-gitops API process uses {state_dir}; give each API process "
                          "its own --state-dir") from None
    return handle


_registered: list[object] = []


def _register_collector(status: StatusSource) -> None:
    # The registry is process-wide; a process serves one API.
    for collector in _registered:
        REGISTRY.unregister(collector)  # type: ignore[arg-type]
    _registered.clear()
    collector = reconciler_metrics.ModelsByState(status.records, getattr(status, "tally", None))  # the store's copies nothing
    REGISTRY.register(collector)
    _registered.append(collector)


def _throttled(function, seconds: float):  # type: ignore[no-untyped-def]
    """Call `function` at most once every `seconds`: following the state files on every read is waste."""
    lock = threading.Lock()
    last = [0.0]

    def call() -> None:
        now = time.monotonic()
        if now - last[0] < seconds or not lock.acquire(blocking=False):
            return
        try:
            last[0] = now
            function()
        finally:
            lock.release()

    return call
