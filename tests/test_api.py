"""The API through real HTTP against `serve`: the seed's calls, the seed's answers, and every error."""

from __future__ import annotations

from pathlib import Path

import git
import httpx
import jsonschema
import pytest

from ollama_gitops.api import runtime
from apirig import API_KEY, ApiRig
from waiting import eventually
from ollama_gitops.reconciler.models.modelfile import ModelFields, parse

MODEL_FIELDS = ["name", "namespace", "modelName", "tag", "state", "size", "formattedSize", "lastPullTime", "error", "progress", "digest", "suspended"]


def openapi(api: ApiRig) -> dict:
    return api.client.get("/api/v1/openapi.json").json()


def check(api: ApiRig, response: httpx.Response, schema_name: str) -> dict:
    """Hold a response body against the API's own OpenAPI document."""
    document = openapi(api)
    body = response.json()
    resolver_schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(resolver_schema).validate(body)
    return body


def remote_file(api: ApiRig, path: str) -> str | None:
    repo = git.Repo(api.remote)  # held while the blob is read: its reader closes with it
    try:
        return repo.commit("main").tree[path].data_stream.read().decode()
    except KeyError:
        return None
    finally:
        repo.close()


def test_list_models_as_the_seed_answers(api: ApiRig) -> None:
    response = api.client.get("/api/v1/models")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.text.endswith("\n")
    items = check(api, response, "ModelList")["items"]
    assert [(m["name"], m["modelName"], m["tag"], m["state"], m["namespace"]) for m in items] == [
        ("gemma3-1b", "gemma3", "1b", "Pending", "default"), ("llama3.2-1b", "llama3.2", "1b", "Pending", "default")]
    assert list(items[0]) == ["name", "namespace", "modelName", "tag", "state"]  # empty fields left out
    api.settle()
    items = api.client.get("/api/v1/models").json()["items"]
    llama = items[1]
    assert llama["state"] == "Ready" and llama["size"] == 1815319791 and llama["formattedSize"] == "1.7 GiB"
    assert items[0]["formattedSize"] == "777.5 MiB"
    assert "digest" not in llama  # a pull's stream does not say it: the next resync's listing does
    assert api.running.service.reconciler.run_cycle(full=True).full
    llama = api.client.get("/api/v1/models").json()["items"][1]
    assert llama["digest"] == api.ollama.digest_of("llama3.2:1b")
    assert [k for k in llama if k in MODEL_FIELDS] == list(llama)
    assert [k for k in MODEL_FIELDS if k in llama][:8] == ["name", "namespace", "modelName", "tag", "state", "size", "formattedSize", "lastPullTime"]


def test_unknown_namespace_lists_nothing(api: ApiRig) -> None:
    response = api.client.get("/api/v1/models", params={"namespace": "nobody"})
    assert response.status_code == 200 and response.text == '{"items":[]}\n'


def test_get_model_and_not_found(api: ApiRig) -> None:
    response = api.client.get("/api/v1/models/gemma3-1b")
    assert response.status_code == 200
    assert check(api, response, "Model")["modelName"] == "gemma3"
    missing = api.client.get("/api/v1/models/phi3-mini")
    assert missing.status_code == 404 and missing.text == '{"error":"model not found: phi3-mini"}\n'


def test_create_commits_pushes_and_answers_pending(api: ApiRig) -> None:
    response = api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"})
    assert response.status_code == 201
    assert response.text == '{"name":"phi3-mini","namespace":"default","modelName":"phi3","tag":"mini","state":"Pending"}\n'
    head = git.Repo(api.remote).commit("main")
    assert head.message == "Add model phi3:mini\n"
    assert (head.author.name, head.author.email) == ("API Test", "api@example.com")
    assert parse(remote_file(api, "models/default/phi3-mini.yaml").encode()) == ModelFields("phi3", "mini")
    assert api.client.get("/api/v1/models/phi3-mini").json()["state"] == "Pending"  # read at once, from memory
    api.settle()  # the write asked for a cycle; run it synchronously here
    assert api.client.get("/api/v1/models/phi3-mini").json()["state"] == "Ready"
    assert "phi3:mini" in api.ollama.installed()


