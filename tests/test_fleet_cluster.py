"""The fleet in Kubernetes mode beyond discovery (issue 12): an OllamaModel's seed fields are the
whole over the servers its selector picks in the reconciler's inventory (so a selector matching no
server says so), and the leader publishes the servers in a ConfigMap that the API deployed apart
reads, for `GET /api/v1/servers` and the model views."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from ollama_gitops.reconciler.cluster.fleetmap import CONFIG_MAP, KEY, FleetPublisher
from ollama_gitops.reconciler.fleetstatus import NO_SERVER_MATCHES
from ollama_gitops.reconciler.git.repo import GitRepo
from ollama_gitops.reconciler.ollama.inventory import FileInventory
from ollama_gitops.reconciler.reconcile import Reconciler
from ollama_gitops.reconciler.state import ServerSeen
from standins.kube_apiserver import KubeStandin
from standins.ollama_server import OllamaStandin
from test_kubernetes_mode import KubeRig, conditions_of, crd_schema, start_api_alone
from waiting import eventually

A100 = "servers:\n  matchLabels: {gpu: a100}\n"
FLEET_WRITES = rf"/configmaps(/{CONFIG_MAP})?$"


@pytest.fixture
def kube():
    with KubeStandin(schema=crd_schema()) as server:
        yield server


class FleetRig(KubeRig):
    """The Kubernetes-mode rig over a servers file (one server, gpu-1, at the stand-in Ollama),
    wired as `service.build` wires it."""

    def __init__(self, tmp_path: Path, kube: KubeStandin, ollama: OllamaStandin) -> None:
        super().__init__(tmp_path, kube, ollama)
        self.reconciler.close()
        self.servers_file = tmp_path / "servers.yaml"
        self.label(gpu="l4")
        self.reconciler = Reconciler(GitRepo(str(self.remote), "main", self.state_dir / "clone.git"),
                                     FileInventory(self.servers_file), self.store, cluster=self.sync)
        self.store.placements = self.reconciler.placements

    def label(self, **labels: str) -> None:
        """gpu-1's labels, in the servers file (re-read at the next cycle)."""
        shown = ", ".join(f"{k}: {v}" for k, v in labels.items())
        self.servers_file.write_text(f"servers:\n  - {{name: gpu-1, url: \"{self.ollama.url}\", labels: {{{shown}}}}}\n")


@pytest.fixture
def krig(tmp_path: Path, kube: KubeStandin, ollama: OllamaStandin):
    rig = FleetRig(tmp_path, kube, ollama)
    yield rig
    rig.close()


def status_of(rig: FleetRig, name: str) -> dict:
    resource = rig.resource("default", name)
    assert resource is not None, name
    return resource.get("status") or {}


def test_a_model_no_server_matches_says_so_in_its_status_until_a_label_places_it(krig: FleetRig) -> None:
    krig.work.model("default", "llama3.2", "1b", A100)
    krig.work.model("default", "gemma3", "1b", A100 + "suspend: true\n")
    krig.work.model("default", "qwen2.5", "0.5b")
    krig.push()
    krig.settle()
    for name in ("llama3.2-1b", "gemma3-1b"):
        status = status_of(krig, name)
        assert (status["state"], status.get("error"), status.get("servers")) == ("Pending", NO_SERVER_MATCHES, []), name
        ready = conditions_of(krig.resource("default", name))["Ready"]
        assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NoServerMatches", NO_SERVER_MATCHES)
    assert status_of(krig, "qwen2.5-0.5b")["state"] == "Ready"

    krig.label(gpu="a100")  # the inventory now places them; the suspended one's record does not change
    krig.settle()
    assert status_of(krig, "llama3.2-1b")["state"] == "Ready" and "error" not in status_of(krig, "llama3.2-1b")
    gemma = status_of(krig, "gemma3-1b")
    assert gemma["state"] == "Pending" and "error" not in gemma
    assert conditions_of(krig.resource("default", "gemma3-1b"))["Ready"]["reason"] == "Suspended"


