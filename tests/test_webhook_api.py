"""`POST /api/v1/webhook` through real HTTP against `serve` in-process (real waitress, a real bare
remote, the stand-in Ollama): the answers to each provider's deliveries, and their effect, a cycle
at once that applies the pushed commit, with bursts coalesced."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import git
import httpx
import jsonschema
import pytest
from prometheus_client import REGISTRY

from ollama_gitops.api.webhook import sign
from apirig import API_KEY, ApiRig
from processes import Children
from standins.ollama_server import OllamaStandin
from waiting import eventually
from webhooks import SECRET, Sent, generic, gitea, github, gitlab

PATH = "/api/v1/webhook"
COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
START = 90.0  # ceiling for a process's start or a cycle on a loaded machine


@pytest.fixture
def hooked(tmp_path: Path, ollama: OllamaStandin) -> Iterator[ApiRig]:
    """`serve` with an API key and a webhook secret; no schedules (so nothing runs behind the test)."""
    rig = ApiRig(tmp_path, ollama, webhook_secret=SECRET)
    rig.seed(("llama3.2", "1b"))
    rig.start()
    yield rig
    rig.stop()


def post(rig: ApiRig, sent: Sent) -> httpx.Response:
    """As a Git host posts: no API key (it has none to send), just its own headers."""
    return httpx.post(rig.url + PATH, content=sent.body, headers=sent.headers, timeout=30)


def answer_schema(rig: ApiRig, response: httpx.Response) -> dict:
    document = rig.client.get("/api/v1/openapi.json").json()
    operation = document["paths"][PATH]["post"]
    schema = operation["responses"][str(response.status_code)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(response.json())
    return response.json()


def webhooks_counted(provider: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("ollama_gitops_webhooks_total", {"provider": provider, "outcome": outcome}) or 0.0


def cycles() -> float:
    return sum(REGISTRY.get_sample_value("ollama_gitops_reconcile_cycles_total", {"outcome": o}) or 0.0
               for o in ("succeeded", "failed", "noop"))


# -- answers ----------------------------------------------------------------------------------------


def test_a_signed_github_push_is_accepted_without_the_api_key(hooked: ApiRig) -> None:
    before = webhooks_counted("github", "accepted")
    response = post(hooked, github(str(hooked.remote)))
    assert response.status_code == 202 and response.text == '{"status":"accepted"}\n'
    assert response.headers["content-type"] == "application/json"
    answer_schema(hooked, response)
    assert webhooks_counted("github", "accepted") == before + 1
    # The webhook's own check is its authentication; the rest of the API still wants the key.
    assert httpx.get(hooked.url + "/api/v1/models").status_code == 401


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "sha256=", "garbage"])
def test_a_missing_or_wrong_signature_is_401(hooked: ApiRig, signature: str | None) -> None:
    sent = github(str(hooked.remote))
    if signature is None:
        del sent.headers["X-Hub-Signature-256"]
    else:
        sent.headers["X-Hub-Signature-256"] = signature
    response = post(hooked, sent)
    assert response.status_code == 401 and response.json() == {"error": "signature does not match"}
    answer_schema(hooked, response)


def test_a_signature_replayed_over_a_changed_payload_is_401(hooked: ApiRig) -> None:
    original = github(str(hooked.remote), ref="refs/heads/feature")
    assert post(hooked, original).json()["status"] == "ignored"
    tampered = Sent(original.headers, original.body.replace(b"refs/heads/feature", b"refs/heads/main"))
    response = post(hooked, tampered)
    assert response.status_code == 401 and response.json() == {"error": "signature does not match"}


def test_the_api_key_does_not_replace_the_signature(hooked: ApiRig) -> None:
    sent = github(str(hooked.remote), secret="wrong")
    response = httpx.post(hooked.url + PATH, content=sent.body, headers={**sent.headers, "X-API-Key": API_KEY})
    assert response.status_code == 401


def test_gitlab_token_right_and_wrong(hooked: ApiRig) -> None:
    assert post(hooked, gitlab(str(hooked.remote))).status_code == 202
    wrong = post(hooked, gitlab(str(hooked.remote), token="guess"))
    assert wrong.status_code == 401 and wrong.json() == {"error": "signature does not match"}


def test_gitea_forgejo_and_the_generic_form(hooked: ApiRig) -> None:
    for sent in (gitea(str(hooked.remote)), gitea(str(hooked.remote), forgejo=True), generic(str(hooked.remote))):
        response = post(hooked, sent)
        assert response.status_code == 202, (sent.headers, response.text)
    assert post(hooked, generic(str(hooked.remote), secret="wrong")).status_code == 401


def test_ping_is_acknowledged(hooked: ApiRig) -> None:
    response = post(hooked, github(str(hooked.remote), event="ping"))
    assert response.status_code == 200 and response.json() == {"status": "pong", "reason": "webhook configured"}
    answer_schema(hooked, response)


def test_another_branch_another_repository_or_event_is_acknowledged_and_ignored(hooked: ApiRig) -> None:
    cases = [
        (github(str(hooked.remote), ref="refs/heads/feature"), "push to refs/heads/feature, not to refs/heads/main"),
        (github(str(hooked.remote), ref="refs/tags/v1.0"), "push to refs/tags/v1.0, not to refs/heads/main"),
        (github("https://github.com/acme/other"), "push to another repository (https://github.com/acme/other.git)"),
        (gitlab(str(hooked.remote), event="Tag Push Hook"), "'Tag Push Hook' events are ignored: only pushes start a cycle"),
    ]
    for sent, reason in cases:
        response = post(hooked, sent)
        assert response.status_code == 200 and response.json() == {"status": "ignored", "reason": reason}
        answer_schema(hooked, response)


def test_a_local_repository_matches_by_path_or_file_url(hooked: ApiRig) -> None:
    remote = str(hooked.remote)  # .../remote.git
    for spelt in (remote, remote + "/", remote.removesuffix(".git"), f"file://{remote}", f"file://{remote}/",
                  str(hooked.remote / "sub" / "..")):
        assert post(hooked, generic(spelt)).status_code == 202, spelt
    assert post(hooked, generic(str(hooked.tmp_path / "elsewhere.git"))).json()["status"] == "ignored"


def test_a_signed_but_malformed_push_is_400(hooked: ApiRig) -> None:
    for body in (b"{not json", b'{"repository": "x"}', b"[]"):
        response = post(hooked, Sent({"X-Ollama-Gitops-Signature": sign(SECRET, body)}, body))
        assert response.status_code == 400 and response.json()["error"].startswith("invalid payload:")
        answer_schema(hooked, response)


def test_a_signed_push_nested_too_deep_or_with_duplicate_keys_is_400(hooked: ApiRig) -> None:
    url = json.dumps(str(hooked.remote))
    bodies = [
        ('{"repository": %s, "ref": "refs/heads/main", "x": %s}' % (url, "[" * 990 + "]" * 990), "nested deeper than"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
        ('{"repository": %s, "ref": "refs/heads/other", "ref": "refs/heads/main"}' % url, "duplicate key 'ref'"),
    ]
    for text, fragment in bodies:
        body = text.encode()
        response = post(hooked, Sent({"X-Ollama-Gitops-Signature": sign(SECRET, body)}, body))
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("invalid payload:") and fragment in response.json()["error"]
        answer_schema(hooked, response)
    form = github(str(hooked.remote), form=True)  # GitHub's form: the JSON in the field `payload`
    body = urlencode({"payload": "[" * 5000 + "]" * 5000}).encode()
    response = post(hooked, Sent({**form.headers, "X-Hub-Signature-256": sign(SECRET, body)}, body))
    assert response.status_code == 400 and "nested deeper than" in response.json()["error"]
    sent = github(str(hooked.remote))
    document = json.loads(sent.body)
    document["commits"] = "[" * 2000  # a string: brackets in strings are not nesting
    body = json.dumps(document).encode()
    assert post(hooked, Sent({**sent.headers, "X-Hub-Signature-256": sign(SECRET, body)}, body)).status_code == 202


def test_webhooks_pass_the_host_check_by_their_signature_and_carry_no_origin(tmp_path: Path,
                                                                           ollama: OllamaStandin) -> None:
    # Without an API key the API answers only for the names it serves, but a Git host's delivery
    # (through a tunnel or a proxy, under a public name) is authenticated by its own signature.
    rig = ApiRig(tmp_path, ollama, api_key=None, webhook_secret=SECRET)
    rig.seed(("llama3.2", "1b"))
    rig.start()
    try:
        sent = github(str(rig.remote))
        response = httpx.post(rig.url + PATH, content=sent.body, headers={**sent.headers, "Host": "hooks.example.com"})
        assert response.status_code == 202, response.text
        assert httpx.get(rig.url + "/health", headers={"Host": "hooks.example.com"}).status_code == 421
        # A browser page cannot pass for a Git host: what it sends carries an Origin.
        forged = httpx.post(rig.url + PATH, content=sent.body, headers={**sent.headers, "Origin": "http://evil.example"})
        assert forged.status_code == 403
    finally:
        rig.stop()


def test_push_payloads_up_to_a_mebibyte_are_read(hooked: ApiRig) -> None:
    sent = github(str(hooked.remote))
    big = sent.body[:-1] + b', "padding": "' + b"x" * 600_000 + b'"}'  # a push of many commits
    headers = {**sent.headers, "X-Hub-Signature-256": sign(SECRET, big)}
    assert post(hooked, Sent(headers, big)).status_code == 202
    huge = b"{" + b" " * (1024 * 1024 + 1) + b"}"
    response = post(hooked, Sent({"X-Ollama-Gitops-Signature": sign(SECRET, huge)}, huge))
    assert response.status_code == 413 and response.json() == {"error": "request body too large"}
    # Elsewhere the API's own limit stays.
    response = hooked.client.post("/api/v1/models", content=b"{" + b" " * 70_000 + b"}",
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_only_post(hooked: ApiRig) -> None:
    response = httpx.get(hooked.url + PATH, headers={"X-API-Key": API_KEY})
    assert response.status_code == 405 and response.json() == {"error": "method not allowed"}
    assert "POST" in response.headers["allow"] and "GET" not in response.headers["allow"]


def test_webhooks_are_off_without_a_secret(api: ApiRig) -> None:
    response = post(api, github(str(api.remote)))
    assert response.status_code == 404
    assert response.json() == {"error": "webhooks are off: set OLLAMA_GITOPS_WEBHOOK_SECRET or --webhook-secret-file"}


def test_the_secret_and_signatures_never_reach_the_logs(hooked: ApiRig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    github_push = github(str(hooked.remote))
    deliveries = [github_push, github(str(hooked.remote), secret="a-wrong-secret"), gitlab(str(hooked.remote)),
                  gitlab(str(hooked.remote), token="a-guessed-token"), gitea(str(hooked.remote)),
                  generic(str(hooked.remote))]
    for sent in deliveries:
        post(hooked, sent)
    text = caplog.text
    assert f"provider=github delivery={github_push.delivery_id} event='push' ref='refs/heads/main' outcome=accepted" in text
    assert "provider=gitlab" in text and "outcome=rejected" in text  # the log does say what happened
    secrets = [SECRET, "a-wrong-secret", "a-guessed-token"]
    signatures = [value.removeprefix("sha256=").removeprefix("sha1=") for sent in deliveries
                  for name, value in sent.headers.items() if "Signature" in name or "Token" in name]
    for secret in secrets + signatures:
        assert secret not in text


# -- effect -----------------------------------------------------------------------------------------


def test_a_push_webhook_applies_the_pushed_commit_at_once(tmp_path: Path, ollama: OllamaStandin) -> None:
    rig = ApiRig(tmp_path, ollama, webhook_secret=SECRET, schedules=True)  # cycles every hour, and on request
    rig.seed(("llama3.2", "1b"))
    rig.start()
    try:
        eventually(lambda: rig.client.get("/api/v1/models/llama3.2-1b").json().get("state") == "Ready")
        rig.work.model("default", "gemma3", "1b")
        pushed = rig.work.commit("Add gemma3")
        rig.work.push()
        assert post(rig, github(str(rig.remote))).status_code == 202
        # Only the webhook can have started these: the next scheduled cycle is an hour away.
        eventually(lambda: rig.client.get("/api/v1/models/gemma3-1b").json().get("state") == "Ready")
        eventually(lambda: rig.client.get("/api/v1/status").json()["lastAppliedCommit"] == pushed)
        assert rig.client.get("/api/v1/status").json()["lastFetchedCommit"] == pushed  # the API's clone too
        assert "gemma3:1b" in ollama.installed()
    finally:
        rig.stop()


def test_a_burst_of_webhooks_during_a_cycle_makes_one_more_cycle(tmp_path: Path, ollama: OllamaStandin) -> None:
    ollama.install("llama3.2:1b")  # nothing to pull: a pull's end would ask for a cycle of its own
    rig = ApiRig(tmp_path, ollama, webhook_secret=SECRET, schedules=True)
    rig.seed(("llama3.2", "1b"))
    before = cycles()
    try:
        with ollama.hold_listings() as gate:
            rig.start()
            assert gate.wait_for_listings(1, timeout=15)  # the first cycle is under way, held
            for _ in range(8):
                assert post(rig, github(str(rig.remote))).status_code == 202
        scheduler = rig.running.service.scheduler
        eventually(lambda: cycles() >= before + 2 and not scheduler.busy)
        assert cycles() == before + 2  # the held cycle and one more, not eight
        assert git.Repo(rig.remote).commit("main").hexsha == rig.running.service.store.sync.last_applied_commit
    finally:
        rig.stop()


def test_the_api_alone_asks_a_reconciler_in_another_process_through_the_state_directory(
        tmp_path: Path, ollama: OllamaStandin, children: Children) -> None:
    """`ollama-gitops api` beside `ollama-gitops reconcile` on one host, sharing a state directory."""
    rig = ApiRig(tmp_path, ollama, webhook_secret=SECRET, with_reconciler=False)
    rig.seed(("llama3.2", "1b"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env["HOME"] = str(tmp_path / "home")
    reconciler = children.start("reconcile", [
        COMMAND, "reconcile", "--repo", str(rig.remote), "--state-dir", str(rig.state_dir), "--ollama-url",
        ollama.url, "--kubernetes", "off", "--interval", "3600"], env=env)
    try:
        reconciler.wait_for("action=pull", timeout=START)  # its first cycle, at start
        rig.start()
        eventually(lambda: rig.client.get("/api/v1/models/llama3.2-1b").json().get("state") == "Ready",
                   timeout=START, what="llama3.2-1b Ready")
        rig.work.model("default", "gemma3", "1b")
        rig.work.commit("Add gemma3")
        rig.work.push()
        assert post(rig, github(str(rig.remote))).status_code == 202
        value = (rig.state_dir / "sync-requested").read_text().strip()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value)
        # The next scheduled cycle is an hour away: the request is what brings gemma3 in.
        reconciler.wait_for(f"action=sync-requested at={re.escape(value)}", timeout=START)
        rig.running.repository.refresh()
        eventually(lambda: rig.client.get("/api/v1/models/gemma3-1b").json().get("state") == "Ready",
                   timeout=START, what="gemma3-1b Ready, after the webhook")
        assert reconciler.terminate(timeout=START) == 0
    finally:
        rig.stop()
