"""The servers of a fleet in a cluster: the Ollama pods behind a Service (`--ollama-service NAMESPACE/NAME`).

The Service's EndpointSlices (``discovery.k8s.io/v1``, label ``kubernetes.io/service-name``) say
which pods serve it and at which address; every endpoint that is ready is one server:

- **named after its pod** (``targetRef``): a StatefulSet's ``ollama-0`` stays ``ollama-0`` across
  restarts, so what was recorded for it stays attached (an endpoint without a pod is named after
  its address and port, as a bare ``--ollama-url`` among several is);
- **at** ``http://ADDRESS:PORT``, the port the slice names ``http`` or its only one (``https`` when
  the port's ``appProtocol`` says so), an IPv6 address in brackets; a dual-stack Service lists each
  pod in an IPv4 and an IPv6 slice: it is one server, at its IPv4 address;
- **labelled** with its node's labels and its pod's labels (the pod's win on a clash), so that a
  model file can place a model by ``nvidia.com/gpu.product`` or ``topology.kubernetes.io/zone``.

Ready as Kubernetes defines it (``EndpointConditions``): ``ready`` true or unset, and not
``serving: false`` (a Service that publishes not-ready addresses marks every endpoint ready; serving
says whether the pod is), and not ``terminating`` (a pod going away is no place to start a pull).

Three list-and-watch caches (EndpointSlices of the Service and Pods in its namespace, Nodes of the
cluster) keep this current, as client-go's reflectors do: a watch resumes from the last
resourceVersion seen, bookmarks included; a version the server no longer has (410 Gone) is listed
again at once; any other failure waits (exponential backoff with jitter, reset by a good list) and
lists again. Only what the servers are made of is kept (a Node's status heartbeat changes nothing).

`ServiceDiscovery` is an inventory source (`refresh() -> Snapshot`, see `ollama.inventory`), with
`on_change` called when the servers (names, URLs, labels) change. It never raises for what the
cluster says: a Service that does not exist, has no ready endpoint, or cannot be read gives the
servers last seen (none at first) and a problem saying why. A server whose labels are not all known
(its pod or node not seen yet) is left out, with a problem, rather than placed by half its labels:
a placement that no longer matched would delete the model there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..models.naming import dns1123_label_error
from ..ollama.inventory import FileProblem, Inventory, InventoryError, Server, Snapshot, derived_name
from .cache import CONNECT_TIMEOUT, GONE, LIST_READ_TIMEOUT, Gone, LiveWatch, describe_error, stop_watch_thread

__all__ = ["InventorySource", "ServiceDiscovery", "ServiceRef", "servers_of"]

log = logging.getLogger("ollama_gitops.cluster.discovery")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_ADDRESS_PREFERENCE = {"IPv4": 0, "IPv6": 1, "FQDN": 2}


class InventorySource(Protocol):
    """Where the fleet's servers come from (fleet-design.md): asked at the start of every cycle."""

    def refresh(self) -> Snapshot: ...