def test_create_with_optional_fields_and_namespace(api: ApiRig) -> None:
    body = {"name": "qwen2.5", "tag": "0.5b", "labels": {"team": "search"}, "prune": False}
    response = api.client.post("/api/v1/models", params={"namespace": "team-a"}, json=body)
    assert response.status_code == 201 and response.json()["namespace"] == "team-a"
    fields = parse(remote_file(api, "models/team-a/qwen2.5-0.5b.yaml").encode())
    assert fields == ModelFields("qwen2.5", "0.5b", labels={"team": "search"}, prune=False)


def test_create_existing_is_409(api: ApiRig) -> None:
    response = api.client.post("/api/v1/models", json={"name": "gemma3", "tag": "1b"})
    assert response.status_code == 409 and response.json() == {"error": "model already exists: gemma3-1b"}


def test_another_spelling_of_an_existing_model_is_another_resource_and_the_same_ollama_model(api: ApiRig) -> None:
    # `library/llama3.2:1b` is Ollama's `llama3.2:1b` (seeded), but its resource name differs: the file
    # is allowed, and the reconciler pulls nothing more, both being the one model Ollama lists.
    response = api.client.post("/api/v1/models", json={"name": "library/llama3.2", "tag": "1b"})
    assert response.status_code == 201 and response.json()["name"] == "library-llama3.2-1b"
    api.settle()
    assert api.running.service.reconciler.run_cycle(full=True).full  # the listing gives the digest
    both = [api.client.get(f"/api/v1/models/{name}").json() for name in ("llama3.2-1b", "library-llama3.2-1b")]
    assert [m["state"] for m in both] == ["Ready", "Ready"]
    assert both[0]["digest"] == both[1]["digest"] == api.ollama.digest_of("llama3.2:1b")
    assert api.ollama.pull_count["llama3.2:1b"] == 1
    assert api.client.delete("/api/v1/models/llama3.2-1b").status_code in (200, 204)
    api.settle()
    assert "llama3.2:1b" in api.ollama.installed()  # still wanted by the other file


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "invalid request:"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "must be a JSON object"),
        (b'{"name": "phi3"}', "missing required field 'tag'"),
        (b'{"tag": "mini"}', "missing required field 'name'"),
        (b'{"name": "phi3", "tag": 3}', "field 'tag' must be a string"),
        (b'{"name": "phi3", "tag": "mini", "namespace": "x"}', "unknown field 'namespace'"),
        (b'{"name": "phi3", "tag": "mini", "sus": true}', "unknown field 'sus'"),
        (b'{"name": "../../etc", "tag": "passwd"}', "field 'name' has an invalid value"),
        (b'{"name": "phi3", "tag": "mini", "refreshRequestedAt": "tomorrow"}', "refreshRequestedAt"),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(api: ApiRig, body: bytes, fragment: str) -> None:
    before = git.Repo(api.remote).commit("main").hexsha
    response = api.client.post("/api/v1/models", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert git.Repo(api.remote).commit("main").hexsha == before


@pytest.mark.parametrize("depth", [65, 990, 5_000, 30_000])
@pytest.mark.parametrize("where", ["top", "label"])
def test_deeply_nested_bodies_are_400_not_500(api: ApiRig, depth: int, where: str) -> None:
    nested = "[" * depth + "]" * depth
    body = nested if where == "top" else '{"name": "phi3", "tag": "mini", "labels": {"a": %s}}' % nested
    before = git.Repo(api.remote).commit("main").hexsha
    response = api.client.post("/api/v1/models", content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested deeper than" in response.json()["error"]
    assert git.Repo(api.remote).commit("main").hexsha == before


def test_brackets_inside_strings_are_not_nesting(api: ApiRig) -> None:
    body = {"name": "phi3", "tag": "mini", "labels": {"note": "[" * 2000 + "{" * 2000}}
    response = api.client.post("/api/v1/models", json=body)
    assert response.status_code == 400 and "label" in response.json()["error"]  # the schema's own complaint


@pytest.mark.parametrize("body", [
    b'{"name":"a","tag":"x","name":"b"}',
    b'{"name":"phi3","tag":"mini","labels":{"team":"a","team":"b"}}',
    b'{"name":"phi3","tag":"mini","tag":"mini"}',
])
def test_duplicate_keys_are_400_and_create_nothing(api: ApiRig, body: bytes) -> None:
    before = git.Repo(api.remote).commit("main").hexsha
    response = api.client.post("/api/v1/models", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "duplicate key" in response.json()["error"]
    assert git.Repo(api.remote).commit("main").hexsha == before


@pytest.mark.parametrize("body", [b'{"name":"phi3","tag":"mini","prune":NaN}', b'{"name":"phi3","tag":"mini","x":Infinity}',
                                  b'{"name":"phi3","tag":"mini"} trailing', b'\xff\xfe{}', b'{"n":' + b"1" * 5000 + b"}"])
def test_what_is_not_strict_json_is_400(api: ApiRig, body: bytes) -> None:
    response = api.client.post("/api/v1/models", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("invalid request:")


def test_bad_namespace_is_400(api: ApiRig) -> None:
    response = api.client.get("/api/v1/models", params={"namespace": "../x"})
    assert response.status_code == 400 and "invalid namespace" in response.json()["error"]


def test_oversized_body_is_413_json(api: ApiRig) -> None:
    response = api.client.post("/api/v1/models", content=b"{" + b" " * 70_000 + b"}", headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json() == {"error": "request body too large"}


def test_delete_is_204_with_no_body_and_removes_the_file(api: ApiRig) -> None:
    response = api.client.delete("/api/v1/models/gemma3-1b")
    assert response.status_code == 204 and response.content == b""
    assert remote_file(api, "models/default/gemma3-1b.yaml") is None
    assert git.Repo(api.remote).commit("main").message == "Delete model gemma3:1b\n"
    assert api.client.get("/api/v1/models/gemma3-1b").status_code == 404
    again = api.client.delete("/api/v1/models/gemma3-1b")
    assert again.status_code == 404 and again.json() == {"error": "model not found: gemma3-1b"}


def test_refresh_is_202_bumps_the_file_and_repulls(api: ApiRig) -> None:
    api.settle()
    response = api.client.post("/api/v1/models/llama3.2-1b/refresh")
    assert response.status_code == 202
    assert check(api, response, "Model")["state"] == "Ready"
    assert "refreshRequestedAt:" in remote_file(api, "models/default/llama3.2-1b.yaml")
    assert git.Repo(api.remote).commit("main").message == "Refresh model llama3.2:1b\n"
    api.settle()
    assert api.ollama.pull_count["llama3.2:1b"] == 2
    missing = api.client.post("/api/v1/models/nope-1/refresh")
    assert missing.status_code == 404 and missing.json() == {"error": "model not found: nope-1"}


def test_pulling_model_carries_progress(api: ApiRig) -> None:
    reconciler = api.running.service.reconciler
    with api.ollama.hold_pulls() as gate:
        reconciler.run_cycle()
        assert gate.wait_for_pulls(2, timeout=10)
        # The stand-in holds the pull after sending its first progress line; the reconciler may not
        # have read that line yet.
        model = eventually(lambda: (m := api.client.get("/api/v1/models/llama3.2-1b").json()).get("progress") and m,
                           what="the first progress line recorded")
        assert model["state"] == "Pulling"
        # Ollama announces layers as it reaches them, so the total grows with the pull.
        assert 0 <= model["progress"]["completed"] <= model["progress"]["total"] <= 1815319791
    assert reconciler.pulls.wait(timeout=10)


@pytest.mark.parametrize("path", [
    "/api/v1/models/..", "/api/v1/models/%2e%2e", "/api/v1/models/..%2F..%2Fetc%2Fpasswd",
    "/api/v1/models/a%00b", "/api/v1/models/" + "a" * 300, "/api/v1/models/UPPER", "/api/v1/models/.hidden",
])
def test_bad_names_in_paths_never_reach_a_file(api: ApiRig, path: str) -> None:
    before = git.Repo(api.remote).commit("main").hexsha
    for method in ("GET", "DELETE"):
        response = api.client.request(method, path)
        assert response.status_code in (400, 404), (method, path, response.status_code)
        assert "error" in response.json()
    response = api.client.post(path + "/refresh")
    assert response.status_code in (400, 404)
    assert git.Repo(api.remote).commit("main").hexsha == before


def test_authentication_as_the_seed(api: ApiRig) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}):
        response = httpx.get(f"{api.url}/api/v1/models", headers=headers)
        assert response.status_code == 401 and response.text == "Unauthorized\n"
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert httpx.post(f"{api.url}/api/v1/models", json={"name": "x", "tag": "y"}).status_code == 401
    assert httpx.get(f"{api.url}/health").text == "OK"
    assert httpx.get(f"{api.url}/readiness").text == "Ready"
    assert httpx.get(f"{api.url}/metrics").status_code == 200


def test_json_errors_under_api_and_text_elsewhere(api: ApiRig) -> None:
    missing = api.client.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "not found"}
    wrong_method = api.client.put("/api/v1/models")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "method not allowed"}
    assert "GET" in wrong_method.headers["allow"] and "POST" in wrong_method.headers["allow"]
    elsewhere = api.client.get("/nothing")
    assert elsewhere.status_code == 404 and elsewhere.headers["content-type"].startswith("text/plain")


def test_status_reports_commits_cycle_and_file_problems(api: ApiRig) -> None:
    api.work.write("models/default/broken-1.yaml", "name: broken\ntag: [\n")
    api.publish("broken file")
    response = api.client.get("/api/v1/status")
    body = check(api, response, "Status")
    assert body["lastFetchedCommit"] == body["lastAppliedCommit"] == git.Repo(api.remote).commit("main").hexsha
    assert body["lastCycleOutcome"] == "Succeeded"
    assert body["problems"] == [{"path": "models/default/broken-1.yaml", "line": 3, "message": body["problems"][0]["message"]}]
    assert body["problems"][0]["message"].startswith("YAML syntax error")


def test_metrics_cover_requests_cycles_and_models(api: ApiRig) -> None:
    api.client.get("/api/v1/models")
    api.client.get("/api/v1/models/nope-1")
    api.settle()
    text = httpx.get(f"{api.url}/metrics").text
    assert 'ollama_api_requests_total{method="GET",path="/api/v1/models",status="200"}' in text
    assert 'ollama_api_requests_total{method="GET",path="/api/v1/models/<name>",status="404"}' in text
    assert "ollama_api_request_duration_seconds_bucket" in text
    assert 'ollama_gitops_models{state="Ready"} 2.0' in text
    assert "ollama_gitops_reconcile_duration_seconds_count" in text
    assert 'ollama_gitops_reconcile_cycles_total{outcome="succeeded"}' in text
    assert "ollama_gitops_pull_duration_seconds_count" in text


def test_push_failure_is_503_and_leaves_nothing_behind(api: ApiRig) -> None:
    moved = api.remote.with_name("gone.git")
    api.remote.rename(moved)
    try:
        response = api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"})
        assert response.status_code == 503 and "not available" in response.json()["error"]
        assert api.client.get("/api/v1/models/phi3-mini").status_code == 404
    finally:
        moved.rename(api.remote)
    assert remote_file(api, "models/default/phi3-mini.yaml") is None


def test_a_write_while_the_branch_is_gone_is_503_and_does_not_recreate_it(api: ApiRig) -> None:
    git.Repo(api.remote).git.config("receive.shallowUpdate", "true")  # as GitHub: the API's clone is shallow
    git.Repo(api.remote).git.update_ref("-d", "refs/heads/main")
    for method, path, body in (("POST", "/api/v1/models", {"name": "phi3", "tag": "mini"}),
                               ("POST", "/api/v1/models/gemma3-1b/refresh", None),
                               ("DELETE", "/api/v1/models/gemma3-1b", None)):
        response = api.client.request(method, path, json=body)
        assert response.status_code == 503, response.text
        assert "branch 'main' is not in the remote repository" in response.json()["error"]
    assert git.Repo(api.remote).git.for_each_ref("refs/heads") == ""


class _FailingLoader:
    def load(self, commit: str) -> None:
        raise RuntimeError("the loader broke after the push")


def test_a_pushed_write_is_answered_as_done_when_what_follows_the_push_fails(
        api: ApiRig, caplog: pytest.LogCaptureFixture) -> None:
    api.running.repository._loader = _FailingLoader()  # a fault in our own code, after the push
    created = api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"})
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "phi3-mini", "namespace": "default", "modelName": "phi3", "tag": "mini",
                              "state": "Pending"}
    assert remote_file(api, "models/default/phi3-mini.yaml") is not None
    refreshed = api.client.post("/api/v1/models/phi3-mini/refresh")  # unknown to the stale desired state
    assert refreshed.status_code == 202, refreshed.text
    assert refreshed.json()["name"] == "phi3-mini"
    assert "refreshRequestedAt" in remote_file(api, "models/default/phi3-mini.yaml")
    assert api.client.delete("/api/v1/models/phi3-mini").status_code == 204
    assert remote_file(api, "models/default/phi3-mini.yaml") is None
    assert "the loader broke after the push" in caplog.text and "action=reload-failed" in caplog.text


