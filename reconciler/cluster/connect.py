"""Connecting Kubernetes mode: the API client from the environment, and its parts wired together."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from ..models.desired import ModelKey
from ..state import ModelRecord, SyncStatus
from .cache import ResourceCache
from .client import ClusterClient
from .discovery import ServiceDiscovery, ServiceRef
from .status import ClusterStateStore, record_from
from .sync import ClusterSync

log = logging.getLogger("ollama_gitops.cluster")

SYNC_TIMEOUT = 60.0  # seconds to wait for the first list of the managed resources
DISCOVERY_TIMEOUT = 20.0  # and then of the Ollama Service's endpoints, pods and nodes (startupProbe: 90 s in all)
DEPARTURE_GRACE = 300.0  # seconds a server not ready any more stays in the fleet (ServiceDiscovery)


class ClusterUnavailable(Exception):
    """No usable cluster configuration, or the API server did not answer."""


def api_client() -> client.ApiClient:
    """In a pod, its service account; elsewhere, the kubeconfig (`KUBECONFIG` or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # The client reads KUBECONFIG once, at import: pass it, so the environment of now counts.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise ClusterUnavailable(f"no usable Kubernetes configuration: {exc}") from None
    return client.ApiClient(configuration)


def start_cache(api: client.ApiClient, on_change: Callable[[set[ModelKey]], None] | None = None) -> ResourceCache:
    """A running cache of the managed resources, once it has taken in the first list."""
    cache = ResourceCache(client.CustomObjectsApi(api), on_change=on_change).start()
    if not cache.wait_synced(SYNC_TIMEOUT):
        cache.stop()
        raise ClusterUnavailable(f"could not list OllamaModel resources within {SYNC_TIMEOUT:.0f}s; "
                                 "is the CRD installed and the API server reachable?")
    return cache


def discover(api: client.ApiClient, service: str, on_change: Callable[[], None]) -> ServiceDiscovery:
    """The servers behind `service` (NAMESPACE/NAME, `InventoryError` when it is not), followed from
    now on. Waits a little for a first list, so that the first cycle has them; without it, carries on:
    the inventory's problems then say what cannot be read, each cycle, until it can."""
    discovery = ServiceDiscovery(api, ServiceRef.parse(service), on_change=on_change,
                                 departure_grace=DEPARTURE_GRACE).start()
    if not discovery.wait_synced(DISCOVERY_TIMEOUT):
        log.warning("the Ollama servers of Service %s are not listed after %.0fs: %s", service, DISCOVERY_TIMEOUT,
                    "; ".join(p.message for p in discovery.refresh().problems))
    return discovery


@dataclass
class ClusterParts:
    """What a Kubernetes-mode reconciler uses beside the standalone parts."""

    api: client.ApiClient
    cache: ResourceCache
    store: ClusterStateStore
    sync: ClusterSync

    def close(self) -> None:
        self.sync.close()
        self.store.close()
        self.cache.stop()


def connect(state_dir: Path, *, allow_empty: bool, on_change: Callable[[set[ModelKey]], None],
            leading: Callable[[], bool] = lambda: True) -> ClusterParts:
    api = api_client()
    cache = start_cache(api, on_change)
    kube = ClusterClient(api, cache)
    store = ClusterStateStore(state_dir, kube, cache, leading=leading)
    return ClusterParts(api, cache, store, ClusterSync(kube, cache, store, allow_empty=allow_empty, leading=leading))


class ClusterStatusSource:
    """Status for an API running apart from the reconciler: read from the resources, through the
    same watch-backed cache (so the API needs only get, list and watch)."""

    def __init__(self, cache: ResourceCache) -> None:
        self._cache = cache
        self.sync = SyncStatus()

    @property
    def version(self) -> int:
        return self._cache.stats.events + self._cache.stats.lists

    def record(self, key: ModelKey) -> ModelRecord | None:
        resource = self._cache.get(key)
        return record_from(resource, restarting=False) if resource is not None else None

    def records(self, keys=None) -> dict[ModelKey, ModelRecord]:  # type: ignore[no-untyped-def]
        snapshot = self._cache.snapshot()
        chosen = snapshot.keys() if keys is None else [k for k in keys if k in snapshot]
        return {key: record_from(snapshot[key], restarting=False) for key in chosen}
