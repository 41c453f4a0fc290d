"""Status conditions in the form kstatus reads (sigs.k8s.io/cli-utils, pkg/kstatus): what Flux's
health checks, `kubectl wait --for=condition=Ready` and Argo CD (through the health check in
manifests/argocd/) make of an OllamaModel.

Three conditions, always all present: `Ready` (normal-true: the model is in Ollama), and the
abnormal-true `Reconciling` (work is under way: kstatus says InProgress) and `Stalled` (it cannot
get there without help: kstatus says Failed). `lastTransitionTime` moves only when a condition's
status flips, so writing the same state again writes the same conditions, and nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..state import FAILED, PENDING, PULLING, READY, ModelStatus
from ..fleetstatus import NO_SERVER_MATCHES

READY_TYPE, RECONCILING_TYPE, STALLED_TYPE = "Ready", "Reconciling", "Stalled"
TYPES = (READY_TYPE, RECONCILING_TYPE, STALLED_TYPE)


class _Condition(NamedTuple):
    status: str  # "True", "False" or "Unknown"
    reason: str  # UpperCamelCase, as metav1.Condition requires
    message: str


def _assess(status: ModelStatus, suspended: bool) -> dict[str, _Condition]:
    """The three conditions of a model in `status` (a broken file, a failed delete: `error` while Ready)."""
    true, false = "True", "False"
    if status.state == READY:
        ready = _Condition(true, "Pulled", "the model is in Ollama")
        if status.error:
            # In Ollama, but what Git asks for cannot be applied (a broken file): a person must act.
            return {READY_TYPE: ready, RECONCILING_TYPE: _Condition(false, "Error", status.error),
                    STALLED_TYPE: _Condition(true, "Error", status.error)}
        return {READY_TYPE: ready, RECONCILING_TYPE: _Condition(false, "Pulled", "nothing left to do"),
                STALLED_TYPE: _Condition(false, "Pulled", "nothing is in the way")}
    if status.state == FAILED:
        error = status.error or "the pull failed"
        return {READY_TYPE: _Condition(false, "PullFailed", error),
                RECONCILING_TYPE: _Condition(false, "PullFailed", "the pull is retried with backoff"),
                STALLED_TYPE: _Condition(true, "PullFailed", error)}
    if status.error == NO_SERVER_MATCHES:
        # Nothing to do until the inventory or the selector changes: a person may have to act.
        return {READY_TYPE: _Condition(false, "NoServerMatches", status.error),
                RECONCILING_TYPE: _Condition(false, "NoServerMatches", "waiting for a server the selector picks"),
                STALLED_TYPE: _Condition(true, "NoServerMatches", status.error)}
    if suspended:
        return {READY_TYPE: _Condition(false, "Suspended", "suspended in its model file: not pulled"),
                RECONCILING_TYPE: _Condition(false, "Suspended", "suspended in its model file"),
                STALLED_TYPE: _Condition(false, "Suspended", "suspended in its model file")}
    reason, message = ("Pulling", "pulling the model into Ollama") if status.state == PULLING else (
        "Pending", "waiting to be pulled into Ollama")
    assert status.state in (PENDING, PULLING), status.state
    return {READY_TYPE: _Condition(false, reason, message), RECONCILING_TYPE: _Condition(true, reason, message),
            STALLED_TYPE: _Condition(false, reason, "nothing is in the way")}


def model_conditions(status: ModelStatus, *, suspended: bool, generation: int | None,
                     previous: Sequence[Mapping[str, Any]] | None, now: str) -> list[dict[str, Any]]:
    """The conditions to write for `status`; `previous` are the resource's current ones, whose
    `lastTransitionTime` is kept for every condition whose status did not flip (`now` otherwise)."""
    before = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    conditions = []
    for kind, condition in _assess(status, suspended).items():
        old = before.get(kind)
        unchanged = old is not None and old.get("status") == condition.status and old.get("lastTransitionTime")
        entry: dict[str, Any] = {"type": kind, "status": condition.status, "reason": condition.reason,
                                 "message": condition.message[:32768],
                                 "lastTransitionTime": old["lastTransitionTime"] if unchanged else now}
        if generation:
            entry["observedGeneration"] = generation
        conditions.append(entry)
    return conditions