def test_openapi_document_describes_every_route(api: ApiRig) -> None:
    document = openapi(api)
    assert document["openapi"].startswith("3.1")
    assert {"/api/v1/models", "/api/v1/models/{name}", "/api/v1/models/{name}/refresh", "/api/v1/status",
            "/health", "/readiness"} <= set(document["paths"])
    assert document["components"]["schemas"]["ModelFile"]["properties"]["tag"]["type"] == "string"


def test_readiness_fails_until_the_repository_was_fetched(tmp_path: Path, ollama) -> None:
    rig = ApiRig(tmp_path, ollama)  # the remote has no branch yet
    rig.start()
    try:
        response = httpx.get(f"{rig.url}/readiness")
        assert response.status_code == 503 and response.text.startswith("not ready:")
        assert httpx.get(f"{rig.url}/health").status_code == 200
        rig.seed(("llama3.2", "1b"))
        rig.running.repository.refresh()
        assert httpx.get(f"{rig.url}/readiness").status_code == 200
    finally:
        rig.stop()


def test_listening_beyond_loopback_needs_a_key_or_an_explicit_opt_out() -> None:
    def options(listen: str | None, key: str | None, insecure: bool = False) -> runtime.ApiOptions:
        return runtime.ApiOptions(listen, key, "default", "a <a@b.c>", insecure)

    assert runtime.listen_address(options(None, None)) == ("127.0.0.1", 8082)
    assert runtime.listen_address(options(None, "k")) == ("0.0.0.0", 8082)
    with pytest.raises(runtime.ConfigurationError, match="without an API key"):
        runtime.listen_address(options("0.0.0.0:8082", None))
    assert runtime.listen_address(options("0.0.0.0:9000", None, insecure=True)) == ("0.0.0.0", 9000)
    assert runtime.listen_address(options("[::1]:8082", None)) == ("::1", 8082)


