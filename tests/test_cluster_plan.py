"""Git to OllamaModel resources, as a pure plan; and the resource bodies it applies."""

from __future__ import annotations

from ollama_gitops.reconciler.cluster.plan import (ApplyResource, DeleteResource, LeaveResource,
                                                   ReleaseResource, plan_resources)
from ollama_gitops.reconciler.cluster.resources import (APPLIED_HASH, ARGOCD_COMPARE_OPTIONS, FINALIZER,
                                                        MANAGED_BY, PRUNE, SOURCE_COMMIT, SOURCE_PATH,
                                                        Resource, desired_body, matches)
from ollama_gitops.reconciler.models.desired import DesiredModel, DesiredState, ModelKey
from ollama_gitops.reconciler.models.modelfile import ModelFields

COMMIT = "a" * 40


def model(name: str, tag: str = "1b", namespace: str = "default", **fields: object) -> DesiredModel:
    key = ModelKey(namespace, f"{name}-{tag}")
    return DesiredModel(key, ModelFields(name, tag, **fields), f"models/{namespace}/{key.name}.yaml", "blob")  # type: ignore[arg-type]


def state(*models: DesiredModel, unreadable: tuple[ModelKey, ...] = (), commit: str = COMMIT) -> DesiredState:
    return DesiredState(commit, {m.key: m for m in models}, (), frozenset(unreadable))


def resource_from(body: dict, *, deleting: bool = False, **changes: object) -> Resource:
    obj = {"metadata": {**body["metadata"], "resourceVersion": "7"}, "spec": dict(body["spec"])}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    resource = Resource.from_object(obj)
    return Resource(**{**resource.__dict__, **changes})  # type: ignore[arg-type]


def test_body_carries_the_file_and_ollama_gitops_marks_and_never_argocd_tracking() -> None:
    m = model("llama3.2", labels={"team": "a", "app.kubernetes.io/instance": "argo-app"},
              annotations={"argocd.argoproj.io/tracking-id": "app:x", "owner": "me"}, prune=False)
    body = desired_body(m, COMMIT)
    meta = body["metadata"]
    assert body["apiVersion"] == "ollama.smithforge.dev/v1alpha1" and body["kind"] == "OllamaModel"
    assert (meta["name"], meta["namespace"], body["spec"]) == ("llama3.2-1b", "default", {"name": "llama3.2", "tag": "1b"})
    assert meta["labels"] == {"team": "a", MANAGED_BY: "ollama-gitops"}
    assert "argocd.argoproj.io/tracking-id" not in meta["annotations"]
    assert meta["annotations"][ARGOCD_COMPARE_OPTIONS] == "IgnoreExtraneous"
    assert meta["annotations"][SOURCE_PATH] == "models/default/llama3.2-1b.yaml"
    assert meta["annotations"][SOURCE_COMMIT] == COMMIT and meta["annotations"][PRUNE] == "false"
    assert meta["finalizers"] == [FINALIZER]


def test_a_new_commit_alone_changes_no_resource() -> None:
    m = model("llama3.2")
    applied = resource_from(desired_body(m, "b" * 40))
    assert matches(applied, desired_body(m, COMMIT))
    assert plan_resources(state(m), {m.key: applied}).actions == ()


def test_new_changed_and_hand_edited_resources_are_applied() -> None:
    new, changed, edited, same = model("a"), model("b"), model("c"), model("d")
    resources = {
        changed.key: resource_from(desired_body(model("b", labels={"old": "x"}), COMMIT)),
        edited.key: resource_from(desired_body(edited, COMMIT), spec={"name": "c", "tag": "2b"}),
        same.key: resource_from(desired_body(same, COMMIT)),
    }
    result = plan_resources(state(new, changed, edited, same), resources)
    assert [(type(a).__name__, a.key.name) for a in result.actions] == [
        ("ApplyResource", "a-1b"), ("ApplyResource", "b-1b"), ("ApplyResource", "c-1b")]


def test_hand_removed_finalizer_or_label_is_put_back() -> None:
    m = model("a")
    body = desired_body(m, COMMIT)
    no_finalizer = resource_from(body, finalizers=())
    no_label = resource_from(body, labels={MANAGED_BY: "ollama-gitops"} | {})
    assert not matches(no_finalizer, body)
    assert matches(no_label, body)  # the file has no labels beyond managed-by
    relabelled = resource_from(desired_body(model("a", labels={"team": "x"}), COMMIT), labels={MANAGED_BY: "ollama-gitops", "team": "y"})
    assert not matches(relabelled, desired_body(model("a", labels={"team": "x"}), COMMIT))


def test_label_dropped_from_the_file_is_a_change() -> None:
    before = desired_body(model("a", labels={"team": "x"}), COMMIT)
    after = desired_body(model("a"), COMMIT)
    assert before["metadata"]["annotations"][APPLIED_HASH] != after["metadata"]["annotations"][APPLIED_HASH]
    assert not matches(resource_from(before), after)


def test_removed_file_deletes_its_resource_but_a_broken_one_stays() -> None:
    kept, removed, broken = model("a"), model("b"), model("c")
    resources = {k.key: resource_from(desired_body(k, COMMIT)) for k in (kept, removed, broken)}
    result = plan_resources(state(kept, unreadable=(broken.key,)), resources)
    assert result.actions == (LeaveResource(broken.key, "model file is invalid; the resource stays as it was"),
                              DeleteResource(removed.key, "file removed from Git"))


def test_resource_deleted_by_hand_while_in_git_is_released_then_recreated() -> None:
    m = model("a")
    deleting = resource_from(desired_body(m, COMMIT), deleting=True)
    assert plan_resources(state(m), {m.key: deleting}).of(ReleaseResource)
    assert plan_resources(state(m), {}).of(ApplyResource)


def test_pruning_every_resource_is_refused_without_allow_empty() -> None:
    a, b = model("a"), model("b")
    resources = {k.key: resource_from(desired_body(k, COMMIT)) for k in (a, b)}
    refused = plan_resources(state(), resources)
    assert refused.refused and "would remove all 2 resources" in refused.refused and not refused.of(DeleteResource)
    assert len(plan_resources(state(), resources, allow_empty=True).of(DeleteResource)) == 2


def test_scoped_plan_looks_only_at_the_scope() -> None:
    a, b = model("a"), model("b")
    result = plan_resources(state(a, b), {}, scope={a.key})
    assert [x.key for x in result.actions] == [a.key]


def test_resources_of_an_unreadable_namespace_or_models_folder_stay() -> None:
    a, b, c = model("a"), model("b"), model("c", namespace="team-a")
    resources = {k.key: resource_from(desired_body(k, COMMIT)) for k in (a, b, c)}
    namespace = DesiredState(COMMIT, {c.key: c}, (), unreadable_namespaces=frozenset({"default"}))
    result = plan_resources(namespace, resources)
    assert not result.of(DeleteResource) and {x.key for x in result.of(LeaveResource)} == {a.key, b.key}
    everything = plan_resources(DesiredState(COMMIT, {}, (), all_unreadable=True), resources)
    assert not everything.of(DeleteResource) and everything.refused is None and len(everything.of(LeaveResource)) == 3
