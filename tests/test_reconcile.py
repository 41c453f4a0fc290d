"""The reconciler against a real Git remote and the stand-in Ollama, through the official client."""

from __future__ import annotations

import io
import logging
import shutil
import time
from dataclasses import replace
from datetime import datetime, timezone

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from ollama_gitops.reconciler.models.naming import resource_name
from ollama_gitops.reconciler.ollama.server import OllamaServer, Tags
from ollama_gitops.reconciler.plan import MarkReady
from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.state import FAILED, PENDING, READY, ServerSeen, StateLocked, StateStore
from ollama_gitops.reconciler.scheduler import CycleScheduler
from ollama_gitops.reconciler.service import Service
from rig import CATALOGUE, Rig
from waiting import eventually


def test_added_models_are_pulled_and_recorded_ready(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("team-a", "gemma3", "1b")
    commit = rig.push()
    rig.start()
    report = rig.cycle()
    assert report.ok and report.commit == commit
    assert rig.ollama.installed() == {"llama3.2:1b": CATALOGUE["llama3.2:1b"], "gemma3:1b": CATALOGUE["gemma3:1b"]}
    record = rig.record("default", "llama3.2-1b")
    assert record is not None
    assert record.servers["default"].state == READY
    assert record.servers["default"].size == CATALOGUE["llama3.2:1b"]
    assert record.servers["default"].digest is None  # the pull's stream does not give it: the next resync does
    assert record.servers["default"].last_pull_time == "2027-01-15T08:00:00Z"  # the rig's clock
    assert record.servers["default"].applied_commit == commit and record.servers["default"].error is None
    sync = rig.reconciler.store.sync
    assert (sync.last_fetched_commit, sync.last_applied_commit, sync.last_cycle_outcome) == (commit, commit, "Succeeded")


def test_a_pull_ends_recorded_from_its_own_stream_without_a_listing_and_the_next_resync_gives_the_digest(
        rig: Rig) -> None:
    rig.ollama.install("gemma3:1b")  # the blobs of a model already there are streamed as one line each
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b", extra='refreshRequestedAt: "2026-11-25T14:00:00Z"\n')
    rig.push()
    reconciler = rig.start()
    assert rig.cycle().ok  # the first cycle lists the server once; gemma3 is found there
    rig.work.model("default", "gemma3", "1b", extra='refreshRequestedAt: "2026-11-26T14:00:00Z"\n')
    rig.push("re-pull gemma3")
    before = len(rig.ollama.requests)
    assert rig.cycle().ok and rig.ollama.pull_count["gemma3:1b"] == 1  # a re-pull of blobs it holds
    asked = rig.ollama.requests[before:]
    assert asked == [("POST", "/api/pull")]  # exactly one pull, and no listing at its end
    record = rig.record("default", "gemma3-1b").servers["default"]
    assert (record.state, record.size, record.digest) == (READY, CATALOGUE["gemma3:1b"], None)  # the listing's size
    assert reconciler.fleet.observed("default")["gemma3:1b"].size == CATALOGUE["gemma3:1b"]  # kept from the pull
    report = rig.cycle()  # what the pull settled: nothing to ask Ollama, the digest still unknown
    assert report.noop and len(rig.ollama.requests) == before + 1
    rig.clock.advance(301)
    report = rig.cycle()  # the resync's listing fills the digest in; nothing else changes
    assert report.ok and report.full and rig.ollama.requests[before + 1:] == [("GET", "/api/tags")]
    record = rig.record("default", "gemma3-1b").servers["default"]
    assert (record.state, record.size, record.digest) == (READY, CATALOGUE["gemma3:1b"], rig.ollama.digest_of("gemma3:1b"))
    assert rig.ollama.pull_count["gemma3:1b"] == 1
    rig.clock.advance(301)
    assert not any(isinstance(action, MarkReady) for action in rig.cycle().plan.actions)  # settled for good


def test_a_restarted_process_with_nothing_changed_stops_after_the_fetch_and_full_forces_a_full_cycle(
        rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    commit = rig.push()
    rig.start()
    assert rig.cycle().ok and rig.reconciler.store.sync.converged  # as `reconcile --once` does, pulls waited for
    seen = rig.reconciler.store.sync.servers
    reconciler = rig.start()  # the next `reconcile --once`: a new process, nothing in memory
    before = len(rig.ollama.requests)
    report = rig.cycle()
    assert report.ok and report.noop and report.message == f"up to date at {commit[:12]}"
    assert len(rig.ollama.requests) == before  # Ollama asked nothing
    assert reconciler.desired is None  # no model file read
    assert reconciler.store.sync.servers == seen  # how the servers were last seen is kept, not blanked
    report = reconciler.run_cycle(full=True)  # --once --full
    assert report.ok and report.full and ("GET", "/api/tags") in rig.ollama.requests[before:]
    assert {str(key) for plan in report.plans.values() for key in plan.specs} == {
        "default/llama3.2-1b", "default/gemma3-1b"}  # every model planned
    assert rig.ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1}


def test_once_after_once_with_nothing_changed_reads_no_record_nor_model_file(rig: Rig, tmp_path) -> None:
    from ollama_gitops.reconciler.service import build, run_once
    from apirig import settings_for

    rig.work.model("default", "llama3.2", "1b")
    commit = rig.push()
    settings = settings_for(rig.state_dir, str(rig.remote), rig.ollama.url)
    runs = []
    for _ in range(3):  # `reconcile --once` three times, as service.build and run_once make it
        service = build(settings)
        out = io.StringIO()
        try:
            before = len(rig.ollama.requests)
            runs.append((run_once(service, out), out.getvalue(), len(rig.ollama.requests) - before,
                         service.store.records_read, service.reconciler.desired is None))
        finally:
            service.stop()
    assert runs[0][0] == 0 and runs[0][2] > 0 and "Ready    default/llama3.2-1b" in runs[0][1]
    for code, printed, requests, records_read, no_model_read in runs[1:]:
        assert (code, printed) == (0, f"Succeeded at {commit[:12]}: up to date at {commit[:12]}\n")
        assert (requests, records_read, no_model_read) == (0, 0, True)  # no Ollama request, no record, no file
    store = StateStore(rig.state_dir)  # a record changed since the summary was saved (a pull killed mid-way)
    store.acquire_process_lock()
    with store.editing() as edit:
        edit.status(ModelKey("default", "llama3.2-1b"), "default").state = "Pulling"
    store.release_process_lock()
    service = build(settings)
    try:
        report = service.reconciler.run_cycle()  # the records read: one has work left, so a full cycle
        assert report.full and service.store.records_read > 0
        assert service.store.record(ModelKey("default", "llama3.2-1b")).servers["default"].state == READY  # found
    finally:
        service.reconciler.pulls.wait(timeout=30)
        service.stop()


def test_full_makes_the_first_cycle_of_a_long_run_a_full_one_and_only_that_one(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    assert rig.cycle().ok
    service = Service(None, rig.start().store, rig.reconciler, full_first=True)  # type: ignore[arg-type]
    assert service.run_cycle().full  # `reconcile --full`: whatever the recorded state says
    assert service.run_cycle().noop


def _new_commit(rig: Rig, store: StateStore) -> None:
    rig.work.model("default", "phi3", "mini")
    rig.push("add phi3")


def _failed_last_cycle(rig: Rig, store: StateStore) -> None:
    store.save_sync(replace(store.sync, last_cycle_outcome="Failed"))


def _resync_due(rig: Rig, store: StateStore) -> None:
    rig.clock.advance(300)


def _another_server(rig: Rig, store: StateStore) -> None:
    store.save_sync(replace(store.sync, servers=(ServerSeen("default", "http://127.0.0.1:9"),)))


def _left_something_to_prune(rig: Rig, store: StateStore) -> None:
    store.save_sync(replace(store.sync, converged=False))


def _unsettled(rig: Rig, store: StateStore) -> None:
    with store.editing() as edit:
        edit.status(ModelKey("default", "gemma3-1b"), "default").state = PENDING


@pytest.mark.parametrize("behind", [_new_commit, _failed_last_cycle, _resync_due, _another_server,
                                    _left_something_to_prune, _unsettled])
def test_a_restarted_process_whose_recorded_state_is_behind_makes_a_full_cycle(rig: Rig, behind) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start()
    assert rig.cycle().ok
    rig.stop()
    store = StateStore(rig.state_dir)
    store.acquire_process_lock()
    behind(rig, store)
    store.release_process_lock()
    reconciler = rig.start()
    before = len(rig.ollama.requests)
    report = rig.cycle()
    assert report.ok and report.full and not report.noop, report.message
    assert ("GET", "/api/tags") in rig.ollama.requests[before:] and reconciler.desired is not None


def test_model_already_in_ollama_becomes_ready_without_a_pull_even_after_restart(rig: Rig) -> None:
    rig.ollama.install("llama3.2:1b")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    assert rig.state("default", "llama3.2-1b") == READY
    assert rig.ollama.pull_count["llama3.2:1b"] == 0
    rig.start()  # a new process on the same state directory
    rig.clock.advance(10_000)
    rig.cycle()
    assert rig.state("default", "llama3.2-1b") == READY and rig.ollama.pull_count["llama3.2:1b"] == 0


def test_noop_cycle_fetches_only_and_asks_ollama_nothing(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    rig.cycle()  # settles the statuses written by the finished pull
    before = len(rig.ollama.requests)
    report = rig.cycle()
    assert report.ok and report.noop
    assert len(rig.ollama.requests) == before


def test_removed_file_prunes_only_what_ollama_gitops_pulled(rig: Rig) -> None:
    rig.ollama.install("gemma3:1b")  # pulled by hand, then put in Git
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.work.model("default", "phi3", "mini", extra="prune: false\n")
    rig.work.model("default", "qwen2.5", "0.5b")
    rig.push()
    rig.start()
    rig.cycle()
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b", "phi3:mini", "qwen2.5:0.5b"}
    rig.ollama.install("mistral:7b")  # pulled by hand, never in Git
    for name in ("llama3.2-1b", "gemma3-1b", "phi3-mini"):
        rig.work.remove(f"models/default/{name}.yaml")
    rig.push("remove three")
    report = rig.cycle()
    assert report.ok
    assert set(rig.ollama.installed()) == {"gemma3:1b", "phi3:mini", "qwen2.5:0.5b", "mistral:7b"}
    assert rig.ollama.delete_count == {"llama3.2:1b": 1}
    assert rig.record("default", "llama3.2-1b") is None and rig.record("default", "phi3-mini") is None


def test_changed_tag_pulls_the_new_model_and_prunes_the_old(rig: Rig) -> None:
    path = rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    rig.work.remove(path)
    rig.work.model("default", "phi3", "mini")
    rig.push("swap")
    rig.cycle()
    assert set(rig.ollama.installed()) == {"phi3:mini"}
    assert rig.state("default", "phi3-mini") == READY


def test_broken_file_keeps_its_model_and_shows_the_error(rig: Rig) -> None:
    path = rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    rig.work.write(path, "name: llama3.2\ntag: [1b\n")
    rig.push("break it")
    report = rig.cycle()
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    assert rig.ollama.delete_count == {}
    record = rig.record("default", "llama3.2-1b")
    assert record is not None and record.servers["default"].state == READY
    assert "model file is invalid, keeping the last good version: YAML syntax error" in (record.servers["default"].error or "")
    problems = rig.reconciler.store.sync.problems
    assert [(p.path, p.line) for p in problems] == [(path, 3)]
    assert report.ok  # a broken file is the file's problem, not the cycle's
    rig.work.model("default", "llama3.2", "1b")
    rig.push("fix it")
    rig.cycle()
    record = rig.record("default", "llama3.2-1b")
    assert record is not None and record.servers["default"].error is None and rig.reconciler.store.sync.problems == ()


def test_remote_down_changes_nothing_and_recovers(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    applied = rig.push()
    rig.start()
    rig.cycle()
    moved = rig.remote.with_name("moved.git")
    rig.remote.rename(moved)
    report = rig.cycle()
    assert not report.ok and "could not fetch branch 'main'" in report.message and "nothing changed" in report.message
    assert rig.ollama.installed() == {"llama3.2:1b": CATALOGUE["llama3.2:1b"]}
    assert rig.reconciler.store.sync.last_applied_commit == applied
    assert rig.reconciler.store.sync.last_cycle_outcome == "Failed"
    moved.rename(rig.remote)
    assert rig.cycle().ok


def test_ollama_down_is_reported_with_its_url_and_then_recovers(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.ollama.stop()
    report = rig.cycle()
    assert not report.ok
    assert f"Ollama is not reachable at {rig.ollama.url}" in report.message
    assert rig.state("default", "llama3.2-1b") == "Pending"
    rig.ollama.restart()
    report = rig.cycle()
    assert report.ok and rig.state("default", "llama3.2-1b") == READY


def test_logs_name_models_one_way_and_ollama_down_is_one_line_per_cycle(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.ollama.install("gemma3:1b")
    rig.work.model("default", "gemma3", "1b")
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("team-a", "llama3.2", "1b")
    rig.push()
    rig.start()
    with caplog.at_level(logging.DEBUG, logger="ollama_gitops"):
        rig.cycle()
    lines = [r.getMessage() for r in caplog.records]
    ready = [r for r in caplog.records if r.getMessage().startswith("action=ready models=default/gemma3-1b ")]
    assert [r.levelno for r in ready] == [logging.DEBUG], lines  # Ollama unchanged: counted in the cycle's line
    assert any("action=pull models=default/llama3.2-1b,team-a/llama3.2-1b " in line for line in lines), lines
    assert any("action=pulled reference=llama3.2:1b models=default/llama3.2-1b,team-a/llama3.2-1b " in line
               for line in lines), lines
    assert not any("models=default," in line for line in lines), lines

    rig.ollama.stop()
    for _ in range(2):
        caplog.clear()
        rig.clock.advance(1000)
        with caplog.at_level(logging.INFO, logger="ollama_gitops"):
            rig.cycle()
        said = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("action=cycle outcome=Failed"), said


def test_a_cold_cycle_over_models_found_in_ollama_logs_a_few_info_lines_whatever_their_number(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    count = 25
    for i in range(count):
        rig.ollama.install(f"found{i}:1b", size=1000 + i)
        rig.work.model("default", f"found{i}", "1b")
    rig.work.model("default", "llama3.2", "1b")  # one that changes Ollama: its lines stay at INFO
    rig.push()
    rig.start()
    with caplog.at_level(logging.DEBUG, logger="ollama_gitops"):
        assert rig.cycle().ok
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug_ready = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("action=ready ")]
    assert len(debug_ready) == count  # each model found is still said, at DEBUG
    assert not any(line.startswith("action=ready ") for line in info), info
    assert any(line.startswith("action=pull models=default/llama3.2-1b ") for line in info), info
    cycle = [line for line in info if line.startswith("action=cycle ")]
    assert len(cycle) == 1 and f"1 pull, 0 deletes, {count} already in Ollama" in cycle[0], info
    assert len(info) <= 5, info  # the pull, its end, the cycle: not one per model


def test_failed_pull_shows_ollamas_error_and_is_retried_with_backoff(rig: Rig) -> None:
    rig.ollama.fail_next_pulls("llama3.2:1b", 2, "max retries exceeded: unexpected EOF")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    record = rig.record("default", "llama3.2-1b")
    assert record is not None and record.servers["default"].state == FAILED
    assert record.servers["default"].error == "max retries exceeded: unexpected EOF" and record.servers["default"].failures == 1
    first_delay = record.servers["default"].next_retry_at - rig.clock.now
    assert 11.25 <= first_delay <= 15  # about 15 s, as README says: jitter takes off at most a quarter
    rig.cycle()  # too early: no retry
    assert rig.ollama.pull_count["llama3.2:1b"] == 1
    rig.clock.advance(first_delay + 1)
    rig.cycle()
    record = rig.record("default", "llama3.2-1b")
    assert record.servers["default"].failures == 2 and 22.5 <= record.servers["default"].next_retry_at - rig.clock.now <= 30
    rig.clock.advance(31)
    rig.cycle()
    assert rig.state("default", "llama3.2-1b") == READY and rig.ollama.pull_count["llama3.2:1b"] == 3
    assert rig.record("default", "llama3.2-1b").servers["default"].error is None


def test_a_failed_pull_is_retried_when_its_backoff_is_due_not_at_the_next_interval(rig: Rig) -> None:
    """Wired as the service wires it: the schedule's interval is an hour, the backoff a fraction of
    a second, so only a cycle asked for at the retry time can pull again."""
    rig.ollama.fail_next_pulls("llama3.2:1b", 2, "max retries exceeded: unexpected EOF")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    service = Service(None, None, None)  # type: ignore[arg-type]  # only its schedule is used
    reconciler = rig.start(clock=time.time, backoff_base=0.2, on_pull_finished=lambda at: service.pull_finished(at))
    service.store, service.reconciler = reconciler.store, reconciler
    service.scheduler = CycleScheduler(reconciler.run_cycle, interval=3600)
    service.scheduler.start()
    try:
        eventually(lambda: rig.state("default", "llama3.2-1b") == READY, timeout=60)
    finally:
        service.scheduler.shutdown()
    assert rig.ollama.pull_count["llama3.2:1b"] == 3


def test_unknown_model_fails_cleanly_with_ollamas_message(rig: Rig) -> None:
    rig.work.model("default", "no-such-model", "1b")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    report = rig.cycle()
    assert report.ok
    record = rig.record("default", "no-such-model-1b")
    assert record is not None and record.servers["default"].state == FAILED
    assert record.servers["default"].error == "pull model manifest: file does not exist"
    assert rig.state("default", "llama3.2-1b") == READY


def test_bumped_refresh_field_repulls_once(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b", extra="refreshRequestedAt: '2026-01-01T00:00:00Z'\n")
    rig.push()
    rig.start()
    rig.cycle()
    assert rig.ollama.pull_count["llama3.2:1b"] == 1  # a refresh value in a new file is history
    rig.work.model("default", "llama3.2", "1b", extra="refreshRequestedAt: '2026-11-25T14:00:00Z'\n")
    rig.push("refresh")
    rig.cycle()
    assert rig.ollama.pull_count["llama3.2:1b"] == 2
    assert rig.record("default", "llama3.2-1b").servers["default"].refresh_handled == "2026-11-25T14:00:00Z"
    rig.clock.advance(10_000)
    rig.cycle()
    rig.start()
    rig.cycle()
    assert rig.ollama.pull_count["llama3.2:1b"] == 2


def test_drift_is_found_on_the_resync_interval(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start(resync_interval=300)
    rig.cycle()
    rig.cycle()
    rig.ollama.remove("llama3.2:1b")  # removed by hand behind the reconciler's back
    assert rig.cycle().noop  # the cheap cycle does not look
    rig.clock.advance(301)
    report = rig.cycle()
    assert not report.noop and any(p.reason == "drift: missing from Ollama" for p in report.plan.actions if hasattr(p, "reason"))
    assert "llama3.2:1b" in rig.ollama.installed() and rig.ollama.pull_count["llama3.2:1b"] == 2


def test_pruning_every_model_needs_allow_empty(rig: Rig) -> None:
    paths = [rig.work.model("default", "llama3.2", "1b"), rig.work.model("default", "gemma3", "1b")]
    rig.push()
    rig.start()
    rig.cycle()
    for path in paths:
        rig.work.remove(path)
    rig.push("remove all")
    report = rig.cycle()
    assert not report.ok and "would remove all 2 models" in report.message and "--allow-empty" in report.message
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    rig.start(allow_empty=True)
    assert rig.cycle().ok
    assert rig.ollama.installed() == {}


def test_suspended_models_are_left_alone(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b", extra="suspend: true\n")
    path = rig.work.model("default", "gemma3", "1b")
    rig.work.model("default", "phi3", "mini")
    rig.push()
    rig.start()
    rig.cycle()
    assert "llama3.2:1b" not in rig.ollama.installed()
    rig.work.model("default", "gemma3", "1b", extra="suspend: true\n")
    rig.push("suspend gemma")
    rig.ollama.remove("gemma3:1b")
    rig.clock.advance(10_000)
    rig.cycle()
    assert "gemma3:1b" not in rig.ollama.installed()  # no drift repair while suspended
    rig.ollama.install("gemma3:1b")
    rig.work.remove(path)
    rig.push("remove suspended")
    rig.cycle()
    assert "gemma3:1b" in rig.ollama.installed()


@pytest.mark.parametrize(("kept", "dropped"), [
    (("team-a", "llama3.2"), ("team-b", "llama3.2")),  # the same model in two namespaces
    (("default", "library/llama3.2"), ("default", "llama3.2")),  # two spellings: two files, one model
])
def test_one_model_wanted_by_two_files_is_pulled_once_and_kept_while_wanted(
        rig: Rig, kept: tuple[str, str], dropped: tuple[str, str]) -> None:
    path_kept = rig.work.model(kept[0], kept[1], "1b")
    path_dropped = rig.work.model(dropped[0], dropped[1], "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    assert rig.ollama.pull_count["llama3.2:1b"] == 1
    kept_name, dropped_name = (resource_name(name, "1b") for _, name in (kept, dropped))
    assert rig.state(kept[0], kept_name) == rig.state(dropped[0], dropped_name) == READY
    rig.work.remove(path_dropped)
    rig.push("drop one")
    report = rig.cycle()
    assert "llama3.2:1b" in rig.ollama.installed() and rig.record(dropped[0], dropped_name) is None
    assert any("wanted by another file" in getattr(a, "reason", "") for a in report.plan.actions)
    rig.work.remove(path_kept)
    rig.push("drop the other")
    rig.cycle()
    assert "llama3.2:1b" not in rig.ollama.installed()


def test_a_pull_in_flight_is_not_started_twice_and_cycles_do_not_wait(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    with rig.ollama.hold_pulls() as gate:
        rig.cycle(wait=False)
        assert gate.wait_for_pulls(1, timeout=10)
        assert rig.state("default", "llama3.2-1b") == "Pulling"
        assert rig.cycle(wait=False).noop  # nothing new: a pull in flight is not pending work
        rig.work.model("default", "gemma3", "1b")
        rig.push("another model")
        assert rig.cycle(wait=False).ok  # plans gemma3 only
        assert gate.wait_for_pulls(2, timeout=10)
        rig.work.model("team-a", "registry.ollama.ai/library/llama3.2", "1b")
        rig.push("the same model, spelled in full")
        assert [a.reason for a in rig.cycle(wait=False).plan.actions] == ["pull in progress"]
        rig.clock.advance(301)
        report = rig.cycle(wait=False)  # a resync lists Ollama: nothing changed there, so only the pending model
        assert report.full and not report.everything
        assert [a.reason for a in report.plan.actions] == ["pull in progress"]
        report = rig.reconciler.run_cycle(full=True)  # a full cycle looks at every model
        assert report.full and report.everything
        assert [a.reason for a in report.plan.actions] == ["pull in progress"] * 3
        progress = rig.record("default", "llama3.2-1b").servers["default"]
        assert progress.progress_total and progress.progress_completed is not None
    assert rig.reconciler.pulls.wait(timeout=10)
    assert rig.ollama.pull_count["llama3.2:1b"] == 1 and rig.state("default", "llama3.2-1b") == READY
    rig.cycle()  # the file that waited on the pull finds the model there
    assert rig.ollama.pull_count["llama3.2:1b"] == 1
    assert rig.state("default", "gemma3-1b") == rig.state("team-a", "registry.ollama.ai-library-llama3.2-1b") == READY


def test_dry_run_changes_nothing(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    report = rig.cycle(dry_run=True)
    assert [type(a).__name__ for a in report.plan.actions] == ["Pull"]
    assert rig.ollama.pull_count == {} and rig.record("default", "llama3.2-1b") is None
    assert StateStore(rig.state_dir).records() == {}


def test_state_directory_is_locked_against_a_second_process(rig: Rig) -> None:
    rig.start()
    with pytest.raises(StateLocked, match="another ollama-gitops process"):
        StateStore(rig.state_dir).acquire_process_lock()


def test_file_removed_during_its_pull_is_pruned_after_the_pull(rig: Rig) -> None:
    rig.work.model("default", "gemma3", "1b")
    path = rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    with rig.ollama.hold_pulls() as gate:
        rig.cycle(wait=False)
        assert gate.wait_for_pulls(2, timeout=10)
        rig.work.remove(path)
        rig.push("remove while pulling")
        report = rig.cycle(wait=False)
        assert [a.reason for a in report.plan.actions if a.key.name == "llama3.2-1b"] == [
            "file removed; waiting for the pull in progress to end"
        ]
        assert rig.ollama.delete_count == {}
    assert rig.reconciler.pulls.wait(timeout=10)
    rig.cycle()
    assert set(rig.ollama.installed()) == {"gemma3:1b"}


def test_state_store_survives_a_restart_with_a_pull_marked_pulling(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    with rig.ollama.hold_pulls() as gate:
        rig.cycle(wait=False)
        assert gate.wait_for_pulls(1, timeout=10)
        # What a process killed now leaves behind: the record says Pulling.
        shutil.copytree(rig.state_dir, rig.tmp_path / "snapshot")
    rig.stop()
    rig.state_dir = rig.tmp_path / "snapshot"
    (rig.state_dir / "lock").unlink(missing_ok=True)
    rig.start()
    assert rig.state("default", "llama3.2-1b") == "Pending"
    rig.cycle()
    assert rig.state("default", "llama3.2-1b") == READY


def test_state_journal_replays_compacts_and_drops_a_torn_line(tmp_path) -> None:
    from ollama_gitops.reconciler import state as state_module
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus

    store = StateStore(tmp_path)
    keys = [ModelKey("default", f"m{i}-1") for i in range(5)]
    with store.editing() as edit:
        for key in keys:
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"), {"default": ModelStatus()}))
    with store.editing() as edit:
        edit.status(keys[0], "default").state = READY
        edit.forget(keys[1])
    with open(tmp_path / state_module.JOURNAL, "a") as journal:
        journal.write('{"key":["default","torn"],"rec')  # a crash in the middle of an append
    reader = StateStore(tmp_path, readonly=True)
    assert set(reader.keys()) == set(keys) - {keys[1]}
    assert not (tmp_path / state_module.JOURNAL).read_text().endswith("\n")  # a reader mends nothing
    reloaded = StateStore(tmp_path)
    reloaded.acquire_process_lock()
    assert set(reloaded.keys()) == set(keys) - {keys[1]}
    assert reloaded.record(keys[0]).servers["default"].state == READY
    assert (tmp_path / state_module.JOURNAL).read_text().endswith("\n")  # the lock holder cuts the torn tail
    reloaded._compact()
    assert (tmp_path / state_module.JOURNAL).read_text() == ""
    again = StateStore(tmp_path)
    assert again.records() == reloaded.records()
    assert again.record(keys[0]).servers == {"default": ModelStatus(state=READY)}
    reloaded.release_process_lock()


def test_a_follower_sees_what_the_reconciler_writes(tmp_path) -> None:
    from ollama_gitops.reconciler import state as state_module
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus

    writer = StateStore(tmp_path)
    writer.acquire_process_lock()
    follower = StateStore(tmp_path, readonly=True)
    key = ModelKey("default", "a-1")
    assert follower.follow() is False
    with writer.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("a:1", "models/default/a-1.yaml"), {"default": ModelStatus()}))
    assert follower.follow() is True and follower.record(key).servers["default"].state == "Pending"
    with writer.editing() as edit:
        edit.status(key, "default").state = READY
    writer._compact()  # a new snapshot and an empty journal
    with writer.editing() as edit:
        edit.put(ModelKey("default", "b-1"), ModelRecord(AppliedSpec("b:1", "models/default/b-1.yaml"), {"default": ModelStatus()}))
    assert follower.follow() is True
    assert follower.record(key).servers["default"].state == READY and len(follower.keys()) == 2
    assert (tmp_path / state_module.SNAPSHOT).exists()


def test_a_reference_ollama_shortens_is_pulled_once_shown_and_pruned(rig: Rig) -> None:
    """Ollama lists `registry.ollama.ai/library/llama3.2:1b` as `llama3.2:1b` (DisplayShortest)."""
    path = rig.work.model("default", "registry.ollama.ai/library/llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start(resync_interval=300)
    rig.cycle()
    record = rig.record("default", "registry.ollama.ai-library-llama3.2-1b")
    assert record is not None and record.servers["default"].state == READY
    assert record.servers["default"].size == CATALOGUE["llama3.2:1b"]
    for _ in range(2):  # full cycles: Ollama listed, every model planned
        rig.clock.advance(301)
        assert rig.cycle().full
    # the listing's digest, under the name Ollama shows, is this model's
    assert rig.record("default", "registry.ollama.ai-library-llama3.2-1b").servers["default"].digest == \
        rig.ollama.digest_of("llama3.2:1b")
    assert rig.ollama.pull_count["llama3.2:1b"] == 1
    rig.work.remove(path)
    rig.push("remove it")
    assert rig.cycle().ok
    assert rig.ollama.delete_count == {"llama3.2:1b": 1} and "llama3.2:1b" not in rig.ollama.installed()


@pytest.mark.parametrize("depth", [500, 900])
def test_a_deeply_nested_file_keeps_its_model_and_later_commits_apply(rig: Rig, depth: int) -> None:
    path = rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    rig.work.write(path, "name: llama3.2\ntag: 1b\nlabels: " + "{a: " * depth + "x" + "}" * depth + "\n")
    rig.push("nest it deep")
    report = rig.cycle()
    assert report.ok, report.message
    assert [(p.path, p.line) for p in rig.reconciler.store.sync.problems] == [(path, 3)]
    assert "nested more than" in rig.record("default", "llama3.2-1b").servers["default"].error
    rig.work.model("default", "gemma3", "1b")
    commit = rig.push("a later commit")
    assert rig.cycle().ok
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    assert rig.reconciler.store.sync.last_applied_commit == commit


class _ListingBug(OllamaServer):
    """An Ollama edge with a bug: reading the listing fails with an error no one planned for."""

    def tags(self, unless: str | None = None, keep=None) -> Tags:  # type: ignore[no-untyped-def]
        raise KeyError("models")


def _cycles(outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("ollama_gitops_reconcile_cycles_total", {"outcome": outcome}) or 0.0


def test_a_crashed_cycle_is_recorded_failed_with_its_error_in_status_and_metrics(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    reconciler = rig.start()
    member = reconciler.fleet.member("default")
    good = member.client
    member.client = _ListingBug(rig.ollama.url)
    failed_before = _cycles("failed")
    report = rig.cycle()
    assert not report.ok and "KeyError" in report.message and "'models'" in report.message
    sync = reconciler.store.sync
    assert sync.last_cycle_outcome == "Failed" and "KeyError" in sync.last_cycle_message
    assert _cycles("failed") == failed_before + 1
    assert StateStore(rig.state_dir).sync.last_cycle_outcome == "Failed"  # on disk, for `api` and a restart
    member.client = good
    assert rig.cycle().ok and rig.state("default", "llama3.2-1b") == READY


@pytest.mark.parametrize("broken", ["HEAD", "config"])
@pytest.mark.parametrize("restart", [False, True])
def test_a_clone_git_cannot_open_is_set_aside_and_cloned_again(rig: Rig, caplog: pytest.LogCaptureFixture,
                                                               broken: str, restart: bool) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    assert rig.cycle().ok
    clone = rig.state_dir / "clone.git"
    (clone / broken).write_bytes(b"\x00\xffgarbage [[[\n")
    rig.work.model("default", "gemma3", "1b")
    commit = rig.push("add gemma3")
    if restart:
        rig.start()
    with caplog.at_level("WARNING"):
        report = rig.cycle()
    assert report.ok, report.message
    assert rig.reconciler.store.sync.last_applied_commit == commit and rig.state("default", "gemma3-1b") == READY
    (aside,) = rig.state_dir.glob("clone.git.broken-*")
    assert (aside / broken).read_bytes() == b"\x00\xffgarbage [[[\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "clone" in r.getMessage()]
    assert any(str(clone) in w and aside.name in w and "cloning again" in w for w in warnings), warnings
    assert rig.cycle().ok  # and it stays repaired


@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_a_model_file_replaced_by_a_submodule_or_symlink_keeps_its_weights(rig: Rig, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    path = rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    rig.work.special(path, kind, "gemma3-1b.yaml")
    rig.push("replace the file")
    with caplog.at_level("WARNING"):
        assert rig.cycle().ok
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b"} and rig.ollama.delete_count == {}
    record = rig.record("default", "llama3.2-1b")
    assert record is not None and "model files must be regular files" in record.servers["default"].error
    assert [p.path for p in rig.reconciler.store.sync.problems] == [path]
    assert any(f"path={path}" in r.getMessage() for r in caplog.records)
    rig.clock.advance(301)  # a full cycle (resync) keeps it too
    assert rig.cycle().full and rig.ollama.delete_count == {} and rig.record("default", "llama3.2-1b") is not None


@pytest.mark.parametrize("replaced", ["models/default", "models"])
@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_a_namespace_folder_or_models_replaced_keeps_every_weight(rig: Rig, caplog: pytest.LogCaptureFixture, kind: str, replaced: str) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.work.model("team-a", "phi3", "mini")
    rig.push()
    rig.start()
    rig.cycle()
    rig.work.special(replaced, kind, "team-a" if replaced == "models/default" else "models-elsewhere")
    rig.push(f"replace {replaced}")
    with caplog.at_level("WARNING"):
        report = rig.cycle()
    assert report.ok, report.message
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "gemma3:1b", "phi3:mini"} and rig.ollama.delete_count == {}
    for name in ("llama3.2-1b", "gemma3-1b"):
        record = rig.record("default", name)
        assert record is not None and record.servers["default"].state == READY and f"{replaced}: " in record.servers["default"].error
    assert [p.path for p in rig.reconciler.store.sync.problems] == [replaced]
    assert any(f"path={replaced} " in r.getMessage() for r in caplog.records)
    rig.clock.advance(301)
    assert rig.cycle().full and rig.ollama.delete_count == {}
    rig.start()  # a restart (a full first cycle) keeps them too
    assert rig.cycle().ok and rig.ollama.delete_count == {}
    # Made a folder again without one of its models: only that one is pruned.
    rig.work._clear(replaced)
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("team-a", "phi3", "mini")
    rig.push("a folder again")
    assert rig.cycle().ok
    assert set(rig.ollama.installed()) == {"llama3.2:1b", "phi3:mini"}
    assert rig.record("default", "llama3.2-1b").servers["default"].error is None


def test_a_lost_record_keeps_the_weights_as_the_warning_says(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    from ollama_gitops.reconciler.state import JOURNAL

    path = rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.push()
    rig.start()
    rig.cycle()
    assert rig.record("default", "llama3.2-1b").servers["default"].owned
    rig.stop()
    (rig.state_dir / JOURNAL).write_bytes(b"")  # emptied: which weights it pulled is forgotten
    with caplog.at_level("WARNING"):
        rig.start()
    assert any("change(s) are lost" in r.getMessage() and "will not prune them" in r.getMessage() for r in caplog.records)
    assert rig.cycle().ok and rig.state("default", "llama3.2-1b") == READY
    assert rig.ollama.pull_count["llama3.2:1b"] == 1  # found in Ollama, not pulled again
    rig.work.remove(path)
    rig.push("remove llama3.2")
    assert rig.cycle().ok
    assert "llama3.2:1b" in rig.ollama.installed() and rig.ollama.delete_count == {}


def test_ollama_going_away_between_resyncs_fails_every_cycle_until_it_is_back(rig: Rig) -> None:
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start(resync_interval=3600)
    assert rig.cycle().ok
    rig.ollama.stop()  # between two resyncs: incremental cycles do not list Ollama
    rig.work.model("default", "gemma3", "1b")
    rig.push("add gemma3")
    rig.cycle()  # plans gemma3 against the last listing; its pull is refused
    record = rig.record("default", "gemma3-1b")
    assert record.servers["default"].state == FAILED and f"Ollama is not reachable at {rig.ollama.url}" in record.servers["default"].error
    for _ in range(3):  # long before the next resync and the pull's retry
        rig.clock.advance(1)
        report = rig.cycle()
        assert not report.ok and report.full, report
        assert f"Ollama is not reachable at {rig.ollama.url}" in report.message
        assert rig.reconciler.store.sync.last_cycle_outcome == "Failed"
    rig.ollama.restart()
    report = rig.cycle()
    assert report.ok and report.full
    rig.clock.advance(60)
    rig.cycle()
    assert rig.state("default", "gemma3-1b") == READY


def test_ollamas_modified_at_is_recorded_in_whole_seconds_utc_whatever_its_fraction_and_offset() -> None:
    from ollama_gitops.reconciler.ollama.server import modified_seconds
    from ollama_gitops.reconciler.reconcile import _seed_time

    def _seconds_z(timestamp: object) -> str | None:  # what a listing's entry keeps, as a record writes it
        seconds = modified_seconds(timestamp)
        return None if seconds is None else _seed_time(seconds)

    assert _seconds_z("2024-05-01T12:34:56.123456789-07:00") == "2024-05-01T19:34:56Z"  # Ollama's nanoseconds
    assert _seconds_z("2024-12-31T23:59:59.999999999-01:00") == "2025-01-01T00:59:59Z"  # never rounded up
    assert _seconds_z("2024-05-01T12:34:56.5Z") == "2024-05-01T12:34:56Z"
    assert _seconds_z("2024-05-01T12:34:56+02:00") == "2024-05-01T10:34:56Z"
    assert _seconds_z("2024-05-01T12:34:56.123+02:00") == _seconds_z("2024-05-01T12:34:56.987654321+02:00")
    assert _seconds_z("not a time") is None and _seconds_z("2024-05-01T12:34:56.x+02:00") is None
    assert _seconds_z("1969-12-31T23:59:59.75Z") == "1969-12-31T23:59:59Z"  # before the epoch: still dropped, not floored
    # Not given, not a string, or past what a UTC time can be: unknown, never a failed cycle.
    assert _seconds_z(None) is None and _seconds_z("") is None and _seconds_z(1714566896) is None
    assert _seconds_z("9999-12-31T23:59:59-01:00") is None and _seconds_z("0001-01-01T00:59:59+01:00") is None
    assert _seconds_z("9999-12-31T22:59:59.5-01:00") == "9999-12-31T23:59:59Z"


def _seconds_z_as_before(timestamp: str) -> str | None:
    """How a record's pull time was made from Ollama's `modified_at` before the listing kept seconds."""
    text = timestamp.replace("Z", "+00:00")
    if text[19:20] == ".":
        offset = text[20:].lstrip("0123456789")
        if len(offset) < len(text) - 20:
            text = text[:19] + offset
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):  # (an overflow was raised out of the cycle)
        return None


def _go_time(moment: datetime, digits: str, east_minutes: int) -> str:
    """`moment` as Go's RFC3339Nano writes it (Ollama's `modified_at`), `digits` of fraction."""
    offset = "Z" if east_minutes == 0 else f"{'+' if east_minutes > 0 else '-'}{abs(east_minutes) // 60:02d}:{abs(east_minutes) % 60:02d}"
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment:%H:%M:%S}"
            + (f".{digits}" if digits else "") + offset)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.builds(_go_time, st.datetimes(), st.text("0123456789", max_size=9), st.integers(-1439, 1439)),
                 st.text(max_size=40)))
def test_a_time_kept_as_seconds_is_recorded_as_it_was_from_ollamas_string(timestamp: str) -> None:
    from ollama_gitops.reconciler.ollama.server import modified_seconds
    from ollama_gitops.reconciler.reconcile import _seed_time

    seconds = modified_seconds(timestamp)
    assert (None if seconds is None else _seed_time(seconds)) == _seconds_z_as_before(timestamp)


def test_a_model_already_in_ollama_is_recorded_with_the_second_ollama_says_it_was_modified(rig: Rig) -> None:
    rig.ollama.install("llama3.2:1b")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    rig.start()
    assert rig.cycle().ok
    listed = httpx.get(f"{rig.ollama.url}/api/tags", timeout=30).json()["models"][0]["modified_at"]
    expected = datetime.fromisoformat(listed[:19] + "+00:00").strftime("%Y-%m-%dT%H:%M:%SZ")  # the stand-in's is UTC
    record = rig.record("default", "llama3.2-1b")
    assert record is not None and record.servers["default"].last_pull_time == expected


def test_a_listing_decoded_again_keeps_the_entries_it_kept_of_the_models_that_did_not_change(rig: Rig) -> None:
    """Issue 16 item 6: a resync decodes the whole listing again when anything on the server changed.
    Its entries for the models that did not change are the ones kept before, whose digest the
    records share, not a second copy of each."""
    for i in range(40):
        rig.ollama.install(f"model{i}:1b", 1000 + i)
        rig.work.model("default", f"model{i}", "1b")
    rig.push()
    rig.start()
    assert rig.cycle().ok
    member = rig.reconciler.fleet.member("default")
    assert member is not None and member.observed is not None
    before = dict(member.observed)
    status = rig.record("default", "model7-1b").servers["default"]
    assert status.state == READY and status.digest is before["model7:1b"].digest  # marked Ready from the listing
    rig.ollama.install("llama3.2:1b")  # by hand: the next listing's body differs
    rig.clock.advance(301)  # past the resync
    assert rig.cycle().ok and rig.ollama.requests.count(("GET", "/api/tags")) == 2
    after = member.observed
    assert after is not None and set(after) == set(before) | {"llama3.2:1b"}
    assert [reference for reference, model in after.items() if model is not before.get(reference)] == ["llama3.2:1b"]
    assert rig.record("default", "model7-1b").servers["default"].digest is after["model7:1b"].digest
    # Their keys too are the strings kept before, which the records hold: no second copy of a reference.
    kept_keys = {key: key for key in before}
    assert all(key is kept_keys[key] for key in after if key in kept_keys)
    assert rig.record("default", "model7-1b").spec.reference is next(k for k in after if k == "model7:1b")


def test_a_cycle_lists_the_server_while_it_loads_the_commit(rig: Rig) -> None:
    rig.ollama.install("llama3.2:1b")
    rig.work.model("default", "llama3.2", "1b")
    rig.push()
    reconciler = rig.start()
    load = reconciler._load

    def load_once_ollama_was_asked(commit: str):  # type: ignore[no-untyped-def]
        # Finishes only if the listing runs beside the load: one made after it would wait forever.
        eventually(lambda: ("GET", "/api/tags") in rig.ollama.requests, timeout=60, what="the listing during the load")
        return load(commit)

    reconciler._load = load_once_ollama_was_asked  # type: ignore[method-assign]
    report = rig.cycle()
    assert report.ok, report.message
    assert rig.ollama.requests.count(("GET", "/api/tags")) == 1 and rig.state("default", "llama3.2-1b") == READY
