"""`ollama-gitops status` as a user runs it: the real command in a child process, against `serve`
running in-process (real HTTP, a real remote, the stand-in Ollama)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from apirig import API_KEY, ApiRig
from processes import Children
from waiting import eventually
from ollama_gitops.api import statusview
from ollama_gitops.reconciler.models.desired import ModelKey

HEADER = ["NAME", "MODEL", "STATE", "SIZE", "LAST PULL"]
BAR = re.compile(r"\[([#.]{20})\]\s+(\d+\.\d)%")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("ollama-gitops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ollama_gitops"]


def _env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GITOPS_")}
    if key is not None:
        env["OLLAMA_GITOPS_API_KEY"] = key
    return env


def status(url: str, *args: str, key: str | None = API_KEY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_command(), "status", "--api-url", url, *args], capture_output=True, text=True,
                          env=_env(key), timeout=60)


def rows(output: str) -> dict[str, list[str]]:
    """The table as {name: [model, state, size, last pull, detail]}, checking the header and the columns."""
    lines = output.splitlines()
    header = lines[0]
    assert header.split() == ["NAME", "MODEL", "STATE", "SIZE", "LAST", "PULL"], output
    starts = [header.index(column) for column in HEADER]
    table: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        last_pull, _, detail = cells[4].partition("  ")
        table[cells[0]] = [*cells[1:4], last_pull.strip(), detail.strip()]
    return table


@pytest.fixture
def ready_rig(api: ApiRig) -> ApiRig:
    api.settle()
    return api


def test_table_lists_every_model_with_state_size_and_last_pull_and_exits_0(ready_rig: ApiRig) -> None:
    result = status(ready_rig.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    models = ready_rig.client.get("/api/v1/models").json()["items"]
    table = rows(result.stdout)
    assert sorted(table) == sorted(m["name"] for m in models) == ["gemma3-1b", "llama3.2-1b"]
    for model in models:
        assert table[model["name"]] == [f"{model['modelName']}:{model['tag']}", "Ready", model["formattedSize"],
                                         model["lastPullTime"], ""]
    assert table["llama3.2-1b"][2] == "1.7 GiB" and table["gemma3-1b"][2] == "777.5 MiB"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", table["llama3.2-1b"][3])

    sync = ready_rig.client.get("/api/v1/status").json()
    summary = [line for line in result.stdout.splitlines() if line.startswith("sync:")]
    assert summary == [f"sync: Succeeded at {sync['lastCycleTime']}; applied {sync['lastAppliedCommit'][:12]}, "
                       f"fetched {sync['lastFetchedCommit'][:12]}"]
    assert "problem:" not in result.stdout


def test_pending_models_show_dashes_before_any_cycle(api: ApiRig) -> None:
    result = status(api.url)
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout) == {"gemma3-1b": ["gemma3:1b", "Pending", "-", "-", ""],
                                   "llama3.2-1b": ["llama3.2:1b", "Pending", "-", "-", ""]}
    assert "sync: no cycle yet" in result.stdout


def test_namespace_option_shows_that_namespace_only(ready_rig: ApiRig) -> None:
    created = ready_rig.client.post("/api/v1/models", params={"namespace": "team-a"}, json={"name": "phi3", "tag": "mini"})
    assert created.status_code == 201
    ready_rig.settle()
    result = status(ready_rig.url, "--namespace", "team-a")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert list(table) == ["phi3-mini"] and table["phi3-mini"][:3] == ["phi3:mini", "Ready", "2.0 GiB"]
    assert set(rows(status(ready_rig.url).stdout)) == {"gemma3-1b", "llama3.2-1b"}


def test_a_failed_model_exits_1_and_shows_ollamas_error(api: ApiRig) -> None:
    api.ollama.fail_next_pulls("gemma3:1b", 1, "max retries exceeded: unexpected EOF")
    api.settle()
    result = status(api.url)
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table["gemma3-1b"][1] == "Failed" and table["gemma3-1b"][4] == "max retries exceeded: unexpected EOF"
    assert table["llama3.2-1b"][1] == "Ready"


def test_a_model_ollama_does_not_have_fails_and_exits_1(api: ApiRig) -> None:
    assert api.client.post("/api/v1/models", json={"name": "no-such-model", "tag": "7b"}).status_code == 201
    api.settle()
    result = status(api.url)
    assert result.returncode == 1
    row = rows(result.stdout)["no-such-model-7b"]
    assert row[:2] == ["no-such-model:7b", "Failed"] and row[4] == "pull model manifest: file does not exist"


def test_a_model_file_with_a_problem_exits_1_and_is_named(ready_rig: ApiRig) -> None:
    ready_rig.work.write("models/default/broken-1.yaml", "name: broken\ntag: [\n")
    ready_rig.publish("broken file")
    result = status(ready_rig.url)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and problems[0].startswith("problem: models/default/broken-1.yaml:3: YAML syntax error")
    assert {row[1] for row in rows(result.stdout).values()} == {"Ready"}  # the models themselves are fine

    ready_rig.work.remove("models/default/broken-1.yaml")
    ready_rig.publish("fixed")
    assert status(ready_rig.url).returncode == 0


def test_api_down_exits_2_saying_it_cannot_be_reached() -> None:
    with socket.socket() as taken:  # bound, never listening: connections to it are refused
        taken.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{taken.getsockname()[1]}"
        result = status(url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"ollama-gitops: cannot reach the API at {url}/api/v1/models")
    assert "refused" in result.stderr.lower()


@pytest.mark.parametrize("key", ["wrong-key", None], ids=["wrong key", "no key"])
def test_a_refused_key_exits_2_saying_so(api: ApiRig, key: str | None) -> None:
    result = status(api.url, key=key)
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("ollama-gitops: ") and "401" in message
    assert "api key" in message.lower(), f"the message does not say the API key was refused: {message!r}"
    assert API_KEY not in result.stderr


def test_key_from_a_file(api: ApiRig, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    result = status(api.url, "--api-key-file", str(key_file), key=None)
    assert result.returncode == 0, result.stderr
    assert set(rows(result.stdout)) == {"gemma3-1b", "llama3.2-1b"}


def _wait_for_progress(api: ApiRig, names: list[str], deadline: float) -> None:
    """The reconciler records pull progress on its pull threads as the stream arrives; nothing
    signals it, so wait (bounded) until the first progress line of each held pull is recorded."""
    store = api.running.service.store
    while True:
        records = [store.record(ModelKey("default", name)) for name in names]
        if all(r is not None and r.servers["default"].progress_total for r in records):
            return
        assert time.monotonic() < deadline, "pull progress never recorded"
        time.sleep(0.01)


def test_a_pulling_model_shows_a_progress_bar(api: ApiRig) -> None:
    reconciler = api.running.service.reconciler
    with api.ollama.hold_pulls() as gate:
        reconciler.run_cycle()
        assert gate.wait_for_pulls(2, timeout=30)
        _wait_for_progress(api, ["gemma3-1b", "llama3.2-1b"], time.monotonic() + 30)
        result = status(api.url)
        models = {m["name"]: m for m in api.client.get("/api/v1/models").json()["items"]}
    assert reconciler.pulls.wait(timeout=30)
    assert result.returncode == 0, result.stderr  # pulling is not unhealthy
    table = rows(result.stdout)
    for name, row in table.items():
        assert row[1] == "Pulling" and row[2] == "-"
        bar = BAR.fullmatch(row[4])
        assert bar, row
        progress = models[name]["progress"]
        done = min(1.0, progress["completed"] / progress["total"])
        assert bar.group(1) == "#" * int(done * 20) + "." * (20 - int(done * 20))
        assert bar.group(2) == f"{done * 100:.1f}"


def test_watch_redraws_until_the_pulls_end_then_exits_0(api: ApiRig, children: Children) -> None:
    reconciler = api.running.service.reconciler
    with api.ollama.hold_pulls() as gate:
        reconciler.run_cycle()
        assert gate.wait_for_pulls(2, timeout=30)
        child = children.start("status-watch", [*_command(), "status", "--api-url", api.url, "--watch"], env=_env(API_KEY))
        # The first frame, drawn while the pulls are held, ends with its "sync:" line.
        first = child.wait_for(r"(?sm)\A.*?^sync:[^\n]*\n", timeout=60, stream="stdout").group(0)
        assert {row[1] for row in rows(first).values()} == {"Pulling"}
    code = child.wait(timeout=60)  # released: the next frames see the pulls end
    assert code == 0, child.stderr()
    frames = child.stdout()[len(first):].split("NAME ")
    assert len(frames) >= 2, "no frame after the first"
    assert {row[1] for row in rows("NAME " + frames[-1]).values()} == {"Ready"}
    assert reconciler.pulls.wait(timeout=30)


def test_a_failed_last_cycle_exits_1(ready_rig: ApiRig) -> None:
    ready_rig.ollama.stop()
    ready_rig.work.model("default", "phi3", "mini")
    ready_rig.work.commit("add phi3")
    ready_rig.work.push()
    reconciler = ready_rig.running.service.reconciler
    reconciler.run_cycle()  # an incremental cycle: phi3's pull is refused, Ollama is not reachable
    assert reconciler.pulls.wait(timeout=30)
    assert not reconciler.run_cycle().ok  # the next one lists Ollama, and fails
    result = status(ready_rig.url)
    assert result.returncode == 1, result.stdout
    assert "sync: Failed at" in result.stdout and f"Ollama is not reachable at {ready_rig.ollama.url}" in result.stdout


def status_here(url: str, capsys: pytest.CaptureFixture[str], *args: str,
                monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`status` run in this process (as the console script runs it), for speed: exit code and output."""
    from ollama_gitops.api.cli import main

    monkeypatch.setenv("OLLAMA_GITOPS_API_KEY", API_KEY)
    capsys.readouterr()
    code = main(["status", "--api-url", url, *args])
    return code, capsys.readouterr().out


