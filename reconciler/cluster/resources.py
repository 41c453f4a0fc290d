"""The `OllamaModel` resource: its identity, and how a model file becomes one.

A resource carries the file's labels and annotations, a label that marks it as ollama-gitops's own
(nothing without it is ever touched), and annotations that record where it came from and the file's
own switches (prune, suspend, refresh), which the controller side reads back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..models.desired import DesiredModel, ModelKey

GROUP, VERSION, PLURAL, KIND = "ollama.smithforge.dev", "v1alpha1", "ollamamodels", "OllamaModel"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "ollama-gitops"
FINALIZER = "ollama.smithforge.dev/finalizer"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ollama-gitops"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"

PREFIX = "ollama-gitops.dev/"
SOURCE_PATH = PREFIX + "source-path"
SOURCE_COMMIT = PREFIX + "source-commit"
PRUNE = PREFIX + "prune"
SUSPEND = PREFIX + "suspend"
REFRESH_REQUESTED_AT = PREFIX + "refresh-requested-at"
PULLED = PREFIX + "pulled"  # "true": ollama-gitops pulled the weights, so it may prune them
REFRESH_HANDLED = PREFIX + "refresh-handled"  # the refresh request already acted on
# The same two, per server of a fleet other than `default` (whose are the two above, as they always
# were): JSON, {"NAME": {"pulled": true, "refreshHandled": "..."}}, only servers with something to keep.
SERVERS_MEMORY = PREFIX + "servers"
APPLIED_HASH = PREFIX + "applied-hash"  # what was applied, to notice a label or annotation dropped from the file
SEED_REFRESH = "ollama.smithforge.dev/refresh"  # the seed's own refresh request, "true"

# Argo CD must never take these resources for its own (and prune them) nor count them as drift.
ARGOCD_COMPARE_OPTIONS = "argocd.argoproj.io/compare-options"
ARGOCD_TRACKING = ("argocd.argoproj.io/tracking-id",)
ARGOCD_TRACKING_LABELS = ("app.kubernetes.io/instance",)


@dataclass(frozen=True)
class Resource:
    """An `OllamaModel` as the cluster holds it (the parts ollama-gitops reads)."""

    key: ModelKey
    spec: Mapping[str, Any]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    status: Mapping[str, Any]
    finalizers: tuple[str, ...]
    resource_version: str
    deleting: bool  # deletionTimestamp is set: waiting for finalizers
    uid: str = ""  # what Events name it by (kubectl describe selects them by uid)
    generation: int = 0  # metadata.generation: the spec version that status.observedGeneration answers

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Resource:
        meta = obj.get("metadata", {})
        return cls(
            key=ModelKey(meta.get("namespace", ""), meta.get("name", "")),
            spec=obj.get("spec") or {},
            labels=meta.get("labels") or {},
            annotations=meta.get("annotations") or {},
            status=obj.get("status") or {},
            finalizers=tuple(meta.get("finalizers") or ()),
            resource_version=str(meta.get("resourceVersion", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
        )

    @property
    def managed(self) -> bool:
        return self.labels.get(MANAGED_BY) == MANAGED_BY_VALUE

    @property
    def reference(self) -> str:
        return f"{self.spec.get('name', '')}:{self.spec.get('tag', '')}"


def desired_body(model: DesiredModel, commit: str | None) -> dict[str, Any]:
    """The resource a model file stands for, as ollama-gitops applies it (server-side apply)."""
    fields = model.fields
    labels = {k: v for k, v in fields.labels.items() if k not in ARGOCD_TRACKING_LABELS}
    labels[MANAGED_BY] = MANAGED_BY_VALUE
    annotations = {k: v for k, v in fields.annotations.items() if k not in ARGOCD_TRACKING}
    annotations[ARGOCD_COMPARE_OPTIONS] = "IgnoreExtraneous"
    annotations[SOURCE_PATH] = model.path
    if not fields.prune:
        annotations[PRUNE] = "false"
    if fields.suspend:
        annotations[SUSPEND] = "true"
    if fields.refresh_requested_at:
        annotations[REFRESH_REQUESTED_AT] = fields.refresh_requested_at
    spec = {"name": fields.name, "tag": fields.tag}
    annotations[APPLIED_HASH] = _hash(spec, labels, annotations)
    if commit:
        annotations[SOURCE_COMMIT] = commit  # after hashing: a new commit alone changes nothing
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": model.key.name, "namespace": model.key.namespace, "labels": labels,
                     "annotations": annotations, "finalizers": [FINALIZER]},
        "spec": spec,
    }


def matches(resource: Resource, body: Mapping[str, Any]) -> bool:
    """Does the cluster's resource already say what `body` says (whatever commit it came from)?

    Labels and annotations that others added (kubectl, other controllers) are theirs and do not
    count; one of ours edited or removed by hand does, and so does one the file no longer has
    (the applied hash differs).
    """
    meta = body["metadata"]
    if dict(resource.spec) != body["spec"] or FINALIZER not in resource.finalizers:
        return False
    if any(resource.labels.get(k) != v for k, v in meta["labels"].items()):
        return False
    return all(resource.annotations.get(k) == v for k, v in meta["annotations"].items() if k != SOURCE_COMMIT)


def _hash(spec: Mapping[str, Any], labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    canonical = json.dumps([spec, labels, annotations], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