def test_no_key_configured_means_no_authentication(tmp_path: Path, ollama) -> None:
    rig = ApiRig(tmp_path, ollama, api_key=None)
    rig.seed(("llama3.2", "1b"))
    rig.start()
    try:
        assert httpx.get(f"{rig.url}/api/v1/models").status_code == 200
    finally:
        rig.stop()


# -- cross-site and DNS-rebinding requests --------------------------------------------------------------

@pytest.fixture
def keyless(tmp_path: Path, ollama):
    """`serve` without an API key (so on loopback), as a user runs it on a laptop."""
    rig = ApiRig(tmp_path, ollama, api_key=None, allowed_hosts=("models.internal",))
    rig.seed(("llama3.2", "1b"))
    rig.start()
    yield rig
    rig.stop()


def head_of(rig: ApiRig) -> str:
    return git.Repo(rig.remote).commit("main").hexsha


def test_a_cross_site_post_is_refused_and_pushes_nothing(keyless: ApiRig) -> None:
    before = head_of(keyless)
    for origin in ("http://evil.example", "null", f"http://evil.example:{keyless.running.server.port}",
                   keyless.url.replace("127.0.0.1", "127.0.0.1.evil.example")):
        response = keyless.client.post("/api/v1/models", content=b'{"name": "phi3", "tag": "mini"}',
                                       headers={"Content-Type": "text/plain", "Origin": origin})
        assert response.status_code == 403, (origin, response.text)
        assert "cross-origin" in response.json()["error"]
        for method, path in (("DELETE", "/api/v1/models/llama3.2-1b"), ("POST", "/api/v1/models/llama3.2-1b/refresh")):
            assert keyless.client.request(method, path, headers={"Origin": origin}).status_code == 403
    assert head_of(keyless) == before
    # A read from another origin is answered (the browser keeps the answer from the page: no CORS headers).
    read = keyless.client.get("/api/v1/models", headers={"Origin": "http://evil.example"})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_a_dns_rebound_host_is_refused(keyless: ApiRig) -> None:
    before = head_of(keyless)
    port = keyless.running.server.port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "localhost.evil.example",
                 "", "a b", f"[::2]:{port}"):
        for path in ("/api/v1/models", "/health", "/metrics"):
            response = keyless.client.get(path, headers={"Host": host})
            assert response.status_code == 421, (host, path, response.status_code)
            assert "--allowed-host" in response.json()["error"]
        response = keyless.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"}, headers={"Host": host})
        assert response.status_code == 421
    assert head_of(keyless) == before


