"""Webhooks in Kubernetes mode: `ollama-gitops api` alone (its own process in a cluster) passes an
accepted push on by annotating the ConfigMap that the reconciler's replicas watch, with nothing but
a `patch` of that one ConfigMap; the leading reconciler then runs a cycle. Real `kubernetes` client,
stand-in API server, real Git, real HTTP; the reconciler in its own process."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from ollama_gitops.api import runtime
from apirig import settings_for
from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.cluster.fleetmap import CONFIG_MAP as FLEET_CONFIG_MAP
from ollama_gitops.reconciler.cluster.syncrequest import ANNOTATION, CONFIG_MAP
from processes import Children
from standins.kube_apiserver import KubeStandin
from standins.ollama_server import OllamaStandin
from waiting import eventually
from webhooks import SECRET, github

NS = "ops"  # the leader-election namespace, where the ConfigMap lives
COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
START = 90.0  # ceiling for a process's start or a cycle on a loaded machine
CRD = Path(__file__).resolve().parents[1] / "manifests" / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    with KubeStandin(schema=schema) as server:
        server.add_namespace(NS)
        yield server


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=bare)
    work.model("default", "llama3.2", "1b")
    work.commit("seed")
    work.push()
    return bare


def start_api(tmp_path: Path, kube: KubeStandin, remote: Path, ollama: OllamaStandin,
              monkeypatch: pytest.MonkeyPatch) -> runtime.RunningApi:
    """`ollama-gitops api` in Kubernetes mode, as its own Deployment runs it (here in this process)."""
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    settings = settings_for(tmp_path / "api-state", str(remote), ollama.url, "--leader-election-namespace", NS)
    settings = dataclasses.replace(settings, kubernetes="on")
    options = runtime.ApiOptions("127.0.0.1:0", None, "default", "API <api@example.com>", False,
                                 webhook_secret=SECRET)
    running = runtime.start(settings, options, with_reconciler=False, schedules=False)
    running.repository.refresh()
    return running


def sync_config_map(kube: KubeStandin) -> dict | None:
    return next((c for c in kube.config_maps(NS) if c["metadata"]["name"] == CONFIG_MAP), None)


def sync_requests(kube: KubeStandin) -> list:
    """The API's requests to ConfigMaps but its reads of the fleet's servers (the `get` every few seconds)."""
    return [r for r in kube.request_log if "configmaps" in r.path
            and (r.verb, r.path) != ("get", f"/api/v1/namespaces/{NS}/configmaps/{FLEET_CONFIG_MAP}")]


def post(running: runtime.RunningApi, remote: Path) -> httpx.Response:
    sent = github(str(remote))
    return httpx.post(f"{running.server.url}/api/v1/webhook", content=sent.body, headers=sent.headers, timeout=30)


def test_without_the_config_map_the_api_answers_503_and_with_it_only_patches_it(
        tmp_path: Path, kube: KubeStandin, remote: Path, ollama: OllamaStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    running = start_api(tmp_path, kube, remote, ollama, monkeypatch)
    try:
        response = post(running, remote)
        assert response.status_code == 503
        assert response.json()["error"].startswith(f"the ConfigMap {NS}/{CONFIG_MAP} does not exist: the reconciler "
                                                   "creates it when it starts")
        with kube.api_client() as api:  # what the reconciler does at start
            client.CoreV1Api(api).create_namespaced_config_map(NS, {"metadata": {"name": CONFIG_MAP}})
        kube.clear_request_log()
        response = post(running, remote)
        assert response.status_code == 202 and response.json() == {"status": "accepted"}
        value = sync_config_map(kube)["metadata"]["annotations"][ANNOTATION]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value)
        # All the API may do to ConfigMaps (its Role: patch, resourceNames [ollama-gitops-sync]).
        assert [(r.verb, r.path) for r in sync_requests(kube)] == [
            ("patch", f"/api/v1/namespaces/{NS}/configmaps/{CONFIG_MAP}")]
        # A bad signature touches nothing in the cluster.
        kube.clear_request_log()
        sent = github(str(remote), secret="wrong")
        assert httpx.post(f"{running.server.url}/api/v1/webhook", content=sent.body, headers=sent.headers).status_code == 401
        assert not sync_requests(kube)
    finally:
        running.stop()


def test_a_webhook_to_the_api_makes_the_reconciler_in_another_process_apply_the_push(
        tmp_path: Path, kube: KubeStandin, remote: Path, ollama: OllamaStandin, monkeypatch: pytest.MonkeyPatch,
        children: Children) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({"HOME": str(tmp_path / "home"), "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
                "OLLAMA_GITOPS_KUBERNETES": "on", "OLLAMA_GITOPS_REPO": str(remote), "OLLAMA_GITOPS_OLLAMA_URL": ollama.url,
                "OLLAMA_GITOPS_LEASE_DURATION": "2", "OLLAMA_GITOPS_INTERVAL": "3600",
                "OLLAMA_GITOPS_LEADER_ELECTION_NAMESPACE": NS})
    reconciler = children.start("reconcile", [COMMAND, "reconcile", "--state-dir", str(tmp_path / "reconciler")], env=env)
    running = None
    try:
        def state(name: str) -> str | None:
            found = [o for o in kube.objects("default") if o["metadata"]["name"] == name]
            return found[0].get("status", {}).get("state") if found else None

        eventually(lambda: state("llama3.2-1b") == "Ready", timeout=START, what="llama3.2-1b Ready")  # its first cycle
        eventually(lambda: sync_config_map(kube), timeout=START, what="the reconciler to create its ConfigMap")
        running = start_api(tmp_path, kube, remote, ollama, monkeypatch)
        work = WorkRepo(tmp_path / "pusher", remote=remote)
        work.model("default", "gemma3", "1b")
        work.commit("Add gemma3")
        work.push()
        assert post(running, remote).status_code == 202
        value = sync_config_map(kube)["metadata"]["annotations"][ANNOTATION]
        # The next scheduled cycle is an hour away: the request is what brings gemma3 in.
        reconciler.wait_for(f"action=sync-requested at={re.escape(value)}", timeout=START)
        eventually(lambda: state("gemma3-1b") == "Ready", timeout=START, what="gemma3-1b Ready, after the webhook")
        assert "gemma3:1b" in ollama.installed()
        assert reconciler.terminate(timeout=START) == 0  # before the API server goes
    finally:
        if running is not None:
            running.stop()
