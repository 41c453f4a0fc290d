"""A model's status as a whole, over the servers its selector picks (`fleetstatus.overall`)."""

from __future__ import annotations

from ollama_gitops.reconciler.fleetstatus import NO_SERVER_MATCHES, overall
from ollama_gitops.reconciler.state import FAILED, PENDING, PULLING, READY, AppliedSpec, ModelRecord, ModelStatus

SPEC = AppliedSpec("llama3.2:1b", "models/default/llama3.2-1b.yaml")


def record(**servers: ModelStatus) -> ModelRecord:
    return ModelRecord(SPEC, dict(servers))


def test_one_default_server_is_exactly_its_status() -> None:
    status = ModelStatus(FAILED, size=5, digest="d", error="boom", owned=True, failures=2)
    assert overall(record(default=status), ["default"]) == status
    assert overall(None, ["default"]) == ModelStatus(PENDING)


def test_the_state_is_the_worst_over_the_selected_servers() -> None:
    ready = ModelStatus(READY, size=5, digest="d", last_pull_time="2026-12-01T10:00:00Z")
    both = record(a=ready, b=ModelStatus(READY, size=5, digest="d", last_pull_time="2026-12-01T11:00:00Z"))
    whole = overall(both, ["a", "b"])
    assert (whole.state, whole.size, whole.digest, whole.last_pull_time, whole.error) == (
        READY, 5, "d", "2026-12-01T11:00:00Z", None)
    assert overall(both, ["a", "b", "c"]).state == PENDING  # no entry on c yet
    pulling = record(a=ready, b=ModelStatus(PULLING, progress_completed=1, progress_total=4),
                     c=ModelStatus(PULLING, progress_completed=2, progress_total=4))
    whole = overall(pulling, ["a", "b", "c"])
    assert (whole.state, whole.progress_completed, whole.progress_total, whole.size) == (PULLING, 3, 8, 5)
    failed = record(a=ModelStatus(FAILED, error="no space left"), b=ModelStatus(PULLING), c=ModelStatus(PENDING, error="x"))
    whole = overall(failed, ["a", "b", "c"])
    assert whole.state == FAILED and whole.error == "a: no space left; c: x"
    assert overall(record(gpu=ModelStatus(FAILED, error="boom")), ["gpu"]).error == "gpu: boom"
    # only the selected servers count: an entry elsewhere (being deselected) does not
    assert overall(record(a=ready, b=ModelStatus(FAILED, error="e")), ["a"]).state == READY


def test_a_model_no_server_matches_is_pending_and_says_so() -> None:
    whole = overall(record(a=ModelStatus(READY)), [])
    assert whole.state == PENDING and whole.error == NO_SERVER_MATCHES


def test_the_servers_a_selector_picks_from_those_the_last_cycle_saw() -> None:
    from ollama_gitops.reconciler.fleetstatus import selected
    from ollama_gitops.reconciler.models.selector import LabelSelector
    from ollama_gitops.reconciler.state import ServerSeen

    seen = [ServerSeen("gpu-2", "http://b:1", {"gpu": "l4"}), ServerSeen("gpu-1", "http://a:1", {"gpu": "a100"})]
    assert selected(None, seen) == ["gpu-1", "gpu-2"]
    assert selected(LabelSelector.of({"gpu": "l4"}), seen) == ["gpu-2"]
    assert selected(LabelSelector.of({"gpu": "h100"}), seen) == []
