"""The API when its own parts are damaged or the models repository holds entries it cannot read."""

from __future__ import annotations

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
