"""The stand-in Kubernetes API server, driven through the real `kubernetes` client over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException, ConflictException
from kubernetes.dynamic import DynamicClient
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from standins.kube_apiserver import KubeStandin

G, V, P = "ollama.smithforge.dev", "v1alpha1", "ollamamodels"
NS = "default"
WAIT = 15.0  # upper bound for waits on events set by other threads (never reached when all is well)


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(bookmark_interval=0) as server:
        yield server


@pytest.fixture
def api_client(kube: KubeStandin) -> Iterator[client.ApiClient]:
    with client.ApiClient(kube.client_configuration()) as c:
        yield c


@pytest.fixture
def api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def model(name: str, *, labels: dict | None = None, tag: str = "1b", finalizers: list | None = None,
          status: dict | None = None) -> dict:
    meta: dict = {"name": name}
    if labels:
        meta["labels"] = labels
    if finalizers:
        meta["finalizers"] = finalizers
    body = {"apiVersion": f"{G}/{V}", "kind": "OllamaModel", "metadata": meta,
            "spec": {"name": "llama3.2", "tag": tag}}
    if status:
        body["status"] = status
    return body


def create(api: client.CustomObjectsApi, body: dict, ns: str = NS) -> dict:
    return api.create_namespaced_custom_object(G, V, ns, P, body)


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


# ------------------------------------------------------------------------------------------------
# create / get / replace


def test_create_answers_201_with_the_stored_object_and_409_when_it_exists(kube, api):
    obj, code, _ = api.create_namespaced_custom_object_with_http_info(
        G, V, NS, P, model("llama", status={"state": "Ready"}))
    assert code == 201
    meta = obj["metadata"]
    assert meta["name"] == "llama" and meta["namespace"] == NS
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"].isdigit()
    assert "status" not in obj  # a create cannot set the status of a resource with a status subresource
    assert kube.objects(NS) == [obj]

    with pytest.raises(ConflictException) as exc:
        create(api, model("llama"))
    assert exc.value.status == 409
    body = status_of(exc.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'ollamamodels.ollama.smithforge.dev "llama" already exists'
    assert body["details"] == {"name": "llama", "group": G, "kind": P}


def test_generate_name_and_name_validation(api):
    body = model("x")
    body["metadata"] = {"generateName": "llama-"}
    made = create(api, body)
    assert made["metadata"]["name"].startswith("llama-") and len(made["metadata"]["name"]) == 11

    with pytest.raises(ApiException) as exc:
        create(api, model("Llama3:1B"))
    assert exc.value.status == 422
    assert status_of(exc.value)["reason"] == "Invalid"
    assert status_of(exc.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_resource_version_is_one_global_counter_growing_with_every_write(kube, api):
    a = create(api, model("a"))
    b = create(api, model("b"))
    patched = api.patch_namespaced_custom_object(G, V, NS, P, "a", {"metadata": {"labels": {"x": "1"}}})
    rvs = [int(a["metadata"]["resourceVersion"]), int(b["metadata"]["resourceVersion"]),
           int(patched["metadata"]["resourceVersion"])]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    listed = api.list_namespaced_custom_object(G, V, NS, P)
    assert listed["kind"] == "OllamaModelList" and listed["apiVersion"] == f"{G}/{V}"
    assert listed["metadata"]["resourceVersion"] == str(rvs[-1]) == kube.resource_version
    assert [i["metadata"]["resourceVersion"] for i in listed["items"]] == [str(rvs[2]), str(rvs[1])]


def test_get_of_a_missing_object_is_a_404_status(api):
    with pytest.raises(ApiException) as exc:
        api.get_namespaced_custom_object(G, V, NS, P, "ghost")
    assert exc.value.status == 404
    assert status_of(exc.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'ollamamodels.ollama.smithforge.dev "ghost" not found', "reason": "NotFound",
        "details": {"name": "ghost", "group": G, "kind": P}, "code": 404}


def test_replace_with_a_stale_resource_version_is_a_409_conflict(api):
    first = create(api, model("llama"))
    second = api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"spec": {"tag": "3b"}})
    stale = dict(first, spec={"name": "llama3.2", "tag": "8b"})
    with pytest.raises(ConflictException) as exc:
        api.replace_namespaced_custom_object(G, V, NS, P, "llama", stale)
    assert status_of(exc.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on ollamamodels.ollama.smithforge.dev "llama": the object has '
                   "been modified; please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "llama", "group": G, "kind": P}, "code": 409}
    current = dict(second, spec={"name": "llama3.2", "tag": "8b"})
    assert api.replace_namespaced_custom_object(G, V, NS, P, "llama", current)["spec"]["tag"] == "8b"


def test_replace_of_a_custom_resource_without_resource_version_is_refused(api):
    create(api, model("llama"))
    with pytest.raises(ApiException) as exc:
        api.replace_namespaced_custom_object(G, V, NS, P, "llama", model("llama", tag="8b"))
    assert exc.value.status == 422
    assert status_of(exc.value)["message"] == (
        'OllamaModel.ollama.smithforge.dev "llama" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
        "must be specified for an update")
    with pytest.raises(ApiException) as exc:
        api.replace_namespaced_custom_object(G, V, NS, P, "other", dict(model("other"), metadata={
            "name": "other", "resourceVersion": "1"}))
    assert exc.value.status == 404  # no create on update


def test_generation_bumps_only_when_the_spec_changes(api):
    obj = create(api, model("llama"))
    assert obj["metadata"]["generation"] == 1
    obj = api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"labels": {"a": "b"},
                                                                                 "annotations": {"x": "y"}}})
    assert obj["metadata"]["generation"] == 1
    obj = api.patch_namespaced_custom_object_status(G, V, NS, P, "llama", {"status": {"state": "Pulling"}})
    assert obj["metadata"]["generation"] == 1
    obj["spec"]["tag"] = "3b"
    obj = api.replace_namespaced_custom_object(G, V, NS, P, "llama", obj)
    assert obj["metadata"]["generation"] == 2
    rv = obj["metadata"]["resourceVersion"]
    same = api.replace_namespaced_custom_object(G, V, NS, P, "llama", obj)  # a no-op write
    assert same["metadata"]["generation"] == 2 and same["metadata"]["resourceVersion"] == rv


def test_status_subresource_is_kept_apart_from_the_main_resource(api):
    obj = create(api, model("llama", labels={"app": "x"}))
    obj = api.patch_namespaced_custom_object_status(G, V, NS, P, "llama", {"status": {"state": "Ready"}})
    assert obj["status"] == {"state": "Ready"}

    obj["status"] = {"state": "Failed", "error": "boom"}
    obj["spec"]["tag"] = "3b"
    obj = api.replace_namespaced_custom_object(G, V, NS, P, "llama", obj)
    assert obj["spec"]["tag"] == "3b" and obj["status"] == {"state": "Ready"}

    obj = api.patch_namespaced_custom_object_status(
        G, V, NS, P, "llama", {"spec": {"tag": "70b"}, "metadata": {"labels": {"app": "changed"}},
                               "status": {"state": "Pulling"}})
    assert obj["spec"]["tag"] == "3b" and obj["metadata"]["labels"] == {"app": "x"}
    assert obj["status"] == {"state": "Pulling"}

    obj["status"] = {"state": "Ready", "size": 1}
    obj["spec"]["tag"] = "1b"
    obj = api.replace_namespaced_custom_object_status(G, V, NS, P, "llama", obj)
    assert obj["status"] == {"state": "Ready", "size": 1} and obj["spec"]["tag"] == "3b"


def test_merge_patch_and_json_patch(api):
    create(api, model("llama", labels={"a": "1", "b": "2"}))
    obj = api.patch_namespaced_custom_object(G, V, NS, P, "llama",
                                             {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"tag": "3b"}})
    assert obj["metadata"]["labels"] == {"b": "2", "c": "3"} and obj["spec"] == {"name": "llama3.2", "tag": "3b"}

    obj = api.patch_namespaced_custom_object(
        G, V, NS, P, "llama",
        [{"op": "test", "path": "/spec/tag", "value": "3b"},
         {"op": "replace", "path": "/spec/tag", "value": "8b"},
         {"op": "add", "path": "/metadata/annotations", "value": {"ollama.smithforge.dev/refresh": "true"}},
         {"op": "remove", "path": "/metadata/labels/b"}],
        _content_type="application/json-patch+json")
    assert obj["spec"]["tag"] == "8b" and obj["metadata"]["labels"] == {"c": "3"}
    assert obj["metadata"]["annotations"] == {"ollama.smithforge.dev/refresh": "true"}

    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", [{"op": "test", "path": "/spec/tag", "value": "1b"}],
                                           _content_type="application/json-patch+json")
    assert exc.value.status == 422

    # a merge patch carrying a stale resourceVersion is an optimistic-lock failure
    with pytest.raises(ConflictException):
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"resourceVersion": "1"},
                                                                  "spec": {"tag": "1b"}})


def test_json_patch_content_type_with_a_dict_body_becomes_strategic_merge_and_is_refused(kube, api):
    """The client rewrites json-patch+json to strategic-merge-patch+json when the body is not a list;
    custom resources do not support strategic merge patch (415), as on a real server."""
    create(api, model("llama"))
    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"spec": {"tag": "3b"}},
                                           _content_type="application/json-patch+json")
    assert exc.value.status == 415
    assert kube.requests("patch")[-1].content_type == "application/strategic-merge-patch+json"


def test_server_side_apply_creates_updates_and_removes_fields_the_manager_dropped(kube, api):
    applied = {"apiVersion": f"{G}/{V}", "kind": "OllamaModel",
               "metadata": {"name": "llama", "labels": {"team": "search", "tier": "prod"}},
               "spec": {"name": "llama3.2", "tag": "1b"}}
    # a create answers 201, and the client (37.x) only reads a body from 200 for patch: it returns None
    assert api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied, field_manager="ollama-gitops",
                                              force=True, _content_type="application/apply-patch+yaml") is None
    obj = api.get_namespaced_custom_object(G, V, NS, P, "llama")
    assert obj["spec"] == {"name": "llama3.2", "tag": "1b"} and obj["metadata"]["generation"] == 1
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert managers == {("ollama-gitops", "Apply")}
    last = kube.requests("patch")[-1]
    assert last.query == {"fieldManager": "ollama-gitops", "force": "true"}
    assert last.content_type == "application/apply-patch+yaml"

    # another manager adds a label of its own
    api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"labels": {"owner": "ops"}}},
                                       field_manager="kubectl-edit")

    applied["metadata"]["labels"] = {"team": "search"}  # tier dropped
    applied["spec"]["tag"] = "3b"
    obj = api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied, field_manager="ollama-gitops",
                                             force=True, _content_type="application/apply-patch+yaml")
    assert obj["metadata"]["labels"] == {"team": "search", "owner": "ops"}
    assert obj["spec"]["tag"] == "3b" and obj["metadata"]["generation"] == 2
    entries = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    assert entries["ollama-gitops"]["operation"] == "Apply" and entries["ollama-gitops"]["fieldsType"] == "FieldsV1"
    assert entries["kubectl-edit"]["operation"] == "Update"

    # the other manager takes the tag; a later apply without force conflicts, with force wins
    api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"spec": {"tag": "8b"}}, field_manager="kubectl-edit")
    with pytest.raises(ConflictException) as exc:
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied, field_manager="ollama-gitops",
                                           _content_type="application/apply-patch+yaml")
    assert ".spec.tag" in status_of(exc.value)["message"]
    obj = api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied, field_manager="ollama-gitops",
                                             force=True, _content_type="application/apply-patch+yaml")
    assert obj["spec"]["tag"] == "3b"

    # re-applying the same configuration changes nothing
    rv = obj["metadata"]["resourceVersion"]
    again = api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied, field_manager="ollama-gitops",
                                               force=True, _content_type="application/apply-patch+yaml")
    assert again["metadata"]["resourceVersion"] == rv


def test_server_side_apply_needs_a_field_manager_and_works_on_status(api):
    applied = {"apiVersion": f"{G}/{V}", "kind": "OllamaModel", "metadata": {"name": "llama"},
               "spec": {"name": "llama3.2", "tag": "1b"}}
    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", applied,
                                           _content_type="application/apply-patch+yaml")
    assert exc.value.status == 400
    create(api, model("llama"))
    obj = api.patch_namespaced_custom_object_status(
        G, V, NS, P, "llama", dict(applied, status={"state": "Ready"}, spec={"name": "x", "tag": "y"}),
        field_manager="ollama-gitops", force=True, _content_type="application/apply-patch+yaml")
    assert obj["status"] == {"state": "Ready"} and obj["spec"]["tag"] == "1b"
    assert any(m.get("subresource") == "status" for m in obj["metadata"]["managedFields"])


# ------------------------------------------------------------------------------------------------
# delete and finalizers


def test_delete_with_finalizers_marks_then_removes_when_the_last_finalizer_goes(kube, api):
    fin = "ollama.smithforge.dev/finalizer"
    created = create(api, model("llama", finalizers=[fin]))
    start_rv = created["metadata"]["resourceVersion"]

    deleting = api.delete_namespaced_custom_object(G, V, NS, P, "llama")
    assert deleting["kind"] == "OllamaModel"
    assert deleting["metadata"]["deletionTimestamp"].endswith("Z")
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 0
    assert deleting["metadata"]["generation"] == 2  # the real server bumps generation on deletion
    still = api.get_namespaced_custom_object(G, V, NS, P, "llama")
    assert still["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]

    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"finalizers": [fin, "x.dev/other"]}})
    assert exc.value.status == 422 and "no new finalizers" in status_of(exc.value)["message"]
    updated = api.patch_namespaced_custom_object_status(G, V, NS, P, "llama", {"status": {"state": "Pending"}})
    assert updated["status"] == {"state": "Pending"}

    gone = api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"finalizers": None}})
    assert "finalizers" not in gone["metadata"]
    with pytest.raises(ApiException) as exc:
        api.get_namespaced_custom_object(G, V, NS, P, "llama")
    assert exc.value.status == 404
    assert kube.objects() == []

    w = watch.Watch()
    types = []
    for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=start_rv):
        types.append(ev["type"])
        if ev["type"] == "DELETED":
            assert ev["object"]["metadata"]["deletionTimestamp"]
            w.stop()
    assert types == ["MODIFIED", "MODIFIED", "DELETED"]


def test_delete_without_finalizers_and_delete_of_a_missing_object(kube, api):
    created = create(api, model("llama"))
    answer = api.delete_namespaced_custom_object(G, V, NS, P, "llama")
    assert answer["kind"] == "Status" and answer["status"] == "Success"
    assert answer["details"]["name"] == "llama" and answer["details"]["uid"] == created["metadata"]["uid"]
    assert kube.objects() == []
    with pytest.raises(ApiException) as exc:
        api.delete_namespaced_custom_object(G, V, NS, P, "llama")
    assert exc.value.status == 404
    body = status_of(exc.value)
    assert body["message"] == 'ollamamodels.ollama.smithforge.dev "llama" not found'
    assert body["reason"] == "NotFound" and body["details"] == {"name": "llama", "group": G, "kind": P}


def test_delete_preconditions(api):
    created = create(api, model("llama"))
    api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ConflictException):
        api.delete_namespaced_custom_object(
            G, V, NS, P, "llama", body={"preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}})


# ------------------------------------------------------------------------------------------------
# list


def test_label_selectors_of_each_form(api):
    create(api, model("a", labels={"tier": "prod", "team": "search"}))
    create(api, model("b", labels={"tier": "dev"}))
    create(api, model("c"))

    def names(selector: str) -> list[str]:
        items = api.list_namespaced_custom_object(G, V, NS, P, label_selector=selector)["items"]
        return [i["metadata"]["name"] for i in items]

    assert names("tier=prod") == ["a"]
    assert names("tier==dev") == ["b"]
    assert names("tier!=prod") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier in (prod, dev)") == ["a", "b"]
    assert names("tier notin (prod)") == ["b", "c"]
    assert names("tier=prod,team=search") == ["a"]
    assert names("tier in (prod,dev),!team") == ["b"]
    with pytest.raises(ApiException) as exc:
        names("tier in ()")
    assert exc.value.status == 400


def test_cluster_wide_list_field_selector_and_paging(kube, api):
    kube.add_namespace("models")
    for name in ("a", "b", "c"):
        create(api, model(name), ns="models")
    create(api, model("d"))
    everywhere = api.list_cluster_custom_object(G, V, P)
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [
        ("default", "d"), ("models", "a"), ("models", "b"), ("models", "c")]
    picked = api.list_cluster_custom_object(G, V, P, field_selector="metadata.name=b")
    assert [i["metadata"]["name"] for i in picked["items"]] == ["b"]
    page = api.list_namespaced_custom_object(G, V, "models", P, limit=2)
    assert [i["metadata"]["name"] for i in page["items"]] == ["a", "b"]
    assert page["metadata"]["remainingItemCount"] == 1
    rest = api.list_namespaced_custom_object(G, V, "models", P, limit=2, _continue=page["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"] and "continue" not in rest["metadata"]


# ------------------------------------------------------------------------------------------------
# watch


def test_watch_replays_from_a_resource_version_then_streams_live_events_and_bookmarks(kube, api):
    create(api, model("a"))
    start_rv = api.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    create(api, model("b"))
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": "3b"}})

    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=start_rv,
                               allow_watch_bookmarks=True):
                seen.append((ev["type"], ev["raw_object"]["metadata"].get("name")))
                if ev["type"] == "BOOKMARK":
                    w.stop()
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert kube.wait_for_watches(1, timeout=WAIT)
    api.delete_namespaced_custom_object(G, V, NS, P, "b")
    kube.send_bookmark()
    t.join(WAIT)
    assert not t.is_alive() and not errors
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b"), ("BOOKMARK", None)]
    watch_req = kube.requests("watch")[0]
    assert watch_req.query["watch"] == "true" and watch_req.query["resourceVersion"] == start_rv
    assert w.resource_version == kube.resource_version  # taken from the BOOKMARK


def test_watch_without_resource_version_starts_with_the_current_objects(api):
    create(api, model("a"))
    create(api, model("b"))
    w = watch.Watch()
    names = []
    for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P):
        assert ev["type"] == "ADDED"
        names.append(ev["object"]["metadata"]["name"])
        if len(names) == 2:
            w.stop()
    assert names == ["a", "b"]


def test_watch_with_a_label_selector_sees_objects_enter_and_leave_it(api):
    create(api, model("a", labels={"app": "x"}))
    start_rv = api.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"metadata": {"labels": {"app": "y"}}})
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"metadata": {"labels": {"app": "x"}}})
    create(api, model("b", labels={"app": "y"}))
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": "3b"}})
    w = watch.Watch()
    seen = []
    for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=start_rv,
                       label_selector="app=x"):
        seen.append((ev["type"], ev["object"]["metadata"]["name"]))
        if len(seen) == 3:
            w.stop()
    assert seen == [("DELETED", "a"), ("ADDED", "a"), ("MODIFIED", "a")]


def test_periodic_bookmarks_when_requested():
    with KubeStandin(bookmark_interval=0.05) as kube, client.ApiClient(kube.client_configuration()) as c:
        api = client.CustomObjectsApi(c)
        create(api, model("a"))
        w = watch.Watch()
        seen = []
        for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P, allow_watch_bookmarks=True,
                           timeout_seconds=10):
            seen.append(ev["type"])
            if seen.count("BOOKMARK") == 2:
                w.stop()
        assert seen == ["ADDED", "BOOKMARK", "BOOKMARK"]
        # without allowWatchBookmarks there are none, even on demand
        w2 = watch.Watch()
        for ev in w2.stream(api.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=1):
            assert ev["type"] == "ADDED"
            kube.send_bookmark()
            api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": "2b"}})
            break
        w3 = watch.Watch()
        rest = [ev["type"] for ev in w3.stream(api.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=1,
                                               resource_version=kube.resource_version)]
        assert rest == []  # ends cleanly at timeoutSeconds with nothing new


def test_watch_from_an_expired_version_raises_410_from_the_client(kube, api):
    old_rv = create(api, model("a"))["metadata"]["resourceVersion"]
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": "3b"}})
    kube.expire_history()

    # with timeout_seconds the client does not retry: one request, then ApiException(410)
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=old_rv,
                                      timeout_seconds=5):
            pass
    assert exc.value.status == 410
    assert exc.value.reason.startswith("Expired: too old resource version: " + old_rv)
    assert kube.count("watch") == 1

    # without it, the client retries once from the same version, then raises ApiException(410)
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=old_rv):
            pass
    assert exc.value.status == 410
    assert kube.count("watch") == 3

    # the recovery: list, then watch from the list's version
    listed = api.list_namespaced_custom_object(G, V, NS, P)
    api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": "8b"}})
    w = watch.Watch()
    for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P,
                       resource_version=listed["metadata"]["resourceVersion"]):
        assert (ev["type"], ev["object"]["spec"]["tag"]) == ("MODIFIED", "8b")
        w.stop()


def test_watch_history_is_bounded():
    with KubeStandin(history=3, bookmark_interval=0) as kube, client.ApiClient(kube.client_configuration()) as c:
        api = client.CustomObjectsApi(c)
        first = create(api, model("a"))["metadata"]["resourceVersion"]
        for tag in ("2b", "3b", "4b", "5b"):  # four events after `first`, three kept
            api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"tag": tag}})
        with pytest.raises(ApiException) as exc:
            list(watch.Watch().stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=first,
                                      timeout_seconds=1))
        assert exc.value.status == 410
        # from one version later the three kept events are exactly what is needed
        later = str(int(first) + 1)
        w = watch.Watch()
        replayed = []
        for ev in w.stream(api.list_namespaced_custom_object, G, V, NS, P, resource_version=later):
            replayed.append(ev["object"]["spec"]["tag"])
            if len(replayed) == 3:
                w.stop()
        assert replayed == ["3b", "4b", "5b"]


def test_stop_ends_an_open_watch_cleanly():
    kube = KubeStandin(bookmark_interval=0).start()
    with client.ApiClient(kube.client_configuration()) as c:
        api = client.CustomObjectsApi(c)
        resp = api.list_namespaced_custom_object(G, V, NS, P, watch=True, _preload_content=False)
        body: list[bytes] = []
        reader = threading.Thread(target=lambda: body.append(resp.read()), daemon=True)
        reader.start()
        assert kube.wait_for_watches(1, timeout=WAIT)
        kube.stop()
        reader.join(WAIT)
        assert not reader.is_alive() and body == [b""]  # the chunked stream ended properly
        assert kube.watch_count() == 0


# ------------------------------------------------------------------------------------------------
# namespaces


def test_namespaced_writes_into_a_missing_namespace_are_404(kube, api_client, api):
    with pytest.raises(ApiException) as exc:
        create(api, model("llama"), ns="nope")
    assert exc.value.status == 404
    assert status_of(exc.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'namespaces "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "kind": "namespaces"}, "code": 404}
    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(G, V, "nope", P, "llama", model("llama"), field_manager="m",
                                           _content_type="application/apply-patch+yaml")
    assert status_of(exc.value)["message"] == 'namespaces "nope" not found'

    core = client.CoreV1Api(api_client)
    assert "default" in [n.metadata.name for n in core.list_namespace().items]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="nope")))
    assert create(api, model("llama"), ns="nope")["metadata"]["namespace"] == "nope"
    kube.add_namespace("other")
    assert core.read_namespace("other").status.phase == "Active"


def test_deleting_a_namespace_terminates_it_and_its_content(kube, api_client, api):
    kube.add_namespace("models")
    create(api, model("llama", finalizers=["ollama.smithforge.dev/finalizer"]), ns="models")
    core = client.CoreV1Api(api_client)
    core.delete_namespace("models")
    assert core.read_namespace("models").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        create(api, model("other"), ns="models")
    assert exc.value.status == 403
    assert kube.objects("models")[0]["metadata"]["deletionTimestamp"]
    api.patch_namespaced_custom_object(G, V, "models", P, "llama", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        core.read_namespace("models")
    assert exc.value.status == 404


# ------------------------------------------------------------------------------------------------
# fault injection and the request log


def test_injected_faults_are_seen_by_the_client(kube, api):
    create(api, model("llama"))
    kube.inject("GET", r"/ollamamodels/llama$", 500)
    with pytest.raises(ApiException) as exc:
        api.get_namespaced_custom_object(G, V, NS, P, "llama")
    assert exc.value.status == 500 and status_of(exc.value)["reason"] == "InternalError"
    assert api.get_namespaced_custom_object(G, V, NS, P, "llama")["metadata"]["name"] == "llama"

    kube.inject(None, r"/ollamamodels$", 429, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            api.list_namespaced_custom_object(G, V, NS, P)
        assert exc.value.status == 429 and status_of(exc.value)["reason"] == "TooManyRequests"
    api.list_namespaced_custom_object(G, V, NS, P)

    # with Retry-After, urllib3 (under the client) retries a GET by itself, up to 3 times ...
    kube.clear_request_log()
    kube.inject("GET", r"/ollamamodels$", 429, times=2, retry_after=0)
    assert api.list_namespaced_custom_object(G, V, NS, P)["items"]
    assert kube.count("list") == 3
    # ... and when they run out the last answer reaches the caller: 4 requests, one ApiException
    kube.clear_request_log()
    kube.inject("GET", r"/ollamamodels$", 503, times=None, retry_after=0)
    with pytest.raises(ApiException) as exc:
        api.list_namespaced_custom_object(G, V, NS, P)
    assert exc.value.status == 503 and kube.count("list") == 4
    kube.clear_faults()
    # a POST is not retried: the answer reaches the caller
    kube.inject("POST", r"/ollamamodels$", 429, retry_after=0)
    with pytest.raises(ApiException) as exc:
        create(api, model("other"))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "0"

    kube.inject("PUT", r"/ollamamodels/llama$", 409, body={"kind": "Status", "code": 409, "reason": "Conflict"})
    with pytest.raises(ConflictException) as exc:
        api.replace_namespaced_custom_object(G, V, NS, P, "llama", model("llama"))
    assert status_of(exc.value) == {"kind": "Status", "code": 409, "reason": "Conflict"}

    # a GET that times out is retried by urllib3 by itself; a POST is not
    kube.clear_request_log()
    kube.delay(r"/ollamamodels/llama$", 10, times=1)
    assert api.get_namespaced_custom_object(G, V, NS, P, "llama", _request_timeout=0.3)["metadata"]["name"] == "llama"
    assert kube.count("get") == 2
    kube.delay(r"/ollamamodels$", 10, method="POST", times=1)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.create_namespaced_custom_object(G, V, NS, P, model("late"), _request_timeout=0.3)


def test_request_log_tells_lists_watches_and_writes_apart(kube, api):
    create(api, model("llama"))
    api.list_namespaced_custom_object(G, V, NS, P)
    api.get_namespaced_custom_object(G, V, NS, P, "llama")
    w = watch.Watch()
    for _ in w.stream(api.list_namespaced_custom_object, G, V, NS, P):
        w.stop()
    api.patch_namespaced_custom_object_status(G, V, NS, P, "llama", {"status": {"state": "Ready"}})
    assert kube.count("list") == 1 and kube.count("watch") == 1 and kube.count("get") == 1
    assert kube.count(writes=True) == 2
    assert [r.verb for r in kube.request_log] == ["create", "list", "get", "watch", "patch"]
    status_write = kube.requests("patch")[0]
    assert status_write.subresource == "status" and status_write.content_type == "application/merge-patch+json"
    assert kube.count(method="POST", path_regex=r"/namespaces/default/ollamamodels$") == 1
    kube.clear_request_log()
    assert kube.request_log == []


# ------------------------------------------------------------------------------------------------
# Leases and leader election


def test_lease_create_get_replace_with_conflicts(api_client):
    leases = client.CoordinationV1Api(api_client)
    now = datetime.now(timezone.utc)
    made = leases.create_namespaced_lease(NS, client.V1Lease(
        metadata=client.V1ObjectMeta(name="lock"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15, acquire_time=now, renew_time=now)))
    assert made.metadata.resource_version and made.spec.holder_identity == "a"
    assert made.spec.renew_time == now.replace(microsecond=now.microsecond)
    read = leases.read_namespaced_lease("lock", NS)
    read.spec.holder_identity = "b"
    updated = leases.replace_namespaced_lease("lock", NS, read)
    assert updated.spec.holder_identity == "b"
    read.spec.holder_identity = "c"  # read is stale now
    with pytest.raises(ConflictException):
        leases.replace_namespaced_lease("lock", NS, read)
    read.metadata.resource_version = None  # built-in types allow unconditional updates
    assert leases.replace_namespaced_lease("lock", NS, read).spec.holder_identity == "c"
    with pytest.raises(ConflictException):
        leases.create_namespaced_lease(NS, client.V1Lease(metadata=client.V1ObjectMeta(name="lock")))


@pytest.mark.parametrize("renew_time", ["2026-12-01T08:00:00Z", "2026-12-01T08:00:00.5Z",
                                        "2026-12-01T08:00:00.1234567Z", "2026-12-01 08:00:00.000000Z"])
def test_lease_micro_times_are_parsed_as_rfc3339_micro_and_anything_else_is_400(kube, api_client, renew_time):
    # metav1.MicroTime.UnmarshalJSON is time.Parse(RFC3339Micro): exactly six fractional digits.
    # Sent as raw JSON: the client's typed methods would turn the string back into a datetime.
    url = f"{kube.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    body = {"metadata": {"name": "lock"}, "spec": {"holderIdentity": "a", "renewTime": renew_time}}
    refused = urllib3.request("POST", url, json=body)
    assert refused.status == 400
    assert f'parsing time "{renew_time}" as "2006-01-02T15:04:05.000000Z07:00"' in refused.json()["message"]
    body["spec"]["renewTime"] = "2026-12-01T09:00:00.000000+01:00"
    assert urllib3.request("POST", url, json=body).status == 201
    assert kube.leases(NS)[0]["spec"]["renewTime"] == "2026-12-01T08:00:00.000000Z"  # as the server writes it


class PartitionableLeaseLock(LeaseLock):
    """A LeaseLock on a given ApiClient (LeaseLock itself uses the default one) whose link to the API
    server can be cut, to make a leader stop renewing."""

    def __init__(self, name: str, namespace: str, identity: str, api_client: client.ApiClient) -> None:
        super().__init__(name, namespace, identity)
        self.api_instance = client.CoordinationV1Api(api_client)
        self.partitioned = threading.Event()
        self.renewed = threading.Event()  # set after a successful update of the lease

    def get(self, name, namespace):
        if self.partitioned.is_set():
            return False, ApiException(status=503, reason="partitioned")
        return super().get(name, namespace)

    def create(self, name, namespace, election_record):
        return False if self.partitioned.is_set() else super().create(name, namespace, election_record)

    def update(self, name, namespace, updated_record):
        if self.partitioned.is_set():
            return False
        ok = super().update(name, namespace, updated_record)
        if ok:
            self.renewed.set()
        return ok


def test_leader_election_hands_over_when_the_leader_stops_renewing(kube, api_client):
    started = {"a": threading.Event(), "b": threading.Event()}
    stopped = {"a": threading.Event(), "b": threading.Event()}
    locks, threads = {}, {}
    for ident in ("a", "b"):
        locks[ident] = PartitionableLeaseLock("ollama-gitops-leader", NS, ident, api_client)
        # shortest timings the client accepts: retry >= 1, renew_deadline > 1.2 * retry, integer lease > renew
        config = electionconfig.Config(locks[ident], lease_duration=2, renew_deadline=1.5, retry_period=1,
                                       onstarted_leading=started[ident].set, onstopped_leading=stopped[ident].set)
        threads[ident] = threading.Thread(target=leaderelection.LeaderElection(config).run, daemon=True)

    try:
        threads["a"].start()
        assert started["a"].wait(WAIT)
        assert kube.leases(NS)[0]["spec"]["holderIdentity"] == "a"
        threads["b"].start()
        assert locks["a"].renewed.wait(WAIT)  # the leader renews (a PUT with the current resourceVersion)
        assert kube.leases(NS)[0]["spec"]["holderIdentity"] == "a"

        locks["a"].partitioned.set()
        assert stopped["a"].wait(WAIT)
        assert started["b"].wait(WAIT)
        lease = kube.leases(NS)[0]
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseDurationSeconds"] == 2
        assert locks["b"].renewed.is_set()  # b took the existing lease over with a PUT ...
        assert kube.count("create", path_regex="/leases$") == 1  # ... that a alone created
    finally:
        for lock in locks.values():
            lock.partitioned.set()
    assert stopped["b"].wait(WAIT)
    for t in threads.values():
        t.join(WAIT)
        assert not t.is_alive()


# ------------------------------------------------------------------------------------------------
# Events, discovery, schema


def test_events_of_both_apis_are_accepted_and_recorded(kube, api_client):
    core = client.CoreV1Api(api_client)
    ref = client.V1ObjectReference(api_version=f"{G}/{V}", kind="OllamaModel", name="llama", namespace=NS)
    made, code, _ = core.create_namespaced_event_with_http_info(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="llama."), involved_object=ref, reason="Pulled",
        message="pulled llama3.2:1b", type="Normal", source=client.V1EventSource(component="ollama-gitops")))
    assert code == 201 and made.metadata.name.startswith("llama.")

    events_api = client.EventsV1Api(api_client)
    events_api.create_namespaced_event(NS, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="llama.2"), event_time=datetime.now(timezone.utc), action="Pull",
        reason="PullFailed", note="manifest unknown", type="Warning", regarding=ref,
        reporting_controller="ollama.smithforge.dev/ollama-gitops", reporting_instance="pod-1"))

    recorded = kube.events()
    assert [(e["apiVersion"], e["reason"]) for e in recorded] == [("v1", "Pulled"), ("events.k8s.io/v1", "PullFailed")]
    assert recorded[0]["involvedObject"]["name"] == "llama" and recorded[1]["regarding"]["kind"] == "OllamaModel"

    # like the real server: the involved object's namespace must match the event's
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_event(NS, client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="bad"), reason="X",
            involved_object=client.V1ObjectReference(kind="OllamaModel", name="llama", namespace="elsewhere")))
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:
        events_api.create_namespaced_event(NS, client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="bad"), event_time=datetime.now(timezone.utc), regarding=ref))
    assert exc.value.status == 422
    assert len(kube.events()) == 2


def test_events_are_listed_by_the_field_selector_kubectl_describe_uses(kube, api_client):
    # kubectl describe: GetFieldSelector(&ref.Name, &ref.Namespace, refKind, refUID), keys sorted
    core = client.CoreV1Api(api_client)
    for uid, reason in (("uid-1", "Pulled"), ("uid-2", "Pulled"), ("uid-1", "PullFailed")):
        ref = client.V1ObjectReference(api_version=f"{G}/{V}", kind="OllamaModel", name="llama", namespace=NS,
                                       uid=uid, resource_version="7")
        core.create_namespaced_event(NS, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="llama."), involved_object=ref, reason=reason,
            type="Warning" if reason == "PullFailed" else "Normal", source=client.V1EventSource(component="og")))
    selector = f"involvedObject.kind=OllamaModel,involvedObject.name=llama,involvedObject.namespace={NS},involvedObject.uid=uid-1"
    found = core.list_namespaced_event(NS, field_selector=selector, limit=500).items
    assert sorted(e.reason for e in found) == ["PullFailed", "Pulled"] and {e.involved_object.uid for e in found} == {"uid-1"}
    assert [e.reason for e in core.list_namespaced_event(NS, field_selector="type=Warning,source=og").items] == ["PullFailed"]
    assert core.list_namespaced_event(NS, field_selector="involvedObject.uid!=uid-1").items[0].involved_object.uid == "uid-2"
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_event(NS, field_selector="involvedObject.color=red")
    assert exc.value.status == 400 and "field label not supported: involvedObject.color" in exc.value.body


def test_discovery_is_enough_for_the_dynamic_client(tmp_path, kube, api_client):
    dyn = DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))
    models = dyn.resources.get(api_version=f"{G}/{V}", kind="OllamaModel")
    assert models.namespaced and models.name == P
    models.create(body=model("llama"), namespace=NS)
    assert [i.metadata.name for i in models.get(namespace=NS).items] == ["llama"]
    assert dyn.resources.get(api_version="coordination.k8s.io/v1", kind="Lease").namespaced
    assert client.VersionApi(api_client).get_code().major == "1"


def test_a_kubeconfig_for_the_stand_in(tmp_path, kube):
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="models")
    with config.new_client_from_config(config_file=str(path)) as c:
        assert c.configuration.host == kube.url
        assert "default" in [n.metadata.name for n in client.CoreV1Api(c).list_namespace().items]
    assert config.list_kube_config_contexts(config_file=str(path))[1]["context"]["namespace"] == "models"


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {"type": "object", "required": ["name", "tag"],
                 "properties": {"name": {"type": "string", "minLength": 1},
                                "tag": {"type": "string", "minLength": 1}}},
        "status": {"type": "object",
                   "properties": {"state": {"type": "string", "enum": ["Pending", "Pulling", "Ready", "Failed"]},
                                  "size": {"type": "integer", "format": "int64", "minimum": 0}}},
    },
}


def test_a_crd_schema_prunes_unknown_fields_and_validates():
    with KubeStandin(schema=SCHEMA, bookmark_interval=0) as kube, client.ApiClient(kube.client_configuration()) as c:
        api = client.CustomObjectsApi(c)
        body = model("llama")
        body["spec"]["extra"] = "dropped"
        assert create(api, body)["spec"] == {"name": "llama3.2", "tag": "1b"}
        obj = api.patch_namespaced_custom_object_status(G, V, NS, P, "llama",
                                                        {"status": {"state": "Ready", "progress": 50}})
        assert obj["status"] == {"state": "Ready"}
        with pytest.raises(ApiException) as exc:
            api.patch_namespaced_custom_object_status(G, V, NS, P, "llama", {"status": {"state": "Done"}})
        assert exc.value.status == 422 and "status.state" in status_of(exc.value)["message"]
        with pytest.raises(ApiException) as exc:
            api.patch_namespaced_custom_object(G, V, NS, P, "llama", {"spec": {"tag": ""}})
        assert exc.value.status == 422 and "spec.tag" in status_of(exc.value)["message"]


# ------------------------------------------------------------------------------------------------
# ConfigMaps


def test_config_maps_create_patch_and_read_back(kube, api_client):
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_config_map(NS, {"metadata": {"name": "sync"}, "data": {"a.b": "1"}})
    assert created.metadata.resource_version and created.data == {"a.b": "1"}
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "sync"}})
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    patched = core.patch_namespaced_config_map("sync", NS, {"metadata": {"annotations": {"x.dev/at": "now"}}},
                                               _content_type="application/merge-patch+json")
    assert patched.metadata.annotations == {"x.dev/at": "now"} and patched.data == {"a.b": "1"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    again = core.patch_namespaced_config_map("sync", NS, {"metadata": {"annotations": {"x.dev/at": "now"}}},
                                             _content_type="application/merge-patch+json")
    assert again.metadata.resource_version == patched.metadata.resource_version  # a no-op write stores nothing
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map("missing", NS, {"metadata": {"annotations": {"a": "b"}}},
                                         _content_type="application/merge-patch+json")
    assert exc.value.status == 404 and status_of(exc.value)["message"] == 'configmaps "missing" not found'
    emptied = core.patch_namespaced_config_map("sync", NS, {"data": None}, _content_type="application/merge-patch+json")
    assert emptied.data is None and "data" not in kube.config_maps(NS)[0]
    assert [c["metadata"]["name"] for c in kube.config_maps()] == ["sync"]


@pytest.mark.parametrize(("data", "binary", "fragment"), [
    ({"bad key": "x"}, None, "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of"),
    ({"..": "x"}, None, "must not be '..'"),
    ({"..x": "x"}, None, "must not start with '..'"),
    ({"k": "x"}, {"k": "eA=="}, "duplicate of key present in binaryData"),
    ({"k": "x" * (1024 * 1024)}, None, "Too long: must have at most 1048576 bytes"),
])
def test_config_map_validation_is_422(api_client, data, binary, fragment):
    core = client.CoreV1Api(api_client)
    body = {"metadata": {"name": "cm"}, "data": data}
    if binary:
        body["binaryData"] = binary
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(NS, body)
    assert exc.value.status == 422 and fragment in status_of(exc.value)["message"], status_of(exc.value)


def test_config_map_values_must_be_strings_and_binary_data_base64(kube):
    import httpx  # the client refuses a number before sending it: say it over plain HTTP

    for body, fragment in (({"metadata": {"name": "cm"}, "data": {"k": 1}}, "ConfigMap.data of type string"),
                           ({"metadata": {"name": "cm"}, "binaryData": {"k": "not base64!"}}, "illegal base64 data")):
        answer = httpx.post(f"{kube.url}/api/v1/namespaces/{NS}/configmaps", json=body)
        assert answer.status_code == 400 and fragment in answer.json()["message"]
    assert kube.config_maps() == []


def test_an_immutable_config_map_keeps_its_data_but_not_its_metadata(api_client):
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}, "data": {"k": "v"}, "immutable": True})
    patched = core.patch_namespaced_config_map("cm", NS, {"metadata": {"labels": {"a": "b"}}},
                                               _content_type="application/merge-patch+json")
    assert patched.metadata.labels == {"a": "b"}
    for change in ({"data": {"k": "w"}}, {"immutable": False}):
        with pytest.raises(ApiException) as exc:
            core.patch_namespaced_config_map("cm", NS, change, _content_type="application/merge-patch+json")
        assert exc.value.status == 422 and "field is immutable when `immutable` is set" in status_of(exc.value)["message"]


def test_config_map_watch_by_name_sees_only_that_one(kube, api_client):
    core = client.CoreV1Api(api_client)
    listed = core.list_namespaced_config_map(NS, field_selector="metadata.name=sync")
    assert listed.items == []
    core.create_namespaced_config_map(NS, {"metadata": {"name": "other"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "sync"}})
    core.patch_namespaced_config_map("sync", NS, {"metadata": {"annotations": {"a": "1"}}},
                                     _content_type="application/merge-patch+json")
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_config_map, NS, field_selector="metadata.name=sync",
                          resource_version=listed.metadata.resource_version, timeout_seconds=5):
        seen.append((event["type"], event["raw_object"]["metadata"]["name"],
                     (event["raw_object"]["metadata"].get("annotations") or {}).get("a")))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "sync", None), ("MODIFIED", "sync", "1")]


# ------------------------------------------------------------------------------------------------
# Pods, Nodes and EndpointSlices (what the fleet's discovery reads)


def test_pods_and_nodes_are_selected_by_their_own_fields_and_others_are_refused(api_client):
    core = client.CoreV1Api(api_client)
    core.create_node({"metadata": {"name": "gpu-1", "labels": {"gpu": "a100"}}, "spec": {"unschedulable": True}})
    core.create_node({"metadata": {"name": "cpu-1"}})
    for name, node in (("a", "gpu-1"), ("b", "cpu-1")):
        core.create_namespaced_pod(NS, {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [
            {"name": "c", "image": "i"}]}, "status": {"phase": "Running"}})
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="spec.nodeName=gpu-1").items] == ["a"]
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="status.phase=Running").items] == ["a", "b"]
    assert [n.metadata.name for n in core.list_node(field_selector="spec.unschedulable=false").items] == ["cpu-1"]
    assert [n.metadata.name for n in core.list_node(label_selector="gpu").items] == ["gpu-1"]
    with pytest.raises(ApiException) as exc:
        core.list_node(field_selector="spec.nodeName=x")
    assert exc.value.status == 400 and status_of(exc.value)["message"] == "field label not supported: spec.nodeName"
    deleted = core.delete_namespaced_pod("a", NS)  # a Pod's registry answers the deleted Pod
    assert deleted.metadata.name == "a" and [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["b"]


def test_endpoint_slices_are_validated_in_what_readers_depend_on(api_client):
    slices = client.DiscoveryV1Api(api_client)
    body = {"metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "svc"}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.0.0.1"]}]}
    slices.create_namespaced_endpoint_slice(NS, body)
    for change, field in (({"addressType": "IPv6"}, "addressType"), ({"endpoints": [{"addresses": []}]},
                                                                      "endpoints[0].addresses")):
        with pytest.raises(ApiException) as exc:
            slices.patch_namespaced_endpoint_slice("s", NS, change)
        assert exc.value.status == 422 and status_of(exc.value)["details"]["causes"][0]["field"] == field
    listed = slices.list_namespaced_endpoint_slice(NS, label_selector="kubernetes.io/service-name=svc")
    assert [s.metadata.name for s in listed.items] == ["s"] and listed.items[0].endpoints[0].addresses == ["10.0.0.1"]
