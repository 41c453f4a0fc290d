"""The fleet in Kubernetes mode beyond discovery (issue 12): an OllamaModel's seed fields are the
whole over the servers its selector picks in the reconciler's inventory (so a selector matching no
server says so), and the leader publishes the servers in a ConfigMap that the API deployed apart
reads, for `GET /api/v1/servers` and the model views."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_gitops.reconciler.fleetstatus import NO_SERVER_MATCHES
from ollama_gitops.reconciler.git.repo import GitRepo
from ollama_gitops.reconciler.ollama.inventory import FileInventory
from ollama_gitops.reconciler.reconcile import Reconciler
from standins.kube_apiserver import KubeStandin
from standins.ollama_server import OllamaStandin
from test_kubernetes_mode import KubeRig, conditions_of, crd_schema

A100 = "servers:\n  matchLabels: {gpu: a100}\n"


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