def test_a_suspended_model_says_so_and_keeps_no_stale_error(
        api: ApiRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    api.ollama.fail_next_pulls("gemma3:1b", 1, "max retries exceeded: unexpected EOF")
    api.settle()
    assert api.client.get("/api/v1/models/gemma3-1b").json()["error"] == "max retries exceeded: unexpected EOF"
    api.work.model("default", "gemma3", "1b", extra="suspend: true\n")
    api.publish("suspend gemma3")
    gemma = api.client.get("/api/v1/models/gemma3-1b").json()
    assert gemma == {"name": "gemma3-1b", "namespace": "default", "modelName": "gemma3", "tag": "1b",
                     "state": "Pending", "suspended": True}
    listed = {m["name"]: m for m in api.client.get("/api/v1/models").json()["items"]}
    assert listed["gemma3-1b"] == gemma and "suspended" not in listed["llama3.2-1b"]  # only when true
    assert api.ollama.pull_count["gemma3:1b"] == 1  # left alone

    code, out = status_here(api.url, capsys, monkeypatch=monkeypatch)
    table = rows(out)
    assert table["gemma3-1b"][1:] == ["Pending", "-", "-", "SUSPENDED"] and table["llama3.2-1b"][4] == ""
    assert code == 0, out  # nothing is wrong: the model is left alone on purpose


def test_a_refused_prune_to_zero_lists_every_kept_model_and_exits_1(
        api: ApiRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    api.settle()
    for name in ("llama3.2-1b", "gemma3-1b"):
        api.work.remove(f"models/default/{name}.yaml")
    api.publish("remove every model")
    assert set(api.ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}  # refused: nothing pruned
    listed = api.client.get("/api/v1/models").json()["items"]
    assert [(m["name"], m["state"]) for m in listed] == [("gemma3-1b", "Ready"), ("llama3.2-1b", "Ready")]
    assert all("refuses to prune to zero without --allow-empty" in m["error"] for m in listed), listed
    assert api.client.get("/api/v1/models/gemma3-1b").json() == listed[0]
    refused = api.client.delete("/api/v1/models/gemma3-1b")  # shown, but no file is left to delete
    assert refused.status_code == 409 and "no file left to delete" in refused.json()["error"]

    code, out = status_here(api.url, capsys, monkeypatch=monkeypatch)
    assert sorted(rows(out)) == ["gemma3-1b", "llama3.2-1b"]
    assert code == 1, out  # the sync failed: not all well


def test_watch_started_right_after_a_write_waits_for_it_to_be_applied(
        api: ApiRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    api.settle()
    assert api.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini"}).status_code == 201
    outcome: list[tuple[int, str]] = []
    frames = threading.Semaphore(0)
    real_fetch = statusview.fetch

    def counted_fetch(*args: object, **kwargs: object) -> statusview.Snapshot:
        snapshot = real_fetch(*args, **kwargs)  # type: ignore[arg-type]
        frames.release()
        return snapshot

    monkeypatch.setattr(statusview, "fetch", counted_fetch)  # our own module: counts the frames drawn
    watcher = threading.Thread(target=lambda: outcome.append(
        status_here(api.url, capsys, "--watch", monkeypatch=monkeypatch)))
    watcher.start()
    try:
        assert frames.acquire(timeout=30)  # the first frame: the write is not applied yet
        assert frames.acquire(timeout=30)  # ... and it is still watching
        api.settle()
    finally:
        watcher.join(timeout=60)
    assert outcome, "status --watch did not end"
    code, out = outcome[0]
    last = rows("NAME " + out.split("NAME ")[-1])
    assert code == 0 and last["phi3-mini"][1] == "Ready", out


def _event_streams_opened() -> float:
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "ollama_api_requests"
               for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels.get("path") == "/api/v1/events"
               and sample.labels.get("status") == "200")


@pytest.mark.parametrize("streams", [1, 0], ids=["events", "no-stream-slot-polls"])
def test_watch_follows_the_events_stream_and_polls_without_it(
        tmp_path: Path, ollama, streams: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = ApiRig(tmp_path, ollama)
    rig.event_streams = streams  # 0: every stream is refused (503), as when all slots are taken
    rig.seed(("llama3.2", "1b"))
    rig.start()
    try:
        opened = _event_streams_opened()
        outcome: list[tuple[int, str]] = []
        watcher = threading.Thread(target=lambda: outcome.append(
            status_here(rig.url, capsys, "--watch", monkeypatch=monkeypatch)))
        watcher.start()
        if streams:
            eventually(lambda: _event_streams_opened() > opened, timeout=30)
        rig.settle()
        watcher.join(timeout=60)
        assert outcome, "status --watch did not end"
        code, out = outcome[0]
        assert code == 0 and rows("NAME " + out.split("NAME ")[-1])["llama3.2-1b"][1] == "Ready", out
        assert (_event_streams_opened() > opened) == bool(streams)
    finally:
        rig.stop()
