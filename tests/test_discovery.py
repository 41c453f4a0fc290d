"""Kubernetes discovery of the fleet (`--ollama-service`): a Service's ready pods are the servers,
with their pods' and nodes' labels, followed through watches against the stand-in API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from ollama_gitops.reconciler.cluster.discovery import ServiceDiscovery, ServiceRef, _Pod, _project_slice, servers_of
from ollama_gitops.reconciler.ollama.inventory import InventoryError
from standins.kube_apiserver import KubeStandin
from waiting import eventually

NS = "ollama"
SERVICE = ServiceRef(NS, "ollama")
WAIT = 30.0


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(bookmark_interval=0) as server:
        server.add_namespace(NS)
        yield server


@pytest.fixture
def api(kube: KubeStandin) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


class Cluster:
    """Nodes, pods and the Service's EndpointSlices, written through the real client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core, self.discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)

    def node(self, name: str, **labels: str) -> None:
        self.core.create_node({"metadata": {"name": name, "labels": labels}})

    def pod(self, name: str, node: str, **labels: str) -> None:
        self.core.create_namespaced_pod(NS, {"metadata": {"name": name, "labels": {"app": "ollama", **labels}},
                                             "spec": {"nodeName": node, "containers": [{"name": "ollama", "image": "o"}]}})

    def slice(self, name: str, endpoints: list[dict], *, address_type: str = "IPv4", create: bool = True,
              ports: list[dict] | None = None) -> None:
        body = {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": SERVICE.name}},
                "addressType": address_type, "endpoints": endpoints,
                "ports": ports if ports is not None else [{"name": "http", "port": 11434, "protocol": "TCP"}]}
        if create:
            self.discovery.create_namespaced_endpoint_slice(NS, body)
        else:
            self.discovery.patch_namespaced_endpoint_slice(name, NS, {"endpoints": endpoints})


def endpoint(pod: str | None, address: str, node: str | None = None, **conditions: bool) -> dict:
    found: dict = {"addresses": [address], "conditions": conditions or {"ready": True, "serving": True,
                                                                         "terminating": False}}
    if pod is not None:
        found["targetRef"] = {"kind": "Pod", "namespace": NS, "name": pod}
    if node is not None:
        found["nodeName"] = node
    return found


def servers(discovery: ServiceDiscovery) -> dict[str, tuple[str, dict[str, str]]]:
    return {s.name: (s.url, dict(s.labels)) for s in discovery.refresh().inventory}


def problems(discovery: ServiceDiscovery) -> list[str]:
    return [p.message for p in discovery.refresh().problems]


@pytest.fixture
def follow(api: client.ApiClient) -> Iterator:
    started: list[ServiceDiscovery] = []

    def start(**kwargs: object) -> tuple[ServiceDiscovery, list[int]]:
        changes: list[int] = []
        discovery = ServiceDiscovery(api, SERVICE, on_change=lambda: changes.append(1),
                                     retry_delay=0.05, max_retry_delay=0.2, **kwargs).start()  # type: ignore[arg-type]
        started.append(discovery)
        assert discovery.wait_synced(WAIT)
        return discovery, changes

    yield start
    for discovery in started:
        discovery.stop()


def test_ready_endpoints_are_servers_named_after_their_pods_with_pod_and_node_labels(api, follow) -> None:
    cluster = Cluster(api)
    cluster.node("gpu-node-1", **{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "zone": "eu"})
    cluster.node("cpu-node-1", zone="us")
    for name, node in (("ollama-0", "gpu-node-1"), ("ollama-1", "cpu-node-1"), ("ollama-2", "cpu-node-1"),
                       ("ollama-3", "cpu-node-1"), ("ollama-4", "cpu-node-1")):
        cluster.pod(name, node, zone="pod-says")  # the pod's own label wins over its node's
    cluster.slice("ollama-v4", [
        endpoint("ollama-0", "10.0.0.10", "gpu-node-1"),
        endpoint("ollama-1", "10.0.0.11"),  # no nodeName on the endpoint: the pod's spec.nodeName
        endpoint("ollama-2", "10.0.0.12", "cpu-node-1", ready=False, serving=False, terminating=False),
        # terminating, still serving: going away, so no place for a pull
        endpoint("ollama-3", "10.0.0.13", "cpu-node-1", ready=False, serving=True, terminating=True),
        # publishNotReadyAddresses marks every endpoint ready; serving says the pod is not
        endpoint("ollama-4", "10.0.0.14", "cpu-node-1", ready=True, serving=False, terminating=False),
    ])
    # dual stack: the same pod in the IPv6 slice is the same server, kept at its IPv4 address
    cluster.slice("ollama-v6", [endpoint("ollama-0", "fd00::10", "gpu-node-1")], address_type="IPv6")
    discovery, _ = follow()
    eventually(lambda: len(servers(discovery)) == 2, timeout=WAIT, what="two servers")
    assert servers(discovery) == {
        "ollama-0": ("http://10.0.0.10:11434", {"app": "ollama", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                                                "zone": "pod-says"}),
        "ollama-1": ("http://10.0.0.11:11434", {"app": "ollama", "zone": "pod-says"}),
    }
    assert problems(discovery) == []


