"""Kubernetes mode against the stand-in API server: Git to OllamaModel resources, and the controller
that pulls them into (the stand-in) Ollama and writes their status."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gitrepos import WorkRepo, init_bare
from healthchecks import argocd_health, flux_health, flux_health_exprs
from ollama_gitops.reconciler.cluster.cache import ResourceCache
from ollama_gitops.reconciler.cluster.client import ClusterClient
from ollama_gitops.reconciler.cluster.resources import FINALIZER, GROUP, MANAGED_BY, PLURAL, SOURCE_COMMIT, VERSION
from ollama_gitops.reconciler.cluster.status import ClusterStateStore
from ollama_gitops.reconciler.cluster.sync import ClusterSync
from ollama_gitops.reconciler.git.repo import GitRepo
from ollama_gitops.reconciler.ollama.server import OllamaServer
from ollama_gitops.reconciler.reconcile import Reconciler
from standins.kube_apiserver import KubeStandin
from standins.ollama_server import OllamaStandin
from waiting import eventually

CRD = Path(__file__).resolve().parents[1] / "manifests" / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"


def crd_schema() -> dict:
    return yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


class KubeRig:
    def __init__(self, tmp_path: Path, kube: KubeStandin, ollama: OllamaStandin) -> None:
        self.kube = kube
        self.ollama = ollama
        self.remote = init_bare(tmp_path / "remote.git")
        self.work = WorkRepo(tmp_path / "work", remote=self.remote)
        self.state_dir = tmp_path / "state"
        self.api_client = kube.api_client()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.wakeups: list[set] = []  # what the cache reported as changed (each would request a cycle)
        self.cache = ResourceCache(self.custom, watch_timeout=30, retry_delay=0.2, on_change=self.wakeups.append).start()
        assert self.cache.wait_synced(10)
        kube_client = ClusterClient(self.api_client, self.cache)  # as connect() wires it
        self.store = ClusterStateStore(self.state_dir, kube_client, self.cache)
        self.sync = ClusterSync(kube_client, self.cache, self.store)
        self.reconciler = Reconciler(GitRepo(str(self.remote), "main", self.state_dir / "clone.git"),
                                     OllamaServer(ollama.url, timeout=10), self.store, cluster=self.sync)

    def push(self, message: str = "change") -> str:
        commit = self.work.commit(message)
        self.work.push()
        return commit

    def cycle(self):  # type: ignore[no-untyped-def]
        """A cycle, its pulls, and the status writes that follow."""
        report = self.reconciler.run_cycle()
        assert self.reconciler.pulls.wait(timeout=15)
        assert self.store.flush(15)
        return report

    def resync(self):  # type: ignore[no-untyped-def]
        """A full cycle and its status writes: the listing gives the digests pulls do not."""
        report = self.reconciler.run_cycle(full=True)
        assert report.ok and report.full, report.message
        assert self.store.flush(15)
        return report

    def settle(self) -> None:
        """Cycles until nothing changes, waiting for the watch between them."""
        for _ in range(8):
            version = self.kube.resource_version
            self.cycle()
            eventually(lambda: all(self.cache.get(self.key(o)) and self.cache.get(self.key(o)).resource_version
                                   == o["metadata"]["resourceVersion"] for o in self.kube.objects()
                                   if o["metadata"].get("labels", {}).get(MANAGED_BY)))
            self.store.flush(15)
            # Writes wait for their resource to appear; one that cannot (its namespace is missing) waits on.
            waiting = {k for k in self.store.waiting() if self.resource(k.namespace, k.name) is not None}
            if self.kube.resource_version == version and not self.store.unsettled(time.time()) and not waiting:
                return  # a cycle that wrote nothing, with nothing left to write: settled
        raise AssertionError("never settled")

    @staticmethod
    def key(obj: dict):  # type: ignore[no-untyped-def]
        from ollama_gitops.reconciler.models.desired import ModelKey

        return ModelKey(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def resource(self, namespace: str, name: str) -> dict | None:
        found = [o for o in self.kube.objects(namespace) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def close(self) -> None:
        self.reconciler.close()
        self.sync.close()
        self.store.close()
        self.cache.stop()


@pytest.fixture
def kube():
    with KubeStandin(schema=crd_schema()) as server:
        server.add_namespace("team-a")
        yield server


@pytest.fixture
def krig(tmp_path: Path, kube: KubeStandin, ollama: OllamaStandin):
    rig = KubeRig(tmp_path, kube, ollama)
    yield rig
    rig.close()


def test_models_become_resources_with_status_and_events(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b", extra="labels: {team: search}\n")
    krig.work.model("team-a", "gemma3", "1b")
    commit = krig.push()
    krig.settle()
    assert "digest" not in krig.resource("default", "llama3.2-1b")["status"]  # a pull's stream does not say it
    krig.resync()
    llama = krig.resource("default", "llama3.2-1b")
    assert llama["spec"] == {"name": "llama3.2", "tag": "1b"}
    assert llama["metadata"]["labels"] == {"team": "search", MANAGED_BY: "ollama-gitops"}
    assert llama["metadata"]["annotations"][SOURCE_COMMIT] == commit
    assert llama["metadata"]["finalizers"] == [FINALIZER]
    status = llama["status"]
    assert status["state"] == "Ready" and status["size"] == 1815319791 and status["formattedSize"] == "1.7 GiB"
    assert status["digest"] == krig.ollama.digest_of("llama3.2:1b") and status["lastPullTime"].endswith("Z")
    assert krig.resource("team-a", "gemma3-1b")["status"]["state"] == "Ready"
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in krig.kube.events()}
    assert ("llama3.2-1b", "Pulled") in reasons


def test_removed_file_deletes_the_resource_and_prunes_ollama(krig: KubeRig) -> None:
    path = krig.work.model("default", "llama3.2", "1b")
    krig.work.model("default", "gemma3", "1b")
    krig.push()
    krig.settle()
    krig.work.remove(path)
    krig.push("remove llama")
    krig.settle()
    assert krig.resource("default", "llama3.2-1b") is None
    assert "llama3.2:1b" not in krig.ollama.installed() and "gemma3:1b" in krig.ollama.installed()


def test_resource_deleted_by_hand_keeps_its_weights_and_comes_back(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b")
    krig.settle()
    assert "llama3.2:1b" in krig.ollama.installed() and krig.ollama.delete_count == {}
    back = krig.resource("default", "llama3.2-1b")
    assert back is not None and back["status"]["state"] == "Ready"


def test_hand_edits_are_put_back_and_unmanaged_resources_untouched(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b", {"spec": {"tag": "3b"}})
    unmanaged = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OllamaModel",
                 "metadata": {"name": "mine", "namespace": "default"}, "spec": {"name": "phi3", "tag": "mini"}}
    krig.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, unmanaged)
    krig.settle()
    assert krig.resource("default", "llama3.2-1b")["spec"]["tag"] == "1b"
    mine = krig.resource("default", "mine")
    assert mine["spec"] == {"name": "phi3", "tag": "mini"} and "status" not in mine and not mine["metadata"].get("finalizers")


def test_missing_namespace_is_a_per_model_error(krig: KubeRig) -> None:
    krig.work.model("nowhere", "llama3.2", "1b")
    krig.work.model("default", "gemma3", "1b")
    krig.push()
    report = krig.cycle()
    assert not report.ok and 'nowhere/llama3.2-1b: namespaces "nowhere" not found' in report.message
    krig.settle()
    assert krig.resource("default", "gemma3-1b")["status"]["state"] == "Ready"


def test_pruning_every_resource_is_refused(krig: KubeRig) -> None:
    path = krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.work.remove(path)
    krig.push("remove all")
    report = krig.cycle()
    assert not report.ok and "would remove all 1 resources" in report.message
    assert krig.resource("default", "llama3.2-1b") is not None and "llama3.2:1b" in krig.ollama.installed()


def start_api_alone(krig: KubeRig, tmp_path: Path, ollama: OllamaStandin):  # type: ignore[no-untyped-def]
    """`ollama-gitops api` as deployed apart from the reconciler (read access to the cluster only)."""
    from ollama_gitops.api import runtime
    from apirig import settings_for

    kubeconfig = krig.kube.write_kubeconfig(tmp_path / "kubeconfig")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        settings = settings_for(tmp_path / "api-state", str(krig.remote), ollama.url)
        settings = dataclasses.replace(settings, kubernetes="on")
        options = runtime.ApiOptions("127.0.0.1:0", None, "default", "API <api@example.com>", False)
        running = runtime.start(settings, options, with_reconciler=False, schedules=False)
    finally:
        os.environ.pop("KUBECONFIG") if previous is None else os.environ.__setitem__("KUBECONFIG", previous)
    running.repository.refresh()
    return running


def test_api_alone_reads_status_from_the_resources(krig: KubeRig, tmp_path: Path, ollama: OllamaStandin) -> None:
    """`ollama-gitops api` beside a Kubernetes-mode reconciler shows live status from the cluster."""
    import httpx

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    running = start_api_alone(krig, tmp_path, ollama)
    try:
        model = httpx.get(f"{running.server.url}/api/v1/models/llama3.2-1b").json()
        assert model["state"] == "Ready" and model["formattedSize"] == "1.7 GiB"
        verbs = {r.verb for r in krig.kube.request_log if "ollamamodels" in r.path}
        assert verbs <= {"get", "list", "watch", "patch", "create", "update", "delete"}
    finally:
        running.stop()


def test_api_alone_shows_a_model_being_pulled_as_pulling(krig: KubeRig, tmp_path: Path, ollama: OllamaStandin) -> None:
    # Its read path must show what the resource says, not what a restarted reconciler would assume.
    import httpx

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    gate = ollama.hold_pulls()
    try:
        krig.reconciler.run_cycle()
        assert gate.wait_for_pulls(1, timeout=30)
        eventually(lambda: (krig.resource("default", "llama3.2-1b") or {}).get("status", {}).get("state") == "Pulling",
                   timeout=30)
        running = start_api_alone(krig, tmp_path, ollama)
        try:
            model = eventually(lambda: httpx.get(f"{running.server.url}/api/v1/models/llama3.2-1b").json(), timeout=30)
            assert model["state"] == "Pulling", model
            listed = httpx.get(f"{running.server.url}/api/v1/models").json()
            assert [m["state"] for m in listed["items"]] == ["Pulling"], listed
        finally:
            running.stop()
    finally:
        gate.release()
    assert krig.reconciler.pulls.wait(timeout=30)


def test_a_cold_start_costs_one_apply_and_one_status_write_a_model_and_nothing_after(krig: KubeRig) -> None:
    # Issue 16 item 7: a cold start is O(change): per model the resource's apply and its status
    # write, nothing read again or sent twice, no wake-up by the product's own writes; then nothing.
    from ollama_gitops.reconciler.models.desired import ModelKey

    namespaces = ("default", "team-a")
    keys = set()
    for i in range(24):
        namespace = namespaces[i % 2]
        krig.work.model(namespace, f"m{i}", "1b")
        krig.ollama.install(f"m{i}:1b", 1000 + i)  # already there: adopted, Ready, no pull
        keys.add(ModelKey(namespace, f"m{i}-1b"))
    krig.push()
    assert krig.wakeups == [set()]  # the first list's (made on an empty cluster)
    krig.kube.clear_request_log()

    report = krig.cycle()
    assert report.ok and not report.noop, report.message
    assert eventually(lambda: all((r := krig.cache.get(k)) is not None and r.status.get("state") == "Ready"
                                  for k in keys))
    log = [r for r in krig.kube.request_log if r.verb != "watch"]
    applies = sorted(r.path for r in log if r.verb == "patch" and "apply-patch" in (r.content_type or ""))
    paths = [f"/apis/{GROUP}/{VERSION}/namespaces/{k.namespace}/{PLURAL}/{k.name}" for k in keys]
    assert applies == sorted(paths + [f"{p}/status" for p in paths])  # each model: its apply, its status
    assert len(log) == len(applies), [(r.verb, r.path, r.subresource) for r in log]  # no get, list or other write
    assert krig.wakeups == [set()]  # the watch's echoes of those writes woke nothing
    assert krig.ollama.pull_count == {}

    krig.kube.clear_request_log()
    report = krig.cycle()
    assert report.ok and report.noop, report.message
    assert [r for r in krig.kube.request_log if r.verb != "watch"] == []


def test_own_status_writes_do_not_wake_a_cycle_but_a_hand_edit_does(krig: KubeRig) -> None:
    # The service requests a cycle for every change the cache reports: the echoes of its own writes
    # must not count, or every burst of status writes costs a git fetch and a cycle.
    for name in ("llama3.2", "gemma3", "qwen2.5"):
        krig.work.model("default", name, "1b")
    krig.push()
    krig.settle()
    keys = sorted(krig.store.keys())
    events, woken = krig.cache.stats.events, len(krig.wakeups)
    for error in ("a burst", None):
        with krig.store.editing() as edit:
            for key in keys:
                edit.status(key, "default").error = error
        assert krig.store.flush(15)
    assert eventually(lambda: krig.cache.stats.events >= events + 2 * len(keys))  # every echo came back
    assert len(krig.wakeups) == woken
    assert all("error" not in krig.resource(k.namespace, k.name)["status"] for k in keys)
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, keys[0].name,
                                               {"metadata": {"annotations": {"owner": "someone"}}})
    assert eventually(lambda: len(krig.wakeups) == woken + 1) and krig.wakeups[-1] == {keys[0]}


def test_a_finalizer_removal_refused_because_the_list_shifted_is_retried(krig: KubeRig) -> None:
    # The removal tests the entry it removes (never another controller's finalizer); when the list
    # has shifted since the cache saw it, the server answers 422: read it again and patch afresh.
    from ollama_gitops.reconciler.models.desired import ModelKey

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    key = ModelKey("default", "llama3.2-1b")
    other = "example.com/other"
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, key.name,
                                               {"metadata": {"finalizers": [other, FINALIZER]}})
    assert eventually(lambda: list(krig.cache.get(key).finalizers) == [other, FINALIZER])
    krig.cache.stop()  # from here the cache's list is stale
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, key.name,
                                               {"metadata": {"finalizers": [FINALIZER]}})
    krig.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, key.name)
    with krig.store.editing() as edit:
        edit.forget(key)  # what a prune does once Ollama confirmed the delete: release the finalizer
    assert krig.store.flush(15)
    assert krig.resource("default", "llama3.2-1b") is None and krig.store.waiting() == set()


def background_errors(component: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("ollama_gitops_background_errors_total", {"component": component}) or 0.0


def test_an_unexpected_error_in_a_status_writer_is_logged_counted_and_fails_the_next_cycle(
        krig: KubeRig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # As with kubernetes 33, where the status apply raised AttributeError inside the pool and died
    # silently. Our own function is made to raise: no stand-in answer makes the client do that.
    from ollama_gitops.reconciler.models.desired import ModelKey

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    key = ModelKey("default", "llama3.2-1b")

    def broken(*args: object, **kwargs: object) -> None:
        raise AttributeError("'ApiClient' object has no attribute 'param_serialize'")

    monkeypatch.setattr(krig.store._client, "apply_status", broken)
    before = background_errors("status")
    with krig.store.editing() as edit:  # a change no cycle undoes (a stale error would be cleared)
        edit.status(key, "default").last_pull_time = "2026-01-01T00:00:00Z"
    assert krig.store.flush(15)
    assert background_errors("status") == before + 1
    logged = [r for r in caplog.records if r.name == "ollama_gitops.cluster.status" and r.exc_info]
    assert logged and "param_serialize" in str(logged[-1].exc_info[1])  # with its traceback
    report = krig.reconciler.run_cycle()
    assert not report.ok and "default/llama3.2-1b" in report.message and "param_serialize" in report.message
    monkeypatch.undo()
    krig.settle()  # the write was kept: once it works again, it is made
    assert krig.resource("default", "llama3.2-1b")["status"]["lastPullTime"] == "2026-01-01T00:00:00Z"
    assert krig.reconciler.run_cycle().ok


def test_an_unexpected_error_in_a_resource_writer_fails_the_cycle_naming_it(
        krig: KubeRig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise AttributeError("'ApiClient' object has no attribute 'param_serialize'")

    monkeypatch.setattr(krig.sync._writer._client, "apply", broken)
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    before = background_errors("resources")
    report = krig.reconciler.run_cycle()
    assert not report.ok and "default/llama3.2-1b" in report.message and "param_serialize" in report.message
    assert background_errors("resources") == before + 1
    assert any(r.name == "ollama_gitops.cluster" and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    krig.settle()
    assert krig.resource("default", "llama3.2-1b")["status"]["state"] == "Ready"


def test_changes_in_the_file_reach_the_resource(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b", extra="labels: {team: a, tier: gold}\nannotations: {owner: me}\n")
    krig.push()
    krig.settle()
    krig.work.model("default", "llama3.2", "1b", extra="labels: {team: b}\n")
    krig.push("relabel")
    krig.settle()
    meta = krig.resource("default", "llama3.2-1b")["metadata"]
    assert meta["labels"] == {"team": "b", MANAGED_BY: "ollama-gitops"}  # tier is gone with the file's line
    assert "owner" not in meta["annotations"]


def test_broken_file_leaves_its_resource_alone(krig: KubeRig) -> None:
    path = krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    before = krig.resource("default", "llama3.2-1b")["metadata"]["resourceVersion"]
    krig.work.write(path, "name: llama3.2\ntag: [\n")
    krig.push("break")
    krig.settle()
    after = krig.resource("default", "llama3.2-1b")
    assert after is not None and after["status"]["state"] == "Ready" and "llama3.2:1b" in krig.ollama.installed()
    assert krig.reconciler.store.sync.problems[0].path == path and after["spec"] == {"name": "llama3.2", "tag": "1b"}
    assert int(after["metadata"]["resourceVersion"]) >= int(before)


def test_seed_refresh_annotation_repulls_and_is_marked_completed(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b",
                                               {"metadata": {"annotations": {"ollama.smithforge.dev/refresh": "true"}}})
    krig.settle()
    assert krig.ollama.pull_count["llama3.2:1b"] == 2
    annotation = krig.resource("default", "llama3.2-1b")["metadata"]["annotations"]["ollama.smithforge.dev/refresh"]
    assert annotation.startswith("completed-")
    krig.settle()
    assert krig.ollama.pull_count["llama3.2:1b"] == 2


def test_api_server_errors_mid_cycle_are_retried(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.work.model("default", "gemma3", "1b")
    krig.push()
    krig.kube.inject("PATCH", r"/ollamamodels/gemma3-1b$", 500, times=1)
    report = krig.cycle()
    assert not report.ok and "default/gemma3-1b" in report.message
    krig.settle()
    assert {o["metadata"]["name"]: o["status"]["state"] for o in krig.kube.objects("default")} == {
        "gemma3-1b": "Ready", "llama3.2-1b": "Ready"}


def test_watch_expiry_relists_and_cycles_go_on(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    lists = krig.cache.stats.lists
    krig.kube.expire_history()
    krig.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b")
    krig.settle()
    assert krig.resource("default", "llama3.2-1b")["status"]["state"] == "Ready"
    assert krig.cache.stats.lists >= lists


def test_restart_reads_its_memory_back_from_the_resources(krig: KubeRig, tmp_path: Path) -> None:
    path = krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.close()  # what kill -9 leaves: the resources, and nothing in the new process
    again = KubeRig.__new__(KubeRig)
    again.__init__(tmp_path / "restarted", krig.kube, krig.ollama)  # type: ignore[misc]
    again.remote, again.work = krig.remote, krig.work
    from ollama_gitops.reconciler.git.repo import GitRepo
    again.reconciler.repo = GitRepo(str(krig.remote), "main", tmp_path / "restarted" / "clone2.git")
    try:
        again.settle()
        assert krig.ollama.pull_count["llama3.2:1b"] == 1  # Ready models are not pulled again
        record = again.store.record(KubeRig.key(again.resource("default", "llama3.2-1b")))
        assert record.servers["default"].owned  # it remembers it pulled them, so it may still prune them
        again.work.remove(path)
        again.work.model("default", "gemma3", "1b")
        again.push("swap")
        again.settle()
        assert "llama3.2:1b" not in krig.ollama.installed()
    finally:
        again.close()


def test_statuses_are_not_lost_when_the_watch_lags(krig: KubeRig) -> None:
    """A status written before the watch has brought the new resource waits for it, not dropped."""
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus

    krig.cache.stop()  # from here the cache hears of nothing by itself: the watch "lags" for good
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OllamaModel",
            "metadata": {"name": "late-1b", "namespace": "default", "labels": {MANAGED_BY: "ollama-gitops"}},
            "spec": {"name": "late", "tag": "1b"}}
    created = krig.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    key = ModelKey("default", "late-1b")
    with krig.store.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("late:1b", "models/default/late-1b.yaml"), {"default": ModelStatus("Ready", size=2048)}))
    assert krig.store.flush(10)
    assert "status" not in krig.resource("default", "late-1b")  # nothing to write onto yet
    krig.cache.observe_write(created)  # the watch's event, at last
    krig.store.retry()
    assert krig.store.flush(10)
    status = krig.resource("default", "late-1b")["status"]
    assert {k: status[k] for k in ("state", "size", "formattedSize")} == {"state": "Ready", "size": 2048, "formattedSize": "2.0 KiB"}
    assert "digest" not in status and "error" not in status


def test_a_status_field_that_no_longer_applies_is_removed(krig: KubeRig) -> None:
    # Status is written by server-side apply: a field the controller wrote before and leaves out now
    # (here the error of a broken file, once the file is fixed) must go, not linger.
    path = krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.work.write(path, "name: llama3.2\ntag: [1b\n")
    krig.push("break it")
    krig.settle()
    status = krig.resource("default", "llama3.2-1b")["status"]
    assert status["state"] == "Ready" and "keeping the last good version" in status["error"]
    krig.work.model("default", "llama3.2", "1b")
    krig.push("fix it")
    krig.settle()
    status = krig.resource("default", "llama3.2-1b")["status"]
    assert status["state"] == "Ready" and "error" not in status, status
    managers = {(m["manager"], m.get("subresource")) for m in
                krig.resource("default", "llama3.2-1b")["metadata"]["managedFields"]}
    assert ("ollama-gitops-controller", "status") in managers and ("ollama-gitops", None) in managers


def test_resources_follow_the_rules_for_living_next_to_argo_cd(krig: KubeRig) -> None:
    # A models repository that Argo CD also renders can carry Argo CD's tracking marks; copied onto
    # the OllamaModels they would make Argo CD take them for its own and prune them.
    krig.work.model("default", "llama3.2", "1b",
                    extra="labels: {app.kubernetes.io/instance: models-app, team: search}\n"
                          "annotations: {argocd.argoproj.io/tracking-id: 'models-app:x/y:default/z', owner: me}\n")
    krig.push()
    krig.settle()
    meta = krig.resource("default", "llama3.2-1b")["metadata"]
    assert "app.kubernetes.io/instance" not in meta["labels"] and meta["labels"]["team"] == "search"
    assert "argocd.argoproj.io/tracking-id" not in meta["annotations"] and meta["annotations"]["owner"] == "me"
    assert meta["annotations"]["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
    assert "ownerReferences" not in meta  # nothing ties them to an object an Argo CD application tracks
    krig.resync()  # the digest the pull did not give
    # No refresh storm: once settled, cycles (a full one included) write nothing, status included.
    krig.kube.clear_request_log()
    krig.reconciler.resync_interval = 0  # every cycle a full one: Ollama listed, every model planned
    reports = [krig.cycle() for _ in range(3)]
    assert all(r.full and r.ok for r in reports)
    assert krig.kube.requests(writes=True) == []


def test_a_reference_ollama_shortens_is_pulled_once_shown_and_pruned(krig: KubeRig) -> None:
    """Ollama lists `registry.ollama.ai/library/llama3.2:1b` as `llama3.2:1b` (DisplayShortest)."""
    path = krig.work.model("default", "registry.ollama.ai/library/llama3.2", "1b")
    krig.work.model("default", "gemma3", "1b")
    krig.push()
    krig.settle()
    krig.resync()
    status = krig.resource("default", "registry.ollama.ai-library-llama3.2-1b")["status"]
    assert status["state"] == "Ready" and status["size"] == 1815319791
    assert status["digest"] == krig.ollama.digest_of("llama3.2:1b")
    krig.reconciler.resync_interval = 0  # every cycle a full one: Ollama listed, every model planned
    assert all(krig.cycle().full for _ in range(2))
    assert krig.ollama.pull_count["llama3.2:1b"] == 1
    krig.work.remove(path)
    krig.push("remove it")
    krig.settle()
    assert krig.resource("default", "registry.ollama.ai-library-llama3.2-1b") is None
    assert krig.ollama.delete_count == {"llama3.2:1b": 1} and "llama3.2:1b" not in krig.ollama.installed()


def test_events_are_found_as_kubectl_describe_looks_for_them(krig: KubeRig) -> None:
    # kubectl describe lists a resource's Events by involvedObject kind, name, namespace and uid
    krig.work.model("default", "llama3.2", "1b")
    krig.work.model("default", "gemma3", "1b")
    krig.push()
    krig.settle()
    resource = krig.resource("default", "llama3.2-1b")
    uid = resource["metadata"]["uid"]
    selector = ("involvedObject.kind=OllamaModel,involvedObject.name=llama3.2-1b,"
                f"involvedObject.namespace=default,involvedObject.uid={uid}")
    found = client.CoreV1Api(krig.api_client).list_namespaced_event("default", field_selector=selector, limit=500).items
    assert sorted(e.reason for e in found) == ["Pulled", "Pulling"]
    assert all(e.involved_object.api_version == f"{GROUP}/{VERSION}" and e.involved_object.resource_version
               for e in found)


def conditions_of(resource: dict) -> dict[str, dict]:
    return {c["type"]: c for c in resource["status"].get("conditions", [])}


def test_status_has_kstatus_conditions_and_the_observed_generation(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.work.model("default", "nosuchmodel", "1b")  # not in the stand-in's catalogue: the pull fails
    krig.push()
    with krig.ollama.hold_pulls() as gate:
        def pulling() -> bool:
            krig.reconciler.run_cycle()  # each cycle retries the status writes waiting for their resource
            krig.store.flush(15)
            resource = krig.resource("default", "llama3.2-1b")
            return resource is not None and resource.get("status", {}).get("state") == "Pulling"

        eventually(pulling)
        pulling = conditions_of(krig.resource("default", "llama3.2-1b"))
        assert (pulling["Reconciling"]["status"], pulling["Reconciling"]["reason"]) == ("True", "Pulling")
        assert (pulling["Ready"]["status"], pulling["Stalled"]["status"]) == ("False", "False")
        gate.release()
    krig.settle()
    llama = krig.resource("default", "llama3.2-1b")
    ready = conditions_of(llama)
    assert llama["status"]["observedGeneration"] == llama["metadata"]["generation"] == 1
    assert {t: (c["status"], c["reason"]) for t, c in ready.items()} == {
        "Ready": ("True", "Pulled"), "Reconciling": ("False", "Pulled"), "Stalled": ("False", "Pulled")}
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"].endswith("Z") for c in ready.values())
    failed = krig.resource("default", "nosuchmodel-1b")
    stalled = conditions_of(failed)["Stalled"]
    assert (failed["status"]["state"], stalled["status"], stalled["reason"]) == ("Failed", "True", "PullFailed")
    assert stalled["message"] == failed["status"]["error"] == "pull model manifest: file does not exist"
    assert conditions_of(failed)["Reconciling"]["status"] == "False"  # kstatus: Failed, not InProgress
    # what Argo CD's health check and Flux's healthCheckExprs make of these very resources
    assert argocd_health(llama)["status"] == "Healthy" and flux_health(llama, flux_health_exprs()) == "Current"
    assert argocd_health(failed) == {"status": "Degraded", "message": "pull model manifest: file does not exist"}
    assert flux_health(failed, flux_health_exprs()) == "Failed"


def test_conditions_are_written_only_when_they_change(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.resync()  # the digest the pull did not give
    before = conditions_of(krig.resource("default", "llama3.2-1b"))
    krig.kube.clear_request_log()
    krig.reconciler.resync_interval = 0  # full cycles: every model planned, every status recomputed
    assert all(krig.cycle().full for _ in range(2))
    assert krig.kube.requests(writes=True) == []
    assert conditions_of(krig.resource("default", "llama3.2-1b")) == before
    # a refresh flips Ready to False (Pulling) and back: its transition time moves, Stalled's does not
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b",
                                               {"metadata": {"annotations": {"ollama.smithforge.dev/refresh": "true"}}})
    krig.settle()
    after = conditions_of(krig.resource("default", "llama3.2-1b"))
    assert after["Stalled"]["lastTransitionTime"] == before["Stalled"]["lastTransitionTime"]
    assert krig.ollama.pull_count["llama3.2:1b"] == 2 and after["Ready"]["status"] == "True"


def test_observed_generation_follows_a_spec_edited_by_hand_and_put_back(krig: KubeRig) -> None:
    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "llama3.2-1b", {"spec": {"tag": "3b"}})
    krig.settle()
    resource = krig.resource("default", "llama3.2-1b")
    assert resource["spec"]["tag"] == "1b" and resource["metadata"]["generation"] == 3
    assert resource["status"]["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in resource["status"]["conditions"]} == {3}


def test_a_quick_repull_is_written_and_told_even_when_the_watch_lags(krig: KubeRig) -> None:
    """Pulling then Ready again before the watch brings back the Pulling write: the cache still says
    Ready, but the resource says Pulling, so Ready must be written (and the pull told as Pulled)."""
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import PULLING, READY

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    krig.cache.stop()  # from here the cache hears of nothing by itself: the watch "lags" for good
    key = ModelKey("default", "llama3.2-1b")
    for state in (PULLING, READY):
        with krig.store.editing() as edit:
            edit.status(key, "default").state = state
        assert krig.store.flush(10)
        assert krig.resource("default", "llama3.2-1b")["status"]["state"] == state
    reasons = [e["reason"] for e in krig.kube.events() if e["involvedObject"]["name"] == "llama3.2-1b"]
    assert reasons == ["Pulling", "Pulled", "Pulling", "Pulled"]
    assert conditions_of(krig.resource("default", "llama3.2-1b"))["Ready"]["status"] == "True"


def test_writes_of_one_resource_land_in_order_while_the_first_is_slow(krig: KubeRig) -> None:
    """Pulling then Ready handed out while the Pulling write is still on the wire: with several
    writers, the Ready write must wait for it, or the resource could end up saying Pulling."""
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import PULLING, READY

    krig.work.model("default", "llama3.2", "1b")
    krig.push()
    krig.settle()
    key = ModelKey("default", "llama3.2-1b")
    krig.kube.delay(r"/llama3\.2-1b/status$", 1.0, method="PATCH", times=1)  # the first status write is slow
    for state in (PULLING, READY):
        with krig.store.editing() as edit:
            edit.status(key, "default").state = state
    assert krig.store.flush(30)
    assert krig.resource("default", "llama3.2-1b")["status"]["state"] == READY
    reasons = [e["reason"] for e in krig.kube.events() if e["involvedObject"]["name"] == "llama3.2-1b"]
    assert reasons[-2:] == ["Pulling", "Pulled"]
