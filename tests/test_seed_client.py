"""The seed document's own Ruby client, unchanged, against ollama-gitops."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from apirig import API_KEY, ApiRig

CLIENT = Path(__file__).parent / "seed_client" / "usage.rb"


@pytest.fixture(params=["with-key", "without-key"])
def api_either_way(request: pytest.FixtureRequest, tmp_path: Path, ollama):
    """With an API key, and without one (where the Host and Origin checks apply: the client sends no
    Origin, and no Content-Type on refresh)."""
    rig = ApiRig(tmp_path, ollama, api_key=API_KEY if request.param == "with-key" else None)
    rig.seed(("llama3.2", "1b"), ("gemma3", "1b"))
    rig.start()
    yield rig
    rig.stop()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (.ci/run installs it)")
def test_seed_ruby_client_works_unchanged(api_either_way: ApiRig) -> None:
    api = api_either_way
    result = subprocess.run(["ruby", str(CLIENT), api.url, API_KEY], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    steps = {line["step"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert steps["list"]["names"] == ["gemma3-1b", "llama3.2-1b"]
    assert steps["create"]["result"] == {"name": "phi3-mini", "namespace": "default", "modelName": "phi3",
                                         "tag": "mini", "state": "Pending"}
    assert steps["get"]["state"] == "Pending"
    assert steps["refresh"]["result"]["name"] == "phi3-mini"
    assert steps["delete"]["result"] is None  # 204: the client returns nil
    assert steps["missing"]["result"] == {"error": "model not found: phi3-mini"}
