"""The fleet's servers, published for the API deployed apart from the reconciler.

The leading reconciler writes the servers it last saw (`SyncStatus.servers`) as JSON into the key
`servers.json` of the ConfigMap `ollama-gitops-fleet` in its namespace; `ollama-gitops api` in
Kubernetes mode reads it back, so that `GET /api/v1/servers` lists them and a model view can say
that no server matches its selector. A write is made only when something but `lastSeen` changed,
or the published `lastSeen` is a minute behind: not once per cycle. A replica that does not lead
never writes it.

So the reconciler needs `create` on configmaps (already granted for the sync requests) and `get`
and `patch` on that one name; the API `get` on that one name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from ..state import ServerSeen
from .cache import describe_error
from .syncrequest import MERGE_PATCH, REQUEST_TIMEOUT

__all__ = ["CONFIG_MAP", "KEY", "FleetPublisher", "FleetReader", "servers_from_json", "servers_json"]

log = logging.getLogger("ollama_gitops.cluster.fleetmap")

CONFIG_MAP = "ollama-gitops-fleet"
KEY = "servers.json"
LAST_SEEN_EVERY = 60.0  # seconds the published lastSeen may lag behind before it is written again
READ_EVERY = 5.0  # seconds between the API's reads of the ConfigMap

_FIELDS = (("name", "name"), ("url", "url"), ("labels", "labels"), ("reachable", "reachable"),
           ("version", "version"), ("lastSeen", "last_seen"), ("error", "error"))


def servers_json(servers: Sequence[ServerSeen]) -> str:
    """The ConfigMap's value for `servers`: a JSON list, sorted by name, in the API's field names."""
    items = [{shown: getattr(server, attribute) for shown, attribute in _FIELDS}
             for server in sorted(servers, key=lambda s: s.name)]
    return json.dumps(items, sort_keys=True, separators=(",", ":"))


def servers_from_json(text: str) -> tuple[ServerSeen, ...]:
    """The servers a ConfigMap value says (ValueError if it is not what `servers_json` writes)."""
    items = json.loads(text)
    if not isinstance(items, list) or not all(isinstance(i, Mapping) and isinstance(i.get("name"), str)
                                              for i in items):
        raise ValueError("not a list of servers")
    return tuple(ServerSeen(**{**{attribute: item.get(shown) for shown, attribute in _FIELDS},
                               "labels": item.get("labels") or {}}) for item in items)


def _without_last_seen(servers: Sequence[ServerSeen]) -> tuple[ServerSeen, ...]:
    return tuple(dataclasses.replace(s, last_seen=None) for s in servers)


class FleetPublisher:
    """Writes the servers into the ConfigMap when they changed, off the cycle's thread (the newest
    servers win; a failed write is tried again at the next cycle's `publish`)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, *,
                 leading: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._namespace = namespace
        self._leading = leading
        self._clock = clock
        self._lock = threading.Lock()
        self._published: tuple[ServerSeen, ...] | None = None  # None: not known (read it first)
        self._published_at = 0.0
        self._next: tuple[ServerSeen, ...] | None = None  # waiting for the writer
        self._busy = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-fleet")
        self.writes = 0  # for tests and logs

    def publish(self, servers: Sequence[ServerSeen]) -> None:
        """Hand the servers a cycle saw to the writer (which writes them only when due)."""
        with self._lock:
            self._next = tuple(sorted(servers, key=lambda s: s.name))
            if self._busy:
                return  # the writer takes the newest when it is done
            self._busy = True
        self._pool.submit(self._run)

    def forget(self) -> None:
        """Forget what was published (another leader may have written since): read it again first."""
        with self._lock:
            self._published = None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait for the writes handed out so far (for tests and stop)."""
        self._pool.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                servers, self._next = self._next, None
                if servers is None:
                    self._busy = False
                    return
            try:
                self._write(servers)
            except Exception as exc:  # the API server's fault, or a bug: said, and tried at the next cycle
                log.warning("action=fleet-publish-failed configmap=%s/%s error=%r", self._namespace, CONFIG_MAP,
                            describe_error(exc))
                with self._lock:
                    self._published = None

    def _write(self, servers: tuple[ServerSeen, ...]) -> None:
        if not self._leading():
            return
        with self._lock:
            published = self._published
        if published is None:
            published = self._read()
        due = (published is None or _without_last_seen(published) != _without_last_seen(servers)
               or (published != servers and self._clock() - self._published_at >= LAST_SEEN_EVERY))
        if due:
            if not self._leading():  # lost the Lease meanwhile: the new leader writes what it sees
                return
            self._put(servers, exists=published is not None)
            self.writes += 1
            with self._lock:
                self._published_at = self._clock()
        with self._lock:
            self._published = servers if due else published

    def _read(self) -> tuple[ServerSeen, ...] | None:
        """What the ConfigMap says now (None: it does not exist or says nothing readable)."""
        try:
            found = self._core.read_namespaced_config_map(CONFIG_MAP, self._namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return servers_from_json((found.data or {}).get(KEY) or "")
        except ValueError:
            return None

    def _put(self, servers: tuple[ServerSeen, ...], *, exists: bool) -> None:
        data = {KEY: servers_json(servers)}
        if exists:
            try:
                self._core.patch_namespaced_config_map(CONFIG_MAP, self._namespace, {"data": data},
                                                       _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT)
                return
            except ApiException as exc:
                if exc.status != 404:  # deleted since: created again below
                    raise
        body = {"metadata": {"name": CONFIG_MAP, "labels": {"app.kubernetes.io/managed-by": "ollama-gitops"}},
                "data": data}
        try:
            self._core.create_namespaced_config_map(self._namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._core.patch_namespaced_config_map(CONFIG_MAP, self._namespace, {"data": data},
                                                   _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT)


class FleetReader:
    """The API's side: reads the ConfigMap every `interval` seconds in a thread; `servers` is what
    it said last (empty until it exists)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, *, interval: float = READ_EVERY) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._namespace = namespace
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.servers: tuple[ServerSeen, ...] = ()

    def start(self) -> FleetReader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ollama-gitops-fleet-reader", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def read(self) -> None:
        """Read the ConfigMap once; a failure keeps the servers last read (and is logged)."""
        try:
            found = self._core.read_namespaced_config_map(CONFIG_MAP, self._namespace, _request_timeout=REQUEST_TIMEOUT)
            self.servers = servers_from_json((found.data or {}).get(KEY) or "[]")
        except ApiException as exc:
            if exc.status == 404:  # no reconciler has led yet
                self.servers = ()
            else:
                log.warning("could not read the ConfigMap %s/%s: %s", self._namespace, CONFIG_MAP, describe_error(exc))
        except ValueError as exc:
            log.warning("the ConfigMap %s/%s says no servers ollama-gitops can read: %s", self._namespace,
                        CONFIG_MAP, exc)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not read the ConfigMap %s/%s: %s", self._namespace, CONFIG_MAP, exc)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.read()
            self._stopping.wait(self._interval)