def test_the_names_it_serves_and_its_own_origin_are_answered(keyless: ApiRig) -> None:
    port = keyless.running.server.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LocalHost", "localhost.",
                 f"models.internal:{port}", "Models.Internal"):
        assert keyless.client.get("/api/v1/models", headers={"Host": host}).status_code == 200, host
    # The seed's clients send no Origin; the dashboard page this API serves sends its own.
    assert keyless.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"}).status_code == 201
    own = keyless.client.post("/api/v1/models", json={"name": "gemma3", "tag": "1b"},
                              headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})
    assert own.status_code == 201, own.text
    assert keyless.client.post("/api/v1/models/phi3-mini/refresh", headers={"Origin": keyless.url}).status_code == 202
    assert keyless.client.delete("/api/v1/models/phi3-mini", headers={"Origin": keyless.url}).status_code == 204


def test_with_an_api_key_any_host_is_answered_but_cross_origin_writes_are_not(api: ApiRig) -> None:
    # In a cluster the API is reached by Service names and pod IPs (probes too): the key is the guard.
    for host in ("ollama-gitops-api.ollama-gitops.svc", "10.1.2.3:8082", "evil.example"):
        assert api.client.get("/api/v1/models", headers={"Host": host}).status_code == 200
    refused = api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"},
                              headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "cross-origin" in refused.json()["error"]
    assert remote_file(api, "models/default/phi3-mini.yaml") is None


