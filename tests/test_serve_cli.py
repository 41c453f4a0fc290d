"""`ollama-gitops serve` as a user runs it: one process, its own schedules, SIGTERM to stop."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from gitrepos import WorkRepo, init_bare
from processes import Children
from standins.ollama_server import OllamaStandin
from waiting import eventually

COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
LISTENING = r"API listening on (http://\S+)"
START = 90.0  # ceiling for a process's start and a cycle, on a loaded machine
STOP = 60.0


def test_serve_reconciles_writes_and_stops_on_sigterm(tmp_path: Path, ollama: OllamaStandin, children: Children) -> None:
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({"OLLAMA_GITOPS_API_KEY": "s3cret-key", "HOME": str(tmp_path)})
    process = children.start("serve", [
        COMMAND, "serve", "--repo", str(remote), "--state-dir", str(tmp_path / "state"), "--ollama-url", ollama.url,
        "--listen", "127.0.0.1:0", "--kubernetes", "off"], env=env)
    url = process.wait_for(LISTENING, timeout=START).group(1)
    client = httpx.Client(base_url=url, headers={"X-API-Key": "s3cret-key"}, timeout=30)
    eventually(lambda: client.get("/readiness").status_code == 200, timeout=START, what="/readiness 200")
    eventually(lambda: client.get("/api/v1/models/llama3.2-1b").json()["state"] == "Ready", timeout=START,
               what="llama3.2-1b Ready")
    assert client.post("/api/v1/models", json={"name": "gemma3", "tag": "1b"}).status_code == 201
    # The write asked for a cycle at once: no need to wait for the 60-second interval.
    eventually(lambda: client.get("/api/v1/models/gemma3-1b").json()["state"] == "Ready", timeout=START,
               what="gemma3-1b Ready")
    assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    assert process.terminate(timeout=STOP) == 0
    assert "secret" not in process.stderr()


def test_webhook_secret_from_a_file_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    from ollama_gitops.api.cli import webhook_secret

    monkeypatch.delenv("OLLAMA_GITOPS_WEBHOOK_SECRET", raising=False)
    assert webhook_secret(None) is None  # webhooks off
    monkeypatch.setenv("OLLAMA_GITOPS_WEBHOOK_SECRET", "from-env")
    assert webhook_secret(None) == "from-env"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    assert webhook_secret(str(secret_file)) == "from-file"  # the file wins, without its newline
    secret_file.write_bytes(b" spaced secret \r\n")
    assert webhook_secret(str(secret_file)) == " spaced secret "  # only the one newline goes
    secret_file.write_text("two\n\n")
    assert webhook_secret(str(secret_file)) == "two\n"
    secret_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        webhook_secret(str(secret_file))
    monkeypatch.setenv("OLLAMA_GITOPS_WEBHOOK_SECRET", "")
    assert webhook_secret(None) is None


def test_serve_takes_a_webhook_and_never_logs_its_secret(tmp_path: Path, ollama: OllamaStandin,
                                                        children: Children) -> None:
    from webhooks import github

    secret = "s3cret-webhook-value"
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    (tmp_path / "webhook-secret").write_text(secret + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({"HOME": str(tmp_path)})
    process = children.start("serve", [
        COMMAND, "serve", "--repo", str(remote), "--state-dir", str(tmp_path / "state"), "--ollama-url", ollama.url,
        "--listen", "127.0.0.1:0", "--kubernetes", "off", "--webhook-secret-file", str(tmp_path / "webhook-secret"),
        "--log-level", "DEBUG"], env=env)
    url = process.wait_for(LISTENING, timeout=START).group(1)
    assert "webhooks on" in process.stderr()
    eventually(lambda: httpx.get(f"{url}/api/v1/models/llama3.2-1b").json().get("state") == "Ready", timeout=START,
               what="llama3.2-1b Ready")
    work.model("default", "gemma3", "1b")
    work.commit("add gemma3")
    work.push()
    wrong = github(str(remote), secret="guess")
    assert httpx.post(f"{url}/api/v1/webhook", content=wrong.body, headers=wrong.headers).status_code == 401
    sent = github(str(remote), secret=secret)
    assert httpx.post(f"{url}/api/v1/webhook", content=sent.body, headers=sent.headers).status_code == 202
    eventually(lambda: httpx.get(f"{url}/api/v1/models/gemma3-1b").json().get("state") == "Ready", timeout=START,
               what="gemma3-1b Ready, after the webhook")
    assert process.terminate(timeout=STOP) == 0
    text = process.stderr()
    assert f"delivery={sent.delivery_id}" in text and "outcome=accepted" in text
    for value in (secret, sent.headers["X-Hub-Signature-256"][len("sha256="):], wrong.headers["X-Hub-Signature-256"][7:]):
        assert value not in text


@pytest.mark.parametrize(("ollama_host", "url"), [
    ("gpu-1", "http://gpu-1:11434"),  # as Ollama reads it; http://gpu-1 would be port 80 to the client
    ("gpu-1:8000", "http://gpu-1:8000"),
    ("https://ollama.example.com", "https://ollama.example.com"),
    ("", "http://localhost:11434"),
])
def test_ollama_host_is_read_as_ollama_reads_it(ollama_host: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from ollama_gitops.reconciler.settings import Settings, add_reconciler_options

    monkeypatch.delenv("OLLAMA_GITOPS_OLLAMA_URL", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    parser = argparse.ArgumentParser()
    add_reconciler_options(parser)
    assert Settings.from_args(parser.parse_args(["--kubernetes", "off"])).ollama_url == url