def test_pods_coming_and_going_are_followed_and_each_change_is_told(api, follow) -> None:
    cluster = Cluster(api)
    discovery, changes = follow()
    assert servers(discovery) == {}
    assert problems(discovery) == ["Service ollama/ollama has no EndpointSlice: it does not exist, has no "
                                   "selector, or nothing has served it yet"]
    cluster.node("node-a", gpu="l4")
    cluster.pod("ollama-0", "node-a")
    cluster.pod("ollama-1", "node-a")
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a"),
                               endpoint("ollama-1", "10.0.0.11", "node-a", ready=False, serving=False)])
    eventually(lambda: list(servers(discovery)) == ["ollama-0"], timeout=WAIT, what="ollama-0 discovered")
    eventually(lambda: len(changes) == 1, timeout=WAIT, what="one change told")
    assert servers(discovery)["ollama-0"][1] == {"app": "ollama", "gpu": "l4"}

    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a"),
                               endpoint("ollama-1", "10.0.0.11", "node-a")], create=False)  # ollama-1 ready
    eventually(lambda: list(servers(discovery)) == ["ollama-0", "ollama-1"], timeout=WAIT, what="ollama-1 ready")

    # A node's labels change (a GPU added): its servers' labels follow; a heartbeat changes nothing.
    told = len(changes)
    cluster.core.patch_node("node-a", {"metadata": {"labels": {"gpu": "a100"}}})
    eventually(lambda: servers(discovery)["ollama-1"][1]["gpu"] == "a100", timeout=WAIT, what="node label followed")
    eventually(lambda: len(changes) == told + 1, timeout=WAIT, what="the label change told")
    heartbeats = discovery.nodes.stats.events
    cluster.core.patch_node("node-a", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    eventually(lambda: discovery.nodes.stats.events > heartbeats, timeout=WAIT, what="the heartbeat's event")
    assert len(changes) == told + 1

    # Scaled down: the endpoint leaves the slice, then the pod goes.
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a")], create=False)
    cluster.core.delete_namespaced_pod("ollama-1", NS)
    eventually(lambda: list(servers(discovery)) == ["ollama-0"], timeout=WAIT, what="ollama-1 gone")

    # Not ready (a restart): no server, and the problem says why.
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a", ready=False, serving=False)], create=False)
    eventually(lambda: servers(discovery) == {}, timeout=WAIT, what="no ready server")
    assert problems(discovery) == ["Service ollama/ollama has no ready endpoint (1 not ready)"]


def test_a_server_that_stops_being_ready_stays_for_the_grace_then_leaves(api, follow) -> None:
    cluster = Cluster(api)
    cluster.node("node-a")
    cluster.pod("ollama-0", "node-a")
    cluster.pod("ollama-1", "node-a")
    ready = [endpoint("ollama-0", "10.0.0.10", "node-a"), endpoint("ollama-1", "10.0.0.11", "node-a")]
    cluster.slice("ollama-x", ready)
    now = [1000.0]
    discovery, changes = follow(departure_grace=60, clock=lambda: now[0])
    eventually(lambda: list(servers(discovery)) == ["ollama-0", "ollama-1"], timeout=WAIT, what="two servers")
    told = len(changes)

    # ollama-1 restarts (not ready): still a server, at its last address, and the problem says why.
    cluster.slice("ollama-x", [ready[0], endpoint("ollama-1", "10.0.0.11", "node-a", ready=False, serving=False)],
                  create=False)
    eventually(lambda: problems(discovery) == ["server ollama-1 has had no ready endpoint for 0s: kept in the fleet, "
                                               "in case it is restarting, until 60s have passed"],
               timeout=WAIT, what="ollama-1 kept")
    assert list(servers(discovery)) == ["ollama-0", "ollama-1"] and len(changes) == told  # no cycle asked for
    now[0] += 30
    cluster.slice("ollama-x", [ready[0], endpoint("ollama-1", "10.0.0.21", "node-a")], create=False)  # back, new IP
    eventually(lambda: servers(discovery)["ollama-1"][0] == "http://10.0.0.21:11434", timeout=WAIT, what="back")
    assert problems(discovery) == []

    # Scaled away: kept until the grace has run out, then gone at the next refresh.
    cluster.slice("ollama-x", [ready[0]], create=False)
    eventually(lambda: len(problems(discovery)) == 1, timeout=WAIT, what="ollama-1 kept again")
    now[0] += 59
    assert list(servers(discovery)) == ["ollama-0", "ollama-1"]
    now[0] += 1
    assert list(servers(discovery)) == ["ollama-0"] and problems(discovery) == []


def test_a_pod_whose_labels_are_not_all_known_is_left_out_not_placed_by_half_its_labels(api, follow) -> None:
    cluster = Cluster(api)
    cluster.pod("ollama-0", "node-late")
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-late"), endpoint("ollama-9", "10.0.0.19")])
    discovery, _ = follow()
    assert servers(discovery) == {}
    assert problems(discovery) == ["node node-late of ollama-0 is not known yet: left out until it is",
                                   "pod ollama/ollama-9 is not known yet: left out until it is",
                                   "Service ollama/ollama has no ready endpoint"]
    cluster.node("node-late", gpu="a100")
    eventually(lambda: list(servers(discovery)) == ["ollama-0"], timeout=WAIT, what="ollama-0 once its node is known")


def test_an_expired_watch_is_listed_again_and_a_failing_api_is_retried(kube, api, follow) -> None:
    cluster = Cluster(api)
    cluster.node("node-a")
    cluster.pod("ollama-0", "node-a")
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a")])
    discovery, _ = follow(watch_timeout=1)
    eventually(lambda: list(servers(discovery)) == ["ollama-0"], timeout=WAIT, what="ollama-0")

    # Versions the server has forgotten: each watch, resumed after its timeout, is answered 410.
    kube.add_namespace("elsewhere")  # a write, so every watch's version is older than the history
    kube.expire_history()
    eventually(lambda: all(r.stats.relists_after_gone >= 1 for r in (discovery.slices, discovery.pods, discovery.nodes)),
               timeout=WAIT, what="a relist of each kind after 410")
    cluster.pod("ollama-1", "node-a")
    cluster.slice("ollama-x", [endpoint("ollama-0", "10.0.0.10", "node-a"), endpoint("ollama-1", "10.0.0.11", "node-a")],
                  create=False)
    eventually(lambda: list(servers(discovery)) == ["ollama-0", "ollama-1"], timeout=WAIT, what="followed after relist")

    # The API refuses the pods for a while (RBAC not applied yet): the last servers stay, the
    # problem says so, and the list is retried until it works.
    kube.inject("GET", r"/api/v1/namespaces/ollama/pods$", 403, times=3)
    kube.expire_history()  # the next resumed watch lists again, into the refusals
    kube.add_namespace("elsewhere-2")
    eventually(lambda: discovery.pods.stats.errors >= 1, timeout=WAIT, what="a refused list")
    eventually(lambda: discovery.pods.error is None and discovery.pods.stats.errors == 3, timeout=WAIT,
               what="the list retried until it works")
    assert list(servers(discovery)) == ["ollama-0", "ollama-1"] and problems(discovery) == []


def test_a_refused_first_list_is_a_problem_not_a_crash(kube, api) -> None:
    kube.inject("GET", r"/apis/discovery.k8s.io/v1/namespaces/ollama/endpointslices$", 403, times=None)
    discovery = ServiceDiscovery(api, SERVICE, retry_delay=0.05, max_retry_delay=0.1).start()
    try:
        eventually(lambda: discovery.slices.stats.errors >= 2, timeout=WAIT, what="the list tried again")
        snapshot = discovery.refresh()
        assert snapshot.inventory.servers == ()
        assert snapshot.problems[0].message.startswith(
            "the endpointslices of Service ollama/ollama cannot be read: HTTP 403")
    finally:
        discovery.stop()


def test_addresses_ports_and_names_as_the_slices_give_them() -> None:
    def slice_(name: str, endpoints: list[dict], ports: list[dict], address_type: str = "IPv4"):
        return _project_slice({"metadata": {"name": name}, "addressType": address_type, "endpoints": endpoints,
                               "ports": ports})

    pods = {"web.ollama.0": _Pod((), None)}
    slices = dict([
        slice_("v6", [endpoint(None, "fd00::7")], [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}],
               address_type="IPv6"),
        slice_("tls", [endpoint("web.ollama.0", "10.0.0.8")], [{"port": 443, "appProtocol": "https"}]),
        slice_("many", [endpoint(None, "10.0.0.9")], [{"name": "a", "port": 1}, {"name": "b", "port": 2}]),
    ])
    found = servers_of(SERVICE, slices, pods, {})
    assert {s.name: s.url for s in found.inventory} == {
        "fd00-7-8080": "http://[fd00::7]:8080",  # no pod: named after its address, as a bare URL is
        "web-ollama-0-" + found.inventory.servers[1].name[-8:]: "https://10.0.0.8:443",
    }
    assert [p.message for p in found.problems] == [
        "EndpointSlice ollama/many is not used: its TCP ports ('a', 'b') are not one, and none is named 'http'"]

    assert ServiceRef.parse("ollama/ollama") == SERVICE and str(SERVICE) == "ollama/ollama"
    for bad in ("ollama", "a/b/c", "Ollama/x", "ns/"):
        with pytest.raises(InventoryError, match="--ollama-service"):
            ServiceRef.parse(bad)


