"""The live parts of the dashboard without a browser: the event bus, the store's listener, the cycle
history, and GET /api/v1/events and /api/v1/history over real HTTP (waitress, its request bounds)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx
import pytest

from apirig import API_KEY, ApiRig
from rig import Rig
from sse import SseReader
from waiting import eventually
from ollama_gitops.reconciler import events
from ollama_gitops.reconciler.events import Dropped, EventBus
from ollama_gitops.reconciler.history import HISTORY, History, entry
from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus, StateStore

KEY_HEADERS = {"X-API-Key": API_KEY}


# -- the bus -----------------------------------------------------------------------------------------
def test_a_slow_subscriber_is_dropped_and_never_holds_the_publisher() -> None:
    bus = EventBus(queue_size=4)
    slow, fast = bus.subscribe(), bus.subscribe()
    seen = []
    for n in range(50):  # far beyond the slow one's queue: publishing goes on regardless
        bus.publish(events.MODELS, {"n": n})
        seen.append(fast.next(timeout=1).data["n"])
    assert seen == list(range(50))
    assert [slow.next(timeout=1).data["n"] for _ in range(4)] == [0, 1, 2, 3]  # what it had queued
    with pytest.raises(Dropped):
        slow.next(timeout=1)
    assert bus.subscribers == 1


def test_a_resume_replays_what_was_missed_and_an_unknown_id_resets() -> None:
    bus = EventBus(ring_size=8)
    first = bus.publish(events.STATUS, {"n": 1})
    bus.publish(events.STATUS, {"n": 2})
    bus.publish(events.STATUS, {"n": 3})
    resumed = bus.subscribe(first.id)
    assert [resumed.next(timeout=1).data["n"] for _ in range(2)] == [2, 3]
    assert resumed.next(timeout=0.01) is None
    other_process = bus.subscribe("0-2")  # an id of another bus (an earlier process)
    assert other_process.next(timeout=1).type == events.RESET
    for n in range(20):
        bus.publish(events.STATUS, {"n": n})
    too_old = bus.subscribe(first.id)  # the ring no longer holds what came after it
    reset = too_old.next(timeout=1)
    assert reset.type == events.RESET
    bus.publish(events.STATUS, {"n": "next"})
    assert bus.subscribe(reset.id).next(timeout=1).data == {"n": "next"}  # resuming from the reset


def test_closing_the_bus_ends_every_subscription() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    waiting = []
    reader = threading.Thread(target=lambda: waiting.append(pytest.raises(Dropped, subscription.next, 60)))
    reader.start()
    bus.close()
    reader.join(timeout=10)
    assert not reader.is_alive()


# -- the store's listener ----------------------------------------------------------------------------
def test_the_store_tells_its_listener_after_commits_progress_and_follows(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.acquire_process_lock()
    calls: list[frozenset[ModelKey] | None] = []
    key = ModelKey("default", "llama3.2-1b")

    def listener(keys: frozenset[ModelKey] | None) -> None:
        # Called after the commit: the change is already readable (and on disk).
        calls.append(keys)
        assert keys is None or all(store.record(k) is not None or k != key for k in keys)

    store.add_listener(listener)
    with store.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("llama3.2:1b", "models/default/llama3.2-1b.yaml"),
                                  {"gpu-1": ModelStatus(), "gpu-2": ModelStatus()}))
    assert calls == [frozenset({key})]
    with store.editing():
        pass  # nothing touched: nothing said
    # A status edit on one server of the fleet, and progress there, are changes of the model.
    with store.editing() as edit:
        edit.status(key, "gpu-2").state = "Pulling"
    assert calls[-1] == frozenset({key}) and len(calls) == 2
    store.update_progress([key], "gpu-2", 10, 100)
    assert calls[-1] == frozenset({key}) and len(calls) == 3
    assert store.record(key).servers["gpu-2"].progress_completed == 10

    follower = StateStore(tmp_path, readonly=True)
    followed: list[frozenset[ModelKey] | None] = []
    follower.add_listener(followed.append)
    other = ModelKey("default", "gemma3-1b")
    with store.editing() as edit:
        edit.put(other, ModelRecord(AppliedSpec("gemma3:1b", "models/default/gemma3-1b.yaml")))
    assert follower.follow()
    assert followed == [frozenset({other})]
    store.release_process_lock()


def test_a_failing_listener_never_fails_the_edit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    store.add_listener(lambda keys: 1 / 0)
    key = ModelKey("default", "x")
    with caplog.at_level(logging.ERROR), store.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("x:1", "models/default/x.yaml")))
    assert store.record(key) is not None
    assert "state-listener-failed" in caplog.text


# -- the history file ----------------------------------------------------------------------------------
def _entry(n: int):
    return entry(f"2026-12-01T10:{n // 60:02d}:{n % 60:02d}Z", f"{n:040x}", 0.5, "Succeeded", f"cycle {n}",
                 [f"default/m{n}"], [])


def test_history_keeps_the_last_100_across_restarts_in_a_bounded_file(tmp_path: Path) -> None:
    history = History(tmp_path)
    for n in range(250):
        history.append(_entry(n))
    shown = history.entries()
    assert [e.message for e in shown] == [f"cycle {n}" for n in range(249, 149, -1)]  # newest first
    assert len((tmp_path / HISTORY).read_bytes().splitlines()) < 200  # rewritten, never unbounded
    again = History(tmp_path)  # a restart
    assert again.entries() == shown
    assert again.entries()[0].pulled == ("default/m249",)


def test_history_skips_damaged_lines_and_keeps_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    history = History(tmp_path)
    history.append(_entry(1))
    with open(tmp_path / HISTORY, "ab") as handle:
        handle.write(b"not json\n" + json.dumps({"time": 5}).encode() + b"\n")
    history.append(_entry(2))
    with open(tmp_path / HISTORY, "ab") as handle:
        handle.write(b'{"time": "2026-12-01T11:00:00Z", "comm')  # torn by a crash mid-append
    with caplog.at_level(logging.WARNING):
        shown = History(tmp_path).entries()
    assert [e.message for e in shown] == ["cycle 2", "cycle 1"]
    assert "2 unreadable line(s)" in caplog.text


def test_a_cycle_list_names_bounded_but_counts_whole() -> None:
    big = entry("t", None, 1.0, "Succeeded", "cold start", [f"default/m{n}" for n in range(5000)], [])
    assert len(big.pulled) == 200 and big.pulled_count == 5000


# -- over HTTP -----------------------------------------------------------------------------------------
@pytest.fixture
def live_api(tmp_path: Path, ollama):
    rig = ApiRig(tmp_path, ollama)
    rig.event_heartbeat = 0.3
    rig.request_timeout = 1.0  # a stream lives far longer than a request may take to arrive
    rig.seed(("llama3.2", "1b"), ("gemma3", "1b"))
    yield rig
    rig.stop()


def test_the_events_stream_needs_the_key_and_carries_cycles_models_and_status(live_api: ApiRig) -> None:
    live_api.start()
    assert httpx.get(f"{live_api.url}/api/v1/events", timeout=10).status_code == 401
    reader = SseReader(f"{live_api.url}/api/v1/events", KEY_HEADERS).start()
    try:
        eventually(lambda: reader.of("hello"), timeout=30)
        hello = reader.of("hello")[0]
        assert hello.id and hello.json == {"heartbeat": 0.3, "servers": []}  # no fleet yet: no server reported
        live_api.settle()
        eventually(lambda: reader.of(events.CYCLE_ENDED), timeout=30)
        assert reader.of(events.CYCLE_STARTED)
        ready = lambda: {(m["name"], m["state"]) for e in reader.of(events.MODELS) for m in e.json["items"]}  # noqa: E731
        eventually(lambda: {("llama3.2-1b", "Ready"), ("gemma3-1b", "Ready")} <= ready(), timeout=30)
        eventually(lambda: any(e.json["lastAppliedCommit"] for e in reader.of(events.STATUS)), timeout=30)
        # Far past the 1 s request bound and its 1 s check, the stream is still served, with heartbeats.
        eventually(lambda: len(reader.comments) >= 12, timeout=60)
        assert not reader.ended.is_set()
        ids = [e.id for e in reader.events if e.id]
        assert len(ids) == len(set(ids))
    finally:
        reader.close()


def test_a_reader_that_reconnects_with_its_last_id_gets_what_it_missed(live_api: ApiRig) -> None:
    live_api.start()
    first = SseReader(f"{live_api.url}/api/v1/events", KEY_HEADERS).start()
    eventually(lambda: first.of("hello"), timeout=30)
    last_seen = first.last_id
    first.close()
    live_api.settle()  # while it is away
    eventually(lambda: live_api.running.feed.bus.subscribers == 0, timeout=30)
    again = SseReader(f"{live_api.url}/api/v1/events", {**KEY_HEADERS, "Last-Event-ID": last_seen}).start()
    try:
        eventually(lambda: again.of(events.CYCLE_ENDED), timeout=30)
        assert again.of("hello")[0].id is None  # a resumed stream's hello moves no id
        # The first cycle's end can come before the pulls' (the models Ready): wait for them, not for it.
        assert eventually(lambda: any(m["state"] == "Ready" for e in again.of(events.MODELS) for m in e.json["items"]),
                          timeout=30)
    finally:
        again.close()


def test_streams_beyond_their_budget_are_told_to_poll(live_api: ApiRig) -> None:
    live_api.event_streams = 1
    live_api.start()
    first = SseReader(f"{live_api.url}/api/v1/events", KEY_HEADERS).start()
    eventually(lambda: first.of("hello"), timeout=30)
    refused = httpx.get(f"{live_api.url}/api/v1/events", headers=KEY_HEADERS, timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "poll" in refused.json()["error"]
    assert live_api.client.get("/api/v1/models").status_code == 200  # the other threads are untouched
    first.close()
    second = eventually(lambda: (r := SseReader(f"{live_api.url}/api/v1/events", KEY_HEADERS).start())
                        and eventually(lambda: r.status is not None, timeout=10) and r.status == 200 and r,
                        timeout=60)
    second.close()


def test_history_is_served_and_survives_a_restart(live_api: ApiRig) -> None:
    live_api.start()
    live_api.settle()
    items = live_api.client.get("/api/v1/history").json()["items"]
    pulled = [name for item in items for name in item["pulled"]]
    assert sorted(pulled) == ["default/gemma3-1b", "default/llama3.2-1b"]
    first = next(item for item in items if item["pulled"])
    assert first["outcome"] == "Succeeded" and len(first["commit"]) == 40 and first["durationSeconds"] >= 0
    assert live_api.client.delete("/api/v1/models/gemma3-1b").status_code == 204
    live_api.running.repository.refresh()
    live_api.settle()
    items = live_api.client.get("/api/v1/history").json()["items"]
    deleting = [item for item in items if item["deleted"]]
    assert [(item["deleted"], item["deletedCount"]) for item in deleting] == [(["default/gemma3-1b"], 1)]
    live_api.stop()
    again = ApiRig(live_api.tmp_path / "again", live_api.ollama, state_dir=live_api.state_dir, remote=live_api.remote)
    again.start()
    try:
        assert again.client.get("/api/v1/history").json()["items"] == items
    finally:
        again.stop()


def test_the_page_and_its_files_load_without_the_key_and_nothing_else_does(live_api: ApiRig) -> None:
    live_api.start()
    page = httpx.get(f"{live_api.url}/", timeout=10)
    assert page.status_code == 200 and "<title>ollama-gitops</title>" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    script = httpx.get(f"{live_api.url}/static/app.js", timeout=10)
    assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js", "/static/.hidden.js"):
        # 401 where the client made the path one outside /static/ (not open), 404 inside it
        assert httpx.get(f"{live_api.url}{path}", timeout=10).status_code in (401, 404), path
    assert httpx.get(f"{live_api.url}/api/v1/history", timeout=10).status_code == 401
    listed = live_api.client.get("/api/v1/models", params={"namespace": "*"})
    assert [m["name"] for m in listed.json()["items"]] == ["gemma3-1b", "llama3.2-1b"]


def test_api_beside_a_reconciler_derives_events_from_its_state_files(tmp_path: Path, ollama) -> None:
    reconciler = Rig(tmp_path / "reconciler", ollama)
    reconciler.work.model("default", "llama3.2", "1b")
    reconciler.push("seed")
    reconciler.start()
    api = ApiRig(tmp_path / "api", ollama, with_reconciler=False, state_dir=reconciler.state_dir,
                 remote=reconciler.remote)
    api.start()
    reader = SseReader(f"{api.url}/api/v1/events", KEY_HEADERS).start()
    try:
        eventually(lambda: reader.of("hello"), timeout=30)
        reconciler.cycle()
        states = lambda: [m["state"] for e in reader.of(events.MODELS) for m in e.json["items"]]  # noqa: E731
        eventually(lambda: "Ready" in states(), timeout=30)
        eventually(lambda: any(e.json["lastAppliedCommit"] for e in reader.of(events.STATUS)), timeout=30)
    finally:
        reader.close()
        api.stop()
        reconciler.stop()
        reconciler.work.close()


def test_a_status_source_that_announces_nothing_is_compared_when_its_version_moves(tmp_path: Path) -> None:
    """The cluster's cache has no listener: the feed finds what changed from its records."""
    from ollama_gitops.api.live import LiveFeed

    class Views:  # the catalog's part the feed uses
        def get(self, namespace: str, name: str) -> dict[str, str]:
            record = store.record(ModelKey(namespace, name))
            return {"namespace": namespace, "name": name, "state": record.servers["default"].state if record else "gone"}

    store = StateStore(tmp_path)  # stands for any StatusSource: no listener is added
    key = ModelKey("default", "x")
    with store.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("x:1", "models/default/x.yaml"), {"default": ModelStatus()}))
    bus = EventBus()
    feed = LiveFeed(bus, Views(), lambda: {}, lambda: [], records=store)  # type: ignore[arg-type]
    subscription = bus.subscribe()
    feed._turn()  # the first look: what is there now is the baseline, not a change
    while subscription.next(timeout=0.01) is not None:
        pass  # its first status and servers
    with store.editing() as edit:
        edit.status(key, "default").state = "Ready"
    feed._turn()
    event = subscription.next(timeout=1)
    assert event.type == events.MODELS and event.data["items"] == [{"namespace": "default", "name": "x", "state": "Ready"}]
    feed._turn()  # the version did not move: nothing more
    assert subscription.next(timeout=0.01) is None