def test_the_leader_publishes_the_servers_when_they_change_and_the_api_alone_shows_them(
        krig: FleetRig, tmp_path: Path, ollama: OllamaStandin) -> None:
    publisher = FleetPublisher(krig.api_client, "default", clock=lambda: 0.0)  # lastSeen alone is never due
    krig.store.publisher = publisher
    krig.work.model("default", "llama3.2", "1b", A100)
    krig.push()
    krig.settle()
    publisher.flush()
    (configmap,) = [c for c in krig.kube.config_maps() if c["metadata"]["name"] == CONFIG_MAP]
    (published,) = json.loads(configmap["data"][KEY])
    assert {k: published[k] for k in ("name", "url", "labels", "reachable")} == {
        "name": "gpu-1", "url": ollama.url, "labels": {"gpu": "l4"}, "reachable": True}
    writes = krig.kube.count(writes=True, path_regex=FLEET_WRITES)
    for _ in range(3):
        krig.cycle()
    publisher.flush()
    assert krig.kube.count(writes=True, path_regex=FLEET_WRITES) == writes  # no write per cycle

    running = start_api_alone(krig, tmp_path, ollama)
    try:
        def servers() -> list:
            return httpx.get(f"{running.server.url}/api/v1/servers").json()["items"]

        eventually(lambda: [(s["name"], s["url"], s["reachable"]) for s in servers()] == [("gpu-1", ollama.url, True)],
                   timeout=60, what="the published server listed by the API alone")
        model = httpx.get(f"{running.server.url}/api/v1/models/llama3.2-1b").json()
        assert (model["state"], model["error"]) == ("Pending", NO_SERVER_MATCHES)
        krig.label(gpu="a100")
        krig.settle()
        eventually(lambda: servers()[0]["labels"] == {"gpu": "a100"}, timeout=60, what="the new labels")
        eventually(lambda: httpx.get(f"{running.server.url}/api/v1/models/llama3.2-1b").json()["state"] == "Ready",
                   timeout=60, what="the model Ready on the server its selector now picks")
    finally:
        running.stop()
        publisher.close()


def test_a_publisher_writes_only_what_changed_or_a_stale_last_seen_and_a_follower_never(
        kube: KubeStandin) -> None:
    now = [1000.0]
    seen = ServerSeen("gpu-1", "http://gpu-1:11434", {"gpu": "a100"}, True, "0.12.0", "2026-12-01T10:00:00Z")
    with kube.api_client() as api:
        follower = FleetPublisher(api, "default", leading=lambda: False)
        follower.publish([seen])
        follower.flush()
        assert kube.count(path_regex=FLEET_WRITES) == 0  # not even read
        leader = FleetPublisher(api, "default", clock=lambda: now[0])
        try:
            def published() -> dict:
                config_map = client.CoreV1Api(api).read_namespaced_config_map(CONFIG_MAP, "default")
                return json.loads(config_map.data[KEY])[0]

            leader.publish([seen])
            leader.flush()
            assert published()["lastSeen"] == "2026-12-01T10:00:00Z" and leader.writes == 1
            later = ServerSeen(**{**seen.__dict__, "last_seen": "2026-12-01T10:00:30Z"})
            now[0] += 30
            leader.publish([later])
            leader.flush()
            assert leader.writes == 1  # only lastSeen moved, and by less than a minute
            now[0] += 31
            leader.publish([later])
            leader.flush()
            assert leader.writes == 2 and published()["lastSeen"] == "2026-12-01T10:00:30Z"
            leader.publish([ServerSeen(**{**later.__dict__, "reachable": False, "error": "connection refused"})])
            leader.flush()
            assert leader.writes == 3 and (published()["reachable"], published()["error"]) == (False, "connection refused")
            follower.publish([seen])
            follower.flush()
            assert published()["reachable"] is False
        finally:
            leader.close()
            follower.close()