def test_ollama_service_needs_kubernetes_mode_and_a_namespace_and_name(kube, tmp_path, monkeypatch) -> None:
    from apirig import settings_for
    from gitrepos import init_bare
    from ollama_gitops.reconciler import service

    remote = str(init_bare(tmp_path / "remote.git"))
    with pytest.raises(service.ConfigurationError, match="--ollama-service needs Kubernetes mode"):
        service.build(settings_for(tmp_path / "a", remote, "http://127.0.0.1:1", "--ollama-service", "ollama/ollama"))
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(service.ConfigurationError, match="must be NAMESPACE/NAME"):
        service.build(settings_for(tmp_path / "b", remote, "http://127.0.0.1:1", "--kubernetes", "on",
                                   "--ollama-service", "ollama"))


def test_a_fleet_in_a_cluster_follows_the_pods_of_its_service(kube, api, tmp_path, monkeypatch) -> None:
    """`reconcile --kubernetes on --ollama-service`: each ready pod is a server placed on by its
    node's labels; a pod that leaves is forgotten (after the grace), nothing deleted on it; back,
    what it has is found."""
    from urllib.parse import urlsplit

    from apirig import settings_for
    from gitrepos import WorkRepo, init_bare
    from ollama_gitops.reconciler import service as reconciler_service
    from ollama_gitops.reconciler.cluster import connect

    monkeypatch.setattr(connect, "DEPARTURE_GRACE", 1.0)  # not five minutes of a scaled-away pod here
    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    cluster = Cluster(api)
    cluster.node("gpu-node", **{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
    cluster.node("cpu-node")
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.model("default", "gemma3", "1b", "servers:\n  matchLabels:\n    nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB\n")
    work.commit("two models, one for the A100s")
    work.push()
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    def serve(name: str, node: str, ollama: OllamaStandin) -> None:
        """The pod `name` on `node`, ready, at the stand-in's address (a slice per pod: ports differ here)."""
        cluster.pod(name, node)
        port = urlsplit(ollama.url).port
        cluster.slice(f"ollama-{name}", [endpoint(name, "127.0.0.1", node)],
                      ports=[{"name": "http", "port": port, "protocol": "TCP"}])

    def placed() -> dict[str, list[tuple[str, str]]]:
        return {o["metadata"]["name"]: [(s["name"], s["state"]) for s in (o.get("status") or {}).get("servers") or []]
                for o in kube.objects()}

    with OllamaStandin(dict(CATALOGUE)) as gpu, OllamaStandin(dict(CATALOGUE)) as cpu:
        serve("ollama-0", "gpu-node", gpu)
        serve("ollama-1", "cpu-node", cpu)
        settings = settings_for(tmp_path / "state", str(remote), gpu.url, "--kubernetes", "on",
                                "--lease-duration", "2", "--interval", "1", "--ollama-service", str(SERVICE))
        running = reconciler_service.build(settings)
        try:
            running.start()
            eventually(lambda: placed() == {"llama3.2-1b": [("ollama-0", "Ready"), ("ollama-1", "Ready")],
                                            "gemma3-1b": [("ollama-0", "Ready")]}, timeout=90, what="placed by labels")
            assert sorted(gpu.installed()) == ["gemma3:1b", "llama3.2:1b"] and list(cpu.installed()) == ["llama3.2:1b"]

            # Scaled down: ollama-1 leaves the Service; it is forgotten, and nothing is deleted on it.
            cluster.discovery.delete_namespaced_endpoint_slice("ollama-ollama-1", NS)
            cluster.core.delete_namespaced_pod("ollama-1", NS)
            eventually(lambda: placed()["llama3.2-1b"] == [("ollama-0", "Ready")], timeout=90, what="ollama-1 gone")
            assert list(cpu.installed()) == ["llama3.2:1b"] and not cpu.delete_count

            # Back (the same pod name, the same volume): what it has is found there, not pulled again.
            pulls = dict(cpu.pull_count)
            serve("ollama-1", "cpu-node", cpu)
            eventually(lambda: placed()["llama3.2-1b"] == [("ollama-0", "Ready"), ("ollama-1", "Ready")], timeout=90,
                       what="ollama-1 back")
            assert cpu.pull_count == pulls
        finally:
            running.stop()
