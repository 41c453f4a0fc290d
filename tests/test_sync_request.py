"""The cross-process sync request of Kubernetes mode (`reconciler.cluster.syncrequest`): the API's
patch of one ConfigMap annotation, and the reconciler's watch of it, with the real `kubernetes`
client against the stand-in API server over real HTTP. Waits poll for a condition; none sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client

from ollama_gitops.reconciler.cluster.syncrequest import (ANNOTATION, CONFIG_MAP, SyncRequestUnavailable,
                                                          SyncRequestWatcher, request_sync)
from standins.kube_apiserver import KubeStandin
from waiting import eventually

NS = "ops"
T0 = datetime(2026, 11, 25, 14, 0, 0, 123000, tzinfo=timezone.utc)


class Requests:
    """The on_request callback: counts calls; `leading` is what the watcher asks before one."""

    def __init__(self) -> None:
        self.count = 0
        self.leading = True
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(bookmark_interval=0) as server:
        server.add_namespace(NS)
        yield server


@pytest.fixture
def api(kube: KubeStandin) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


@pytest.fixture
def watching(kube: KubeStandin, api: client.ApiClient) -> Iterator[tuple[SyncRequestWatcher, Requests]]:
    requests = Requests()
    watcher = SyncRequestWatcher(kube.api_client(), NS, requests, leading=lambda: requests.leading,
                                 watch_timeout=1, retry_delay=0.1).start()
    assert watcher.wait_listed(10)
    yield watcher, requests
    watcher.stop()


def test_the_watcher_creates_the_config_map_and_a_request_starts_one_cycle(kube, api, watching) -> None:
    watcher, requests = watching
    (config_map,) = kube.config_maps(NS)
    assert config_map["metadata"]["name"] == CONFIG_MAP
    assert config_map["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ollama-gitops"}
    assert request_sync(api, NS, T0) == "2026-11-25T14:00:00.123Z"
    assert kube.config_maps(NS)[0]["metadata"]["annotations"] == {ANNOTATION: "2026-11-25T14:00:00.123Z"}
    eventually(lambda: requests.count == 1)
    request_sync(api, NS, T0)  # the same value again: the server stores nothing, nobody is woken
    request_sync(api, NS, T0 + timedelta(seconds=1))
    eventually(lambda: requests.count >= 2)
    # Events arrive in order: had the repeated value woken the watcher, it would have counted before this one.
    assert requests.count == 2 and watcher.requests == 2


def test_a_value_present_at_start_is_the_baseline_not_a_request(kube, api) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(NS, {"metadata": {"name": CONFIG_MAP}})
    request_sync(api, NS, T0)
    requests = Requests()
    watcher = SyncRequestWatcher(kube.api_client(), NS, requests, watch_timeout=1).start()
    try:
        assert watcher.wait_listed(10) and watcher.last_seen == "2026-11-25T14:00:00.123Z"
        request_sync(api, NS, T0 + timedelta(seconds=1))
        eventually(lambda: requests.count >= 1)
        assert requests.count == 1  # the new value only; the one found at start asked for nothing
    finally:
        watcher.stop()


def test_a_standby_ignores_requests(api, watching) -> None:
    watcher, requests = watching
    requests.leading = False
    ignored = request_sync(api, NS, T0)
    eventually(lambda: watcher.last_seen == ignored)
    assert requests.count == 0 and watcher.requests == 0
    requests.leading = True
    request_sync(api, NS, T0 + timedelta(seconds=1))
    eventually(lambda: requests.count == 1)


def test_after_the_watch_expires_it_lists_again(kube, api, watching) -> None:
    _, requests = watching
    lists = kube.count("list", path_regex="/configmaps$")
    # A write the watch does not see (another name) moves the server on; then history is forgotten,
    # so resuming from the watch's version (at its next timeout) is a 410 and it must list again.
    client.CoreV1Api(api).create_namespaced_config_map(NS, {"metadata": {"name": "unrelated"}})
    kube.expire_history()
    eventually(lambda: kube.count("list", path_regex="/configmaps$") > lists)
    request_sync(api, NS, T0)
    eventually(lambda: requests.count == 1)


def test_a_request_made_while_nothing_watched_is_seen_by_the_next_list(kube, api, watching) -> None:
    _, requests = watching
    attempts = kube.count(path_regex=f"/namespaces/{NS}/configmaps$")
    kube.inject("GET", f"/namespaces/{NS}/configmaps$", 500, times=None)  # lists and watches fail
    eventually(lambda: kube.count(path_regex=f"/namespaces/{NS}/configmaps$") > attempts + 2)  # the watch ended
    request_sync(api, NS, T0)
    assert requests.count == 0
    kube.clear_faults()
    eventually(lambda: requests.count == 1)


def test_a_deleted_config_map_is_created_again(kube, api, watching) -> None:
    uid = kube.config_maps(NS)[0]["metadata"]["uid"]
    client.CoreV1Api(api).delete_namespaced_config_map(CONFIG_MAP, NS)
    eventually(lambda: [c for c in kube.config_maps(NS) if c["metadata"]["uid"] != uid])
    _, requests = watching
    request_sync(api, NS, T0)
    eventually(lambda: requests.count == 1)


def test_requesting_makes_one_patch_of_the_one_config_map(kube, api, watching) -> None:
    kube.clear_request_log()
    request_sync(api, NS, T0)
    assert [(r.verb, r.path, r.content_type) for r in kube.request_log if "/configmaps" in r.path
            and r.verb != "watch"] == [("patch", f"/api/v1/namespaces/{NS}/configmaps/{CONFIG_MAP}",
                                        "application/merge-patch+json")]


def test_requesting_without_the_config_map_says_the_reconciler_is_not_running(kube, api) -> None:
    with pytest.raises(SyncRequestUnavailable, match=f"the ConfigMap {NS}/{CONFIG_MAP} does not exist: the "
                                                     "reconciler creates it when it starts"):
        request_sync(api, NS, T0)
    kube.inject("PATCH", "/configmaps/", 403)
    client.CoreV1Api(api).create_namespaced_config_map(NS, {"metadata": {"name": CONFIG_MAP}})
    with pytest.raises(SyncRequestUnavailable, match="HTTP 403"):
        request_sync(api, NS, T0)


def test_requesting_with_the_api_server_down_is_unavailable(kube, api) -> None:
    kube.stop()
    with pytest.raises(SyncRequestUnavailable, match="not reachable"):
        request_sync(api, NS, T0)