def test_a_server_going_down_is_a_servers_event(tmp_path: Path, ollama) -> None:
    """From the fleet's own record of its servers (`SyncStatus.servers`): `serve` keeping two
    stand-in Ollama servers, one of which stops answering (and the history names each pull's server)."""
    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    def seen(reader: SseReader) -> list[dict[str, bool | None]]:
        return [{s["name"]: s["reachable"] for s in e.json["items"]} for e in reader.of(events.SERVERS)]

    with OllamaStandin(dict(CATALOGUE)) as gpu_2:
        rig = ApiRig(tmp_path, ollama, extra_args=("--ollama-url", f"gpu-2={gpu_2.url}"))
        rig.seed(("llama3.2", "1b"))
        rig.start()
        reader = SseReader(f"{rig.url}/api/v1/events", KEY_HEADERS).start()
        try:
            eventually(lambda: reader.of("hello"), timeout=30)
            rig.settle()
            # Both answer (the one given without a name is named after its address).
            first = eventually(lambda: next((d for d in seen(reader) if len(d) == 2 and "gpu-2" in d
                                             and all(d.values())), None), timeout=30)
            # The history names the server of each pull in a fleet.
            (cycle,) = [h for h in rig.client.get("/api/v1/history").json()["items"] if h["pulled"]]
            assert "gpu-2: default/llama3.2-1b" in cycle["pulled"] and len(cycle["pulled"]) == 2
            gpu_2.stop()
            rig.work.model("default", "gemma3", "1b")
            rig.publish("add gemma3")  # its pull on gpu-2 is refused: the next cycle lists gpu-2, and fails
            eventually(lambda: {**first, "gpu-2": False} in seen(reader), timeout=30)
            down = [s for e in reader.of(events.SERVERS) for s in e.json["items"] if s["reachable"] is False][0]
            assert down["url"] == gpu_2.url and down["lastSeen"] and "not reachable" in down["error"]
            # The same fields as GET /api/v1/servers, but the counts (which change with every model).
            listed = {s["name"]: s for s in rig.client.get("/api/v1/servers").json()["items"]}
            assert {k: v for k, v in listed["gpu-2"].items() if k != "models"} == down
        finally:
            reader.close()
            rig.stop()