@dataclass(frozen=True)
class ServiceRef:
    """`NAMESPACE/NAME` of the Service whose endpoints are the servers."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str, *, source: str = "--ollama-service") -> ServiceRef:
        """`InventoryError` (naming `source`) unless `text` is NAMESPACE/NAME, both DNS-1123 labels."""
        namespace, slash, name = text.strip().partition("/")
        if not slash or "/" in name:
            raise InventoryError(f"{source} {text!r} must be NAMESPACE/NAME (the Service of the Ollama pods)")
        for what, value in (("namespace", namespace), ("Service name", name)):
            if error := dns1123_label_error(value):
                raise InventoryError(f"{source} {text!r}: the {what} {value!r} {error}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------- what is kept of each object

@dataclass(frozen=True)
class _Endpoint:
    addresses: tuple[str, ...]
    usable: bool  # ready, serving, not terminating (see the module docstring)
    pod: str | None  # targetRef name, when it is a Pod
    node: str | None


@dataclass(frozen=True)
class _Slice:
    name: str
    address_type: str
    port: tuple[int, str] | str  # (port, scheme), or why the slice has no usable one
    endpoints: tuple[_Endpoint, ...]


@dataclass(frozen=True)
class _Pod:
    labels: tuple[tuple[str, str], ...]
    node: str | None


def _labels(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(((obj.get("metadata") or {}).get("labels") or {}).items()))


def _usable(conditions: Mapping[str, Any]) -> bool:
    return (conditions.get("ready") is not False and conditions.get("serving") is not False
            and conditions.get("terminating") is not True)


def _slice_port(obj: Mapping[str, Any]) -> tuple[int, str] | str:
    ports = [p for p in obj.get("ports") or [] if (p or {}).get("protocol", "TCP") == "TCP"]
    named = [p for p in ports if p.get("name") == "http"]
    chosen = named[0] if named else ports[0] if len(ports) == 1 else None
    if chosen is None:
        names = ", ".join(repr(p.get("name") or "") for p in ports) or "none"
        return f"its TCP ports ({names}) are not one, and none is named 'http'"
    if not isinstance(chosen.get("port"), int):
        return "its port has no number"
    scheme = "https" if str(chosen.get("appProtocol") or "").lower() == "https" else "http"
    return chosen["port"], scheme


def _project_slice(obj: Mapping[str, Any]) -> tuple[str, _Slice]:
    name = str((obj.get("metadata") or {}).get("name", ""))
    endpoints = []
    for endpoint in obj.get("endpoints") or []:
        ref = endpoint.get("targetRef") or {}
        endpoints.append(_Endpoint(
            addresses=tuple(str(a) for a in endpoint.get("addresses") or ()),
            usable=_usable(endpoint.get("conditions") or {}),
            pod=ref.get("name") if ref.get("kind") == "Pod" else None,
            node=endpoint.get("nodeName")))
    return name, _Slice(name, str(obj.get("addressType") or ""), _slice_port(obj), tuple(endpoints))


def _project_pod(obj: Mapping[str, Any]) -> tuple[str, _Pod]:
    return str(obj["metadata"]["name"]), _Pod(_labels(obj), (obj.get("spec") or {}).get("nodeName"))


def _project_node(obj: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return str(obj["metadata"]["name"]), _labels(obj)


# --------------------------------------------------------------------------- the servers, from those

def _server_name(pod: str) -> str:
    """A pod's name as a server name (a DNS-1123 label): itself when it is one (StatefulSet pods
    are), else made into one, cut and ended with a hash when too long."""
    if dns1123_label_error(pod) is None:
        return pod
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", pod.lower())).strip("-")
    # Always with the hash: `a.b` and `a-b` must not become one server.
    return name[:54].rstrip("-") + "-" + hashlib.sha256(pod.encode()).hexdigest()[:8]


def servers_of(service: ServiceRef, slices: Mapping[str, _Slice], pods: Mapping[str, _Pod],
               nodes: Mapping[str, tuple[tuple[str, str], ...]]) -> Snapshot:
    """The servers the Service's slices, its namespace's pods and the nodes make (pure)."""
    problems: list[str] = []
    chosen: dict[str, tuple[tuple[int, str, str], Server]] = {}
    waiting = 0
    for slice_ in sorted(slices.values(), key=lambda s: s.name):
        usable = [e for e in slice_.endpoints if e.usable and e.addresses]
        waiting += len(slice_.endpoints) - len(usable)
        if isinstance(slice_.port, str):
            if usable:
                problems.append(f"EndpointSlice {service.namespace}/{slice_.name} is not used: {slice_.port}")
            continue
        port, scheme = slice_.port
        for endpoint in usable:
            address = endpoint.addresses[0]
            host = f"[{address}]" if slice_.address_type == "IPv6" or ":" in address else address
            url = f"{scheme}://{host}:{port}"
            labels: dict[str, str] = {}
            node = endpoint.node
            if endpoint.pod is not None:
                pod = pods.get(endpoint.pod)
                if pod is None:
                    problems.append(f"pod {service.namespace}/{endpoint.pod} is not known yet: left out until it is")
                    continue
                node = node or pod.node
            if node is not None:
                if node not in nodes:
                    problems.append(f"node {node} of {endpoint.pod or address} is not known yet: left out until it is")
                    continue
                labels.update(nodes[node])
            if endpoint.pod is not None:
                labels.update(pods[endpoint.pod].labels)
            name = _server_name(endpoint.pod) if endpoint.pod is not None else derived_name(url)
            try:
                server = Server(name, url, labels)
            except InventoryError as exc:
                problems.append(f"{endpoint.pod or address} cannot be a server: {exc}")
                continue
            rank = (_ADDRESS_PREFERENCE.get(slice_.address_type, 3), slice_.name, address)
            if name not in chosen or rank < chosen[name][0]:
                chosen[name] = (rank, server)
    try:
        inventory = Inventory(tuple(server for _, server in chosen.values()))
    except InventoryError as exc:  # two pods at one address: only a cluster mid-change says that
        return Snapshot(Inventory(), tuple(FileProblem(p) for p in [*problems, str(exc)]))
    if not slices:
        problems.append(f"Service {service} has no EndpointSlice: it does not exist, has no selector, "
                        "or nothing has served it yet")
    elif not inventory.servers:
        problems.append(f"Service {service} has no ready endpoint"
                        + (f" ({waiting} not ready)" if waiting else ""))
    return Snapshot(inventory, tuple(FileProblem(p) for p in problems))


# --------------------------------------------------------------------------- list and watch

@dataclass
class ReflectorStats:
    """Counters, for tests (written by the reflector's thread only)."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    relists_after_gone: int = 0
    errors: int = 0


@dataclass
class _Backoff:
    """Exponential backoff with jitter (each wait shortened by up to a quarter at random), reset by success."""

    first: float
    cap: float
    _next: float = field(init=False, default=0.0)

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        self._next = min(self.cap, self._next * 2) if self._next else self.first
        return self._next * random.uniform(0.75, 1.0)


class _Reflector:
    """One kind of object, listed then watched, kept as `project` makes it (key -> value)."""

    def __init__(self, what: str, method: Callable[..., Any], args: tuple[Any, ...], selector: str | None,
                 project: Callable[[Mapping[str, Any]], tuple[str, Any]], changed: Callable[[], None], *,
                 watch_timeout: int, backoff: _Backoff) -> None:
        self.what = what
        self._method, self._args, self._selector = method, args, selector
        self._project, self._changed = project, changed
        self._watch_timeout, self._backoff = watch_timeout, backoff
        self.stats = ReflectorStats()
        self.items: dict[str, Any] = {}  # replaced, never changed in place: readers take a reference
        self.error: str | None = None
        self.synced = threading.Event()
        self._version = ""
        self._stopping = threading.Event()
        self._live = LiveWatch(self._stopping)
        self._thread = threading.Thread(target=self._run, name=f"ollama-gitops-discovery-{what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        if self._thread.ident is not None and not stop_watch_thread(self._thread, self._live.current, timeout):
            log.warning("discovery of %s still running %.1f s after stop()", self.what, timeout)

    def _kwargs(self) -> dict[str, Any]:
        return {"label_selector": self._selector} if self._selector else {}

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._list()
                while not self._stopping.is_set():
                    self._watch_once()
            except Gone as gone:
                self.stats.relists_after_gone += 1
                log.info("watch of %s expired (%s); listing again", self.what, gone)
            except Exception as error:
                if self._stopping.is_set():
                    break
                self.stats.errors += 1
                self.error = describe_error(error)
                delay = self._backoff.delay()
                log.warning("list/watch of %s failed (%s); listing again in %.1f s", self.what, self.error, delay)
                self._changed()
                self._stopping.wait(delay)

    def _list(self) -> None:
        self.stats.lists += 1
        response = self._method(*self._args, **self._kwargs(), _preload_content=False,
                                _request_timeout=(CONNECT_TIMEOUT, LIST_READ_TIMEOUT))
        try:
            answer = json.loads(response.data)
        finally:
            response.release_conn()
        items = dict(self._project(obj) for obj in answer.get("items") or ())
        self._version = str((answer.get("metadata") or {}).get("resourceVersion", ""))
        changed = items != self.items or self.error is not None or not self.synced.is_set()
        self.items, self.error = items, None
        self.synced.set()
        if changed:
            self._changed()

    def _watch_once(self) -> None:
        self.stats.watches += 1
        with closing(self._live.events(self._method, *self._args, **self._kwargs(),
                                       resource_version=self._version, timeout=self._watch_timeout)) as events:
            for kind, obj in events:
                self.stats.events += 1
                self._handle(kind, obj)
        # A watch that ran its course: the API works again. Not a good list alone (a watch refused
        # after each list must not make a list every half second).
        self._backoff.reset()

    def _handle(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "ERROR":  # the client raises these itself; kept in case a client version does not
            if obj.get("code") == GONE:
                raise Gone(obj.get("message", ""))
            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if version:
            self._version = version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only its version counts
        key, value = self._project(obj)
        if kind == "DELETED":
            if key not in self.items:
                return
            items = {k: v for k, v in self.items.items() if k != key}
        elif self.items.get(key) == value:
            return  # nothing the servers are made of changed (a status heartbeat)
        else:
            items = {**self.items, key: value}
        self.items = items
        self._changed()


# --------------------------------------------------------------------------- the source

class ServiceDiscovery:
    """The servers behind a Service, followed through watches (see the module docstring).

    :param on_change: called (from a watch thread, never under a lock) when the servers' names,
        URLs or labels change: it should only ask for a cycle. Settable after construction.
    :param departure_grace: seconds a server that stops being ready stays in the fleet, as it was
        last seen, before it leaves. A restarting pod (a rollout, a failed readiness probe, a node
        drain) comes back with its name and volume: kept, it is unreachable for that time (its
        models keep their state there, the cycle says so) instead of leaving and coming back, which
        would forget what was recorded there (that ollama-gitops pulled those models, so may prune
        them) and rewrite every model's status twice. A server scaled away leaves after the grace.
    """

    def __init__(self, api: client.ApiClient, service: ServiceRef, *, on_change: Callable[[], None] | None = None,
                 watch_timeout: int = 300, retry_delay: float = 0.5, max_retry_delay: float = 30.0,
                 departure_grace: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.on_change = on_change
        self._lock = threading.Lock()
        self._grace, self._clock = departure_grace, clock
        self._departed: dict[str, tuple[Server, float]] = {}  # not ready any more: as last seen, since when
        self._present: tuple[Server, ...] = ()  # the ready servers the last computation found
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)

        def reflector(what: str, method: Callable[..., Any], args: tuple[Any, ...], selector: str | None,
                      project: Callable[[Mapping[str, Any]], tuple[str, Any]]) -> _Reflector:
            return _Reflector(what, method, args, selector, project, self._changed, watch_timeout=watch_timeout,
                              backoff=_Backoff(retry_delay, max_retry_delay))

        self.slices = reflector("endpointslices", discovery.list_namespaced_endpoint_slice, (service.namespace,),
                                f"{SERVICE_NAME_LABEL}={service.name}", _project_slice)
        self.pods = reflector("pods", core.list_namespaced_pod, (service.namespace,), None, _project_pod)
        self.nodes = reflector("nodes", core.list_node, (), None, _project_node)
        self._reflectors = (self.slices, self.pods, self.nodes)
        self._snapshot = self._compute()

    def start(self) -> ServiceDiscovery:
        """Start following the Service (three watch threads). Returns self."""
        for reflector in self._reflectors:
            reflector.start()
        return self

    def wait_synced(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds in all) until each kind has been listed once."""
        deadline = time.monotonic() + timeout
        return all(r.synced.wait(max(0.0, deadline - time.monotonic())) for r in self._reflectors)

    def stop(self, timeout: float = 10.0) -> None:
        """End the watch threads."""
        for reflector in self._reflectors:
            reflector._stopping.set()
        for reflector in self._reflectors:
            reflector.stop(timeout)

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def refresh(self) -> Snapshot:
        """The servers as the watches have them now, and what is wrong (the watches do the reading;
        this only lets servers whose grace has run out leave)."""
        with self._lock:
            self._snapshot = self._compute()
            return self._snapshot

    def _compute(self) -> Snapshot:
        problems = [FileProblem(f"the {r.what} of Service {self.service} cannot be read: {r.error}"
                                + ("; using what was seen last" if r.synced.is_set() else ""))
                    for r in self._reflectors if r.error is not None]
        problems += [FileProblem(f"the {r.what} of Service {self.service} are not listed yet")
                     for r in self._reflectors if r.error is None and not r.synced.is_set()]
        if not all(r.synced.is_set() for r in self._reflectors):
            return Snapshot(Inventory(), tuple(problems))
        found = servers_of(self.service, self.slices.items, self.pods.items, self.nodes.items)
        inventory, kept = self._with_departed(found.inventory)
        return Snapshot(inventory, tuple(problems) + found.problems + kept)

    def _with_departed(self, ready: Inventory) -> tuple[Inventory, tuple[FileProblem, ...]]:
        """`ready` and the servers that left it less than the grace ago (under the lock)."""
        now = self._clock()
        names = set(ready.names)
        for server in self._present:
            if server.name not in names and server.name not in self._departed and self._grace > 0:
                self._departed[server.name] = (server, now)
        self._present = ready.servers
        urls = {server.url for server in ready}
        for name, (server, since) in list(self._departed.items()):
            # Back, its grace over, or its address taken by another pod: gone from the departed.
            if name in names or now - since >= self._grace or server.url in urls:
                del self._departed[name]
        kept = sorted(self._departed.values(), key=lambda item: item[0].name)
        problems = tuple(FileProblem(f"server {server.name} has had no ready endpoint for {now - since:.0f}s: kept "
                                     f"in the fleet, in case it is restarting, until {self._grace:.0f}s have passed")
                         for server, since in kept)
        return Inventory(ready.servers + tuple(server for server, _ in kept)), problems

    def _changed(self) -> None:
        with self._lock:
            before = self._snapshot
            self._snapshot = after = self._compute()
        if after.inventory == before.inventory:
            return
        log.info("action=servers service=%s servers=%s", self.service, ",".join(after.inventory.names) or "-")
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a faulty callback must not end the watch
                log.exception("discovery on_change callback failed")