def test_allowed_hosts_from_options_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_gitops.api.cli import allowed_hosts

    monkeypatch.delenv("OLLAMA_GITOPS_ALLOWED_HOSTS", raising=False)
    assert allowed_hosts(None) == ()
    monkeypatch.setenv("OLLAMA_GITOPS_ALLOWED_HOSTS", "a.example, b.example:8082,,")
    assert allowed_hosts(None) == ("a.example", "b.example:8082")
    assert allowed_hosts(["c.example"]) == ("c.example",)  # the option wins
    options = runtime.ApiOptions("127.0.0.1:8082", None, "default", "a <a@b.c>", False, allowed_hosts=("a b",))
    with pytest.raises(runtime.ConfigurationError, match="--allowed-host"):
        runtime.host_check(options)


@pytest.mark.parametrize("broken", ["name: gemma3\ntag: [\n", "name: gemma3\ntag: 1b\nbogus: 1\n"])
def test_a_model_whose_file_is_broken_is_shown_deleted_and_gone_alike(api: ApiRig, broken: str) -> None:
    """GET and DELETE agree: the model the reconciler keeps is there to see, and to delete."""
    api.settle()
    api.work.write("models/default/gemma3-1b.yaml", broken)
    api.publish("break gemma3")
    shown = api.client.get("/api/v1/models/gemma3-1b")
    assert shown.status_code == 200, shown.text
    body = check(api, shown, "Model")
    assert (body["modelName"], body["tag"], body["state"]) == ("gemma3", "1b", "Ready")
    assert body["error"].startswith("model file is invalid, keeping the last good version: ")
    assert "gemma3-1b" in {m["name"] for m in api.client.get("/api/v1/models").json()["items"]}
    assert api.client.delete("/api/v1/models/gemma3-1b").status_code == 204
    assert remote_file(api, "models/default/gemma3-1b.yaml") is None
    api.running.repository.refresh()
    assert api.client.get("/api/v1/models/gemma3-1b").status_code == 404
    assert api.client.delete("/api/v1/models/gemma3-1b").status_code == 404


