"""Issue 12's "done when": a user with three Ollama machines runs one `serve` with a servers file
and sees each model on each machine it is placed on. Every server is its own process here, and so
is `serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import yaml

from gitrepos import WorkRepo, init_bare
from processes import Children
from rig import CATALOGUE
from test_serve_cli import COMMAND, LISTENING, START, STOP
from waiting import eventually

STANDIN = Path(__file__).parent / "standins" / "ollama_server.py"


def installed(url: str) -> set[str]:
    return {m["name"] for m in httpx.get(f"{url}/api/tags", timeout=10).json()["models"]}


def test_serve_keeps_three_servers_of_a_servers_file_each_with_the_models_placed_on_it(
        tmp_path: Path, children: Children) -> None:
    catalogue = [arg for ref, size in CATALOGUE.items() for arg in ("--catalogue", f"{ref}={size}")]
    labels = {"gpu-1": {"gpu": "a100"}, "gpu-2": {"gpu": "l4"}, "gpu-3": {"gpu": "l4"}}
    urls = {}
    for name in labels:
        machine = children.start(name, [sys.executable, str(STANDIN), *catalogue])
        urls[name] = machine.wait_for(r"listening on (http://\S+)", timeout=START, stream="stdout").group(1)
    servers = tmp_path / "servers.yaml"
    servers.write_text(yaml.safe_dump({"servers": [{"name": n, "url": urls[n], "labels": labels[n]} for n in labels]}))
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.model("default", "mistral", "7b", "servers:\n  matchLabels: {gpu: a100}\n")
    work.commit()
    work.push()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({"HOME": str(tmp_path), "OLLAMA_GITOPS_SERVERS_FILE": str(servers)})
    serve = children.start("serve", [COMMAND, "serve", "--repo", str(remote), "--state-dir", str(tmp_path / "state"),
                                     "--listen", "127.0.0.1:0", "--kubernetes", "off"], env=env)
    api = httpx.Client(base_url=serve.wait_for(LISTENING, timeout=START).group(1), timeout=30)
    # Before the API's first fetch a model is a 404 with no state: not Ready yet, not an error.
    eventually(lambda: all(api.get(f"/api/v1/models/{m}").json().get("state") == "Ready"
                           for m in ("llama3.2-1b", "mistral-7b")), timeout=START, what="both models Ready")
    assert {name: installed(url) for name, url in urls.items()} == {
        "gpu-1": {"llama3.2:1b", "mistral:7b"}, "gpu-2": {"llama3.2:1b"}, "gpu-3": {"llama3.2:1b"}}
    assert serve.terminate(timeout=STOP) == 0
