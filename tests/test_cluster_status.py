"""Kubernetes mode's records of a fleet: per server in `status.servers` (and what only the controller
needs, in annotations), written through the real client to the stand-in API server with the CRD's
schema, and read back as a new leader reads them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ollama_gitops.reconciler.cluster.client import ClusterClient
from ollama_gitops.reconciler.cluster.resources import API_VERSION, KIND, MANAGED_BY, MANAGED_BY_VALUE, Resource
from ollama_gitops.reconciler.cluster.status import memory_annotations, record_from, status_body
from ollama_gitops.reconciler.fleetstatus import overall_recorded
from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.state import (DEFAULT_SERVER, FAILED, PULLING, READY, AppliedSpec, ModelRecord,
                                            ModelStatus)
from standins.kube_apiserver import KubeStandin

CRD = Path(__file__).resolve().parents[1] / "manifests" / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"
KEY = ModelKey("default", "llama3.2-1b")
DIGEST = "a" * 64


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    with KubeStandin(bookmark_interval=0, schema=schema) as server:
        yield server


def written(kube: KubeStandin, record: ModelRecord) -> Resource:
    """`record` written as the status writer writes it (status, then the controller's annotations),
    and the resource as the API server then holds it."""
    with kube.api_client() as api:
        cluster = ClusterClient(api)
        cluster.apply({"apiVersion": API_VERSION, "kind": KIND,
                       "metadata": {"name": KEY.name, "namespace": KEY.namespace},
                       "spec": {"name": "llama3.2", "tag": "1b"}})
        cluster.apply_status(KEY, status_body(overall_recorded(record), servers=record.servers))
        cluster.patch_annotations(KEY, memory_annotations(record, {}))
    (obj,) = kube.objects()
    return Resource.from_object(obj)


def spec() -> AppliedSpec:
    return AppliedSpec(reference="llama3.2:1b", path="", prune=True, suspend=False, refresh_requested_at=None)


def test_per_server_statuses_round_trip_through_the_crd_and_a_failover(kube) -> None:
    servers = {
        "ollama-0": ModelStatus(READY, size=1_300_000_000, digest=DIGEST, last_pull_time="2026-12-01T10:00:00Z",
                                owned=True, refresh_handled="r1"),
        "ollama-1": ModelStatus(FAILED, error="pull model manifest: file does not exist", owned=False),
        "ollama-2": ModelStatus(PULLING, owned=True, progress_completed=5, progress_total=10),
    }
    resource = written(kube, ModelRecord(spec(), servers))
    assert [(e["name"], e["state"]) for e in resource.status["servers"]] == [
        ("ollama-0", "Ready"), ("ollama-1", "Failed"), ("ollama-2", "Pulling")]
    assert resource.status["servers"][0]["formattedSize"] and resource.status["state"] == FAILED  # the whole
    assert resource.status["error"] == "ollama-1: pull model manifest: file does not exist"

    restored = record_from(resource).servers  # a new leader: the pull died with the last one
    for name, status in servers.items():
        got = restored[name]
        assert (got.state, got.size, got.digest, got.last_pull_time, got.error, got.owned, got.refresh_handled) == (
            "Pending" if status.state == PULLING else status.state, status.size, status.digest,
            status.last_pull_time, status.error, status.owned, status.refresh_handled), name
    assert set(restored) == set(servers)
    assert record_from(resource, restarting=False).servers["ollama-2"].state == PULLING  # the API, reading


def test_one_server_named_default_keeps_the_annotations_it_always_had(kube) -> None:
    record = ModelRecord(spec(), {DEFAULT_SERVER: ModelStatus(READY, size=1, digest=DIGEST, owned=True,
                                                              refresh_handled="r1")})
    resource = written(kube, record)
    assert resource.annotations["ollama-gitops.dev/pulled"] == "true"
    assert resource.annotations["ollama-gitops.dev/refresh-handled"] == "r1"
    assert "ollama-gitops.dev/servers" not in resource.annotations
    assert resource.status["state"] == READY and "error" not in resource.status
    restored = record_from(resource).servers[DEFAULT_SERVER]
    assert dataclasses.replace(restored, applied_commit=None) == dataclasses.replace(
        record.servers[DEFAULT_SERVER], applied_commit=None)

    # A resource written before fleets (no status.servers) is the one server's.
    legacy = dataclasses.replace(resource, status={k: v for k, v in resource.status.items() if k != "servers"})
    assert record_from(legacy).servers[DEFAULT_SERVER].owned is True


def test_events_name_the_server_whose_state_changed(kube, tmp_path) -> None:
    from ollama_gitops.reconciler.cluster.connect import start_cache
    from ollama_gitops.reconciler.cluster.status import ClusterStateStore
    from waiting import eventually

    with kube.api_client() as api:
        cache = start_cache(api)
        cluster = ClusterClient(api, cache)
        cluster.apply({"apiVersion": API_VERSION, "kind": KIND, "spec": {"name": "llama3.2", "tag": "1b"},
                       "metadata": {"name": KEY.name, "namespace": KEY.namespace,
                                    "labels": {MANAGED_BY: MANAGED_BY_VALUE}}})
        eventually(lambda: cache.get(KEY) is not None, timeout=30, what="the resource in the cache")
        store = ClusterStateStore(tmp_path, cluster, cache)
        try:
            with store.editing() as edit:
                edit.put(KEY, ModelRecord(spec(), {"ollama-0": ModelStatus(PULLING), "ollama-1": ModelStatus(READY)}))
            assert store.flush()
            with store.editing() as edit:
                edit.status(KEY, "ollama-0").state = FAILED
                edit.status(KEY, "ollama-0").error = "pull model manifest: file does not exist"
            assert store.flush()
        finally:
            store.close()
            cache.stop()
    assert [(e["reason"], e["message"]) for e in kube.events()] == [
        ("Pulling", "pulling the model into Ollama on server ollama-0"),
        ("PullFailed", "ollama-0: pull model manifest: file does not exist")]
    (obj,) = kube.objects()
    assert [(e["name"], e["state"]) for e in obj["status"]["servers"]] == [("ollama-0", "Failed"), ("ollama-1", "Ready")]