def test_a_broken_file_with_no_good_version_is_shown_and_deleted_alike(api: ApiRig) -> None:
    api.work.write("models/default/phi3-mini.yaml", "name: phi3\ntag: [\n")
    api.publish("a broken new file")
    shown = api.client.get("/api/v1/models/phi3-mini")
    deleted = api.client.delete("/api/v1/models/phi3-mini")
    # No model yet (nothing was ever pulled for it): both say not found, and why; Git keeps the file.
    assert (shown.status_code, deleted.status_code) == (404, 404), (shown.text, deleted.text)
    for answer in (shown, deleted):
        message = answer.json()["error"]
        assert message.startswith("model not found: phi3-mini (its file is invalid: models/default/phi3-mini.yaml:")
    assert remote_file(api, "models/default/phi3-mini.yaml") == "name: phi3\ntag: [\n"


@pytest.mark.parametrize("path", ["/api/v1/models/a%2Fb", "/api/v1/models/a%2fb", "/api/v1/models/..%2F..%2Fetc%2Fpasswd",
                                  "/api/v1/models/a%2Fb/refresh"])
def test_an_encoded_slash_in_a_name_is_a_400_as_readme_says(api: ApiRig, path: str) -> None:
    before = git.Repo(api.remote).commit("main").hexsha
    methods = ("POST",) if path.endswith("/refresh") else ("GET", "DELETE")
    for method in methods:
        response = api.client.request(method, path)
        assert response.status_code == 400, (method, path, response.status_code, response.text)
        assert "invalid model name" in response.json()["error"]
    assert git.Repo(api.remote).commit("main").hexsha == before
