"""The API when its own parts are damaged or the models repository holds entries it cannot read."""

from __future__ import annotations

import git
import pytest

from apirig import ApiRig


def test_an_api_clone_git_cannot_open_is_set_aside_and_cloned_again(api: ApiRig, caplog: pytest.LogCaptureFixture) -> None:
    clone = api.state_dir / "api.git"
    (clone / "config").write_bytes(b"\x00\xffgarbage [[[\n")
    api.work.model("default", "phi3", "mini")
    api.work.commit("add phi3")
    api.work.push()
    with caplog.at_level("WARNING"):
        api.running.repository.refresh()
    assert api.running.repository.last_error is None
    (aside,) = api.state_dir.glob("api.git.broken-*")
    assert any("cloning again" in r.getMessage() and aside.name in r.getMessage() for r in caplog.records)
    assert api.client.get("/api/v1/models/phi3-mini").status_code == 200
    created = api.client.post("/api/v1/models", json={"name": "qwen2.5", "tag": "0.5b"})
    assert created.status_code == 201, created.text
    assert api.client.get("/api/v1/models/qwen2.5-0.5b").status_code == 200


def test_a_model_behind_a_submodule_entry_is_shown_with_the_problem_and_post_agrees(api: ApiRig) -> None:
    api.settle()
    api.work.submodule("models/default/gemma3-1b.yaml")
    api.work.commit("gemma3's file becomes a submodule")
    api.work.push()
    api.running.repository.refresh()
    shown = api.client.get("/api/v1/models/gemma3-1b")
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["modelName"], body["tag"], body["state"]) == ("gemma3", "1b", "Ready")
    assert "model files must be regular files, not Git submodules" in body["error"]
    assert [m["name"] for m in api.client.get("/api/v1/models").json()["items"]] == ["gemma3-1b", "llama3.2-1b"]
    again = api.client.post("/api/v1/models", json={"name": "gemma3", "tag": "1b"})
    assert again.status_code == 409  # it exists, as GET says
    problems = api.client.get("/api/v1/status").json()["problems"]
    assert [p["path"] for p in problems] == ["models/default/gemma3-1b.yaml"]


@pytest.mark.parametrize("replaced", ["models/default", "models"])
def test_models_of_an_unreadable_namespace_folder_are_listed_and_shown(api: ApiRig, replaced: str) -> None:
    api.settle()
    api.work.symlink(replaced, "elsewhere")
    api.work.commit(f"{replaced} becomes a link")
    api.work.push()
    api.running.repository.refresh()
    items = api.client.get("/api/v1/models").json()["items"]
    assert [(m["name"], m["state"]) for m in items] == [("gemma3-1b", "Ready"), ("llama3.2-1b", "Ready")]
    assert all(m["error"].startswith(f"{replaced}: ") and "symbolic link" in m["error"] for m in items)
    shown = api.client.get("/api/v1/models/llama3.2-1b")
    assert shown.status_code == 200 and shown.json()["error"] == items[1]["error"]
    api.settle()  # the reconciler records the same error: the view does not change
    assert api.client.get("/api/v1/models").json()["items"] == items
    assert api.ollama.delete_count == {}


@pytest.mark.parametrize("replaced", ["models/default", "models"])
@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_writes_through_an_unreadable_folder_are_refused_and_replace_nothing(api: ApiRig, replaced: str, kind: str) -> None:
    api.settle()
    api.work.special(replaced, kind)
    api.work.commit(f"{replaced} becomes a {kind}")
    api.work.push()
    api.running.repository.refresh()
    head = git.Repo(api.remote).commit("main").hexsha
    for answer in (api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"}),
                   api.client.post("/api/v1/models", json={"name": "llama3.2", "tag": "1b"}),
                   api.client.delete("/api/v1/models/llama3.2-1b"),
                   api.client.post("/api/v1/models/llama3.2-1b/refresh")):
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"].startswith(f"{replaced} is a ") and "make it one again in Git" in answer.json()["error"]
    assert git.Repo(api.remote).commit("main").hexsha == head  # nothing was pushed
    assert api.client.get("/api/v1/models/llama3.2-1b").status_code == 200  # GET agrees: it is there, kept


def test_writes_to_a_model_whose_file_is_a_submodule_are_refused(api: ApiRig) -> None:
    api.settle()
    api.work.submodule("models/default/gemma3-1b.yaml")
    api.work.commit("gemma3's file becomes a submodule")
    api.work.push()
    api.running.repository.refresh()
    for answer in (api.client.delete("/api/v1/models/gemma3-1b"), api.client.post("/api/v1/models/gemma3-1b/refresh")):
        assert answer.status_code == 409, answer.text
        assert "models/default/gemma3-1b.yaml is a Git submodule, not a file" in answer.json()["error"]
    assert api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"}).status_code == 201  # others go on