def test_an_events_stream_is_never_shed_for_waiting_clients(live_api: ApiRig) -> None:
    """Beyond 240 connections the longest-waiting unserved one is closed: a stream is served, so it
    stays, however long it has been open."""
    from test_api_slow_clients import SlowClients

    live_api.start()
    reader = SseReader(f"{live_api.url}/api/v1/events", KEY_HEADERS).start()
    try:
        eventually(lambda: reader.of("hello"), timeout=30)
        with SlowClients(live_api.running.server.port, 300) as slow:
            eventually(lambda: slow.cut == 300, timeout=60)  # shed to make room, the rest after the bound
        beats = len(reader.comments)
        eventually(lambda: len(reader.comments) > beats, timeout=30)
        assert not reader.ended.is_set() and reader.error is None
    finally:
        reader.close()


def test_a_burst_of_changes_nobody_listens_to_is_one_reset_not_a_view_of_each(tmp_path: Path) -> None:
    """A cold start changes every record; with no page listening the feed makes no view of them, and
    puts one `reset` in the ring instead, so a page that resumes later reads everything again."""
    from ollama_gitops.api.live import BATCH, LiveFeed

    class Views:  # the catalog's part the feed uses
        made = 0

        def get(self, namespace: str, name: str) -> dict[str, str]:
            Views.made += 1
            return {"namespace": namespace, "name": name}

    bus = EventBus()
    last = bus.publish(events.STATUS, {}).id  # what a page saw before it went away
    feed = LiveFeed(bus, Views(), lambda: {}, lambda: [])  # type: ignore[arg-type]
    feed._last_status, feed._last_servers = {}, []
    feed.changed({ModelKey("default", f"m{i}") for i in range(BATCH + 1)})
    feed._turn()
    assert Views.made == 0
    resumed = bus.subscribe(last)
    assert [e.type for e in iter(lambda: resumed.next(timeout=0.01), None)] == [events.RESET]
    feed.changed({ModelKey("default", "one")})  # a few: each model's event, for a resume to replay
    feed._turn()
    assert Views.made == 1
