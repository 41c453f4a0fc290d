"""The health checks shipped for GitOps tools, run on OllamaModels with the statuses ollama-gitops
writes: Argo CD's Lua (manifests/argocd/) and Flux's healthCheckExprs (README.md)."""

from __future__ import annotations

import copy

import pytest
import yaml

from healthchecks import ARGOCD_CM, HEALTH_KEY, HEALTH_LUA, argocd_health, flux_health, flux_health_exprs
from ollama_gitops.reconciler.cluster.status import status_body
from ollama_gitops.reconciler.state import FAILED, PENDING, PULLING, READY, ModelStatus

NOW = "2026-12-01T08:00:00Z"
ERROR = "pull model manifest: file does not exist"


def resource(status: ModelStatus | None, *, generation: int = 1, observed: int | None = 1,
             suspended: bool = False) -> dict:
    obj = {"apiVersion": "ollama.smithforge.dev/v1alpha1", "kind": "OllamaModel",
           "metadata": {"name": "llama3.2-1b", "namespace": "default", "generation": generation,
                        "annotations": {"ollama-gitops.dev/suspend": "true"} if suspended else {}},
           "spec": {"name": "llama3.2", "tag": "1b"}}
    if status is not None:
        body = status_body(status, suspended=suspended, generation=observed, now=NOW)
        obj["status"] = {k: v for k, v in body.items() if v is not None}  # as apply_status sends it
    return obj


READY_STATUS = ModelStatus(READY, size=1815319791, digest="a" * 64, last_pull_time=NOW)
SAMPLES = {
    # name: (resource, Argo CD status, Flux verdict)
    "ready": (resource(READY_STATUS), "Healthy", "Current"),
    "pending": (resource(ModelStatus(PENDING)), "Progressing", "InProgress"),
    "pulling": (resource(ModelStatus(PULLING)), "Progressing", "InProgress"),
    "failed": (resource(ModelStatus(FAILED, error=ERROR)), "Degraded", "Failed"),
    "older generation observed": (resource(READY_STATUS, generation=2, observed=1), "Progressing", "InProgress"),
    "no status yet": (resource(None), "Progressing", "InProgress"),
    "broken file, model kept": (resource(ModelStatus(READY, size=1, digest="a" * 64, error="model file is invalid")),
                                "Degraded", "Failed"),
    "suspended": (resource(ModelStatus(PENDING), suspended=True), "Suspended", "InProgress"),
}


def seed_status(obj: dict) -> dict:
    """The same resource as the seed operator (or an older ollama-gitops) wrote it: no conditions."""
    old = copy.deepcopy(obj)
    for field in ("conditions", "observedGeneration"):
        old.get("status", {}).pop(field, None)
    return old


@pytest.mark.parametrize("name", SAMPLES)
def test_argocd_health_of_each_state(name: str) -> None:
    obj, expected, _ = SAMPLES[name]
    health = argocd_health(obj)
    assert health["status"] == expected, health
    assert health["message"]
    if name == "failed":
        assert health["message"] == ERROR
    if name not in ("older generation observed", "suspended", "broken file, model kept"):
        assert argocd_health(seed_status(obj))["status"] == expected  # statuses without conditions too


def test_the_argocd_cm_patch_embeds_health_lua_as_it_is() -> None:
    patch = yaml.safe_load(ARGOCD_CM.read_text())
    assert (patch["kind"], patch["metadata"]["name"], patch["metadata"]["namespace"]) == ("ConfigMap", "argocd-cm", "argocd")
    assert patch["data"] == {HEALTH_KEY: HEALTH_LUA.read_text()}


def test_an_invalid_status_from_a_script_is_unknown_as_in_argocd() -> None:
    assert argocd_health({}, 'return {status = "Fine"}')["status"] == "Unknown"  # the runner is faithful


@pytest.mark.parametrize("name", SAMPLES)
def test_flux_health_check_exprs_of_each_state(name: str) -> None:
    obj, _, expected = SAMPLES[name]
    exprs = flux_health_exprs()
    assert (exprs["apiVersion"], exprs["kind"]) == ("ollama.smithforge.dev/v1alpha1", "OllamaModel")
    assert flux_health(obj, exprs) == expected
