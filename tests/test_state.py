"""The state directory's files when they are damaged: start-up never fails, what can be read is
kept, and a warning says what was lost, what that means, and where the damaged file is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_gitops.reconciler.models.desired import ModelKey, Problem
from ollama_gitops.reconciler.state import (JOURNAL, READY, SNAPSHOT, SYNC, AppliedSpec, ModelRecord, ModelStatus,
                                            StateStore, SyncStatus)

KEYS = [ModelKey("default", f"m{i}-1") for i in range(5)]


def populate(directory: Path, *, compact: bool = False) -> StateStore:
    """A store that pulled five models (each owned and Ready), as a reconciler leaves it."""
    store = StateStore(directory)
    store.acquire_process_lock()
    for key in KEYS:  # two journal lines each: the new record, then the pull's end
        with store.editing() as edit:
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"), {"default": ModelStatus()}))
        with store.editing() as edit:
            status = edit.status(key, "default")
            status.state, status.owned = READY, True
    if compact:
        store._compact()
    store.save_sync(SyncStatus(last_applied_commit="a" * 40, last_cycle_outcome="Succeeded",
                               problems=(Problem("models/x.yaml", 2, "bad"),)))
    store.release_process_lock()
    return store


def reopen(directory: Path) -> StateStore:
    """What a restarted reconciler reads (it takes the lock, reads and mends, and here lets go again)."""
    store = StateStore(directory)
    store.acquire_process_lock()
    store.release_process_lock()
    return store


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "ollama_gitops.state"]


@pytest.mark.parametrize("content", [
    b'{"version":1,"last_fetched_commit":"abc',  # cut short
    b"",  # emptied
    b"\x00\x00\x00garbage\xff",
    b"[1, 2]",
    b'{"version":1,"last_cycle_duration":"fast"}',
    b'{"version":1,"problems":[{"path":1,"line":null,"message":"m"}]}',
    b'{"version":1,"colour":"red"}',
])
def test_a_damaged_sync_json_starts_afresh_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    populate(tmp_path)
    (tmp_path / SYNC).write_bytes(content)
    with caplog.at_level("WARNING"):
        store = reopen(tmp_path)
    assert store.sync == SyncStatus()
    assert set(store.keys()) == set(KEYS) and all(r.servers["default"].owned for r in store.records().values())
    (line,) = warnings(caplog)
    assert str(tmp_path / SYNC) in line and "starting with a fresh sync summary" in line
    assert "no model's record is affected" in line and ".broken-" in line
    (aside,) = tmp_path.glob(f"{SYNC}.broken-*")
    assert aside.read_bytes() == content
    caplog.clear()
    reopen(tmp_path)
    assert warnings(caplog) == []  # mended: said once


def test_a_garbage_journal_line_is_skipped_and_every_other_line_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    populate(tmp_path)
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 10  # a put and a status change per model
    lines[3] = lines[3][:40] + b"\xff garbage\n"  # the status change of m1 (Ready, owned)
    lines[6] = b'{"seq":7,"key":["default","m3-1"],"record":{"spec":{"reference":5,"path":"p"},"status":{}}}\n'
    journal.write_bytes(b"".join(lines))
    with caplog.at_level("WARNING"):
        store = reopen(tmp_path)
    assert set(store.keys()) == set(KEYS)
    assert store.record(KEYS[1]).servers["default"].owned is False  # its put survived, its Ready-and-owned line did not
    assert store.record(KEYS[3]).servers["default"].owned is True  # the wrong-typed line was skipped; the next one holds
    assert all(store.record(k).servers["default"].owned for k in (KEYS[0], KEYS[2], KEYS[4]))
    found = warnings(caplog)
    assert len(found) == 2
    assert f"{journal} line 4 is unreadable" in found[0] and "the record of default/m1-1 is lost" in found[0]
    assert "will not prune them" in found[0]
    assert f"{journal} line 7 is unreadable" in found[1] and "field 'reference' of AppliedSpec must be str" in found[1]
    assert "the record of default/m3-1 is lost" in found[1]
    (aside,) = tmp_path.glob(f"{JOURNAL}.broken-*")
    assert aside.read_bytes() == b"".join(lines)
    caplog.clear()
    again = reopen(tmp_path)
    assert warnings(caplog) == [] and again.records() == store.records()


def test_a_torn_last_journal_line_stays_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    populate(tmp_path)
    with open(tmp_path / JOURNAL, "ab") as journal:
        journal.write(b'{"seq":11,"key":["default","torn"],"rec')
    with caplog.at_level("WARNING"):
        store = reopen(tmp_path)
    assert set(store.keys()) == set(KEYS) and warnings(caplog) == []
    assert list(tmp_path.glob("*.broken-*")) == []


@pytest.mark.parametrize("cut", ["emptied", "cut short"])
def test_an_emptied_or_cut_journal_is_noticed(tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: str) -> None:
    populate(tmp_path)
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"" if cut == "emptied" else b"".join(lines[:6]))
    with caplog.at_level("WARNING"):
        store = reopen(tmp_path)
    (line,) = warnings(caplog)
    lost = 10 if cut == "emptied" else 4
    assert f"{journal} ends at change {10 - lost} but change 10 had been written" in line
    assert f"the last {lost} change(s) are lost" in line and "will not prune them" in line
    assert len(store.keys()) == (0 if cut == "emptied" else 3)
    caplog.clear()
    reopen(tmp_path)
    assert warnings(caplog) == []


@pytest.mark.parametrize("damage", ["cut short", "emptied", "garbage", "wrong entry"])
def test_a_damaged_snapshot_keeps_every_readable_record(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    populate(tmp_path, compact=True)
    snapshot = tmp_path / SNAPSHOT
    text = snapshot.read_text()
    assert (tmp_path / JOURNAL).read_text() == ""
    if damage == "cut short":
        snapshot.write_text(text[: text.index('["default","m3-1"]') + 5])
    elif damage == "emptied":
        snapshot.write_text("")
    elif damage == "garbage":
        snapshot.write_bytes(b"\x00" * 64)
    else:
        document = json.loads(text)
        document["models"][2]["record"]["servers"]["default"]["state"] = "Exploded"
        snapshot.write_text(json.dumps(document))
    with caplog.at_level("WARNING"):
        store = reopen(tmp_path)
    expected = {"cut short": KEYS[:3], "emptied": [], "garbage": [], "wrong entry": KEYS[:2] + KEYS[3:]}[damage]
    assert sorted(store.keys()) == expected
    assert all(store.record(k).servers["default"].owned for k in expected)
    found = warnings(caplog)
    assert found and all(str(snapshot) in line and "will not prune them" in line for line in found)
    if damage == "wrong entry":
        assert "entry 3 is unreadable" in found[0] and "the record of default/m2-1 is lost" in found[0]
    elif damage == "cut short":
        assert "3 record(s) recovered" in found[0]
    caplog.clear()
    assert sorted(reopen(tmp_path).keys()) == expected and warnings(caplog) == []


def test_a_follower_never_fails_on_damaged_files_and_mends_nothing(tmp_path: Path) -> None:
    populate(tmp_path)
    (tmp_path / SYNC).write_text("{")
    with open(tmp_path / JOURNAL, "ab") as journal:
        journal.write(b"garbage\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    follower = StateStore(tmp_path, readonly=True)
    assert set(follower.keys()) == set(KEYS) and follower.sync == SyncStatus()
    assert follower.follow() is False
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_records_written_before_fleets_are_the_default_servers_after_an_upgrade(tmp_path: Path) -> None:
    old = {"spec": {"reference": "llama3.2:1b", "path": "models/default/llama3.2-1b.yaml"},
           "status": {"state": "Ready", "owned": True, "size": 5}}
    (tmp_path / SNAPSHOT).write_text(json.dumps({"version": 1, "seq": 1, "models": [
        {"key": ["default", "llama3.2-1b"], "record": old}]}))
    (tmp_path / JOURNAL).write_text(json.dumps({"seq": 2, "key": ["default", "gemma3-1b"], "record": {
        "spec": {"reference": "gemma3:1b", "path": "models/default/gemma3-1b.yaml"}, "status": {"state": "Pulling"}}}) + "\n")
    store = reopen(tmp_path)
    assert store.record(ModelKey("default", "llama3.2-1b")).servers == {"default": ModelStatus("Ready", size=5, owned=True)}
    # the pull died with the process before the upgrade
    assert store.record(ModelKey("default", "gemma3-1b")).servers == {"default": ModelStatus("Pending")}
    store.acquire_process_lock()
    store._compact()  # written again in the new form, read back the same
    store.release_process_lock()
    assert json.loads((tmp_path / SNAPSHOT).read_text())["models"][1]["record"]["servers"]["default"]["owned"] is True
    assert reopen(tmp_path).records() == store.records()


def test_each_server_has_its_own_status_and_work_left_on_any_server_is_unsettled(tmp_path: Path) -> None:
    from ollama_gitops.reconciler.state import FAILED, ServerSeen

    store = StateStore(tmp_path)
    store.acquire_process_lock()
    key = ModelKey("default", "m-1")
    with store.editing() as edit:
        edit.put(key, ModelRecord(AppliedSpec("m:1", "models/default/m-1.yaml"), {"gpu-1": ModelStatus(READY)}))
    assert store.unsettled(now=0) == set()
    with store.editing() as edit:
        edit.place(key, "gpu-2", ModelStatus(FAILED, next_retry_at=100.0))
    assert store.unsettled(now=99) == set() and store.unsettled(now=100) == {key}
    store.update_progress([key], "gpu-2", 1, 2)
    assert store.record(key).servers["gpu-2"].progress_total == 2 and store.record(key).servers["gpu-1"].progress_total is None
    with store.editing() as edit:
        edit.drop(key, "gpu-2")
    assert set(store.record(key).servers) == {"gpu-1"} and store.unsettled(now=100) == set()
    with store.editing() as edit:
        edit.drop(key, "gpu-1")
    assert store.record(key) is None  # no server left: nothing is known of it any more
    seen = (ServerSeen("gpu-1", "http://gpu-1:11434", {"gpu": "a100"}, True, "0.12.0", "2026-12-01T10:00:00Z"),
            ServerSeen("gpu-2", "http://gpu-2:11434", {}, False, None, None, "connection refused"))
    store.save_sync(SyncStatus(servers=seen))
    store.release_process_lock()
    assert reopen(tmp_path).sync.servers == seen


def test_start_up_reads_each_record_once_and_takes_in_what_was_written_before_the_lock(tmp_path: Path) -> None:
    populate(tmp_path, compact=True)  # five records in the snapshot
    holder = StateStore(tmp_path)
    holder.acquire_process_lock()
    with holder.editing() as edit:  # a journal line over the snapshot
        edit.status(KEYS[0], "default").error = "one"
    starting = StateStore(tmp_path)  # loads while the other process still holds the lock
    assert starting.records_read == 6
    with holder.editing() as edit:  # the other process goes on writing before it lets go
        edit.status(KEYS[1], "default").error = "two"
        edit.status(KEYS[2], "default").state = "Pulling"
    holder.release_process_lock()
    with open(tmp_path / JOURNAL, "ab") as journal:
        journal.write(b'{"seq":99,"key":["default","m3-1"],"rec')  # torn by a crash mid-append
    starting.acquire_process_lock()
    assert starting.records_read == 8  # the two lines written since its load (a record each), only
    records = starting.records()
    assert [records[key].servers["default"].error for key in KEYS[:3]] == ["one", "two", None]
    assert records[KEYS[2]].servers["default"].state == "Pending"  # its pull died with that process
    assert (tmp_path / JOURNAL).read_bytes().endswith(b"\n")  # the torn line is cut
    starting.release_process_lock()
    assert reopen(tmp_path).records() == records


def test_a_compaction_between_the_load_and_the_lock_reads_the_new_snapshot(tmp_path: Path) -> None:
    populate(tmp_path)
    starting = StateStore(tmp_path)
    assert starting.records_read == 10  # two journal lines per model, no snapshot
    holder = StateStore(tmp_path)
    holder.acquire_process_lock()
    with holder.editing() as edit:
        edit.status(KEYS[4], "default").error = "compacted"
    holder._compact()
    holder.release_process_lock()
    starting.acquire_process_lock()
    assert starting.records_read == 10 + 5  # the new snapshot, read whole
    assert starting.records()[KEYS[4]].servers["default"].error == "compacted"
    starting.release_process_lock()


def test_models_that_share_a_reference_are_related_until_each_is_gone(tmp_path: Path) -> None:
    """The index by reference holds one key, or a set once several models ask for the same one."""
    store = StateStore(tmp_path)
    store.acquire_process_lock()
    a, b, c = ModelKey("default", "a-1"), ModelKey("team", "a-1"), ModelKey("default", "c-1")

    def put(key: ModelKey, reference: str) -> None:
        with store.editing() as edit:
            edit.put(key, ModelRecord(AppliedSpec(reference, f"models/{key.namespace}/{key.name}.yaml"),
                                      {"default": ModelStatus()}))

    put(a, "a:1"), put(b, "A:1"), put(c, "c:1")
    assert store.related({a}) == {a, b} and store.related(set(), ["a:1"]) == {a, b} and store.related({c}) == {c}
    put(b, "c:1")  # b now asks for c's reference
    assert store.related({a}) == {a} and store.related({c}) == {b, c}
    with store.editing() as edit:
        edit.forget(c)
    assert store.related(set(), ["c:1"]) == {b} and store.related(set(), ["a:1"]) == {a}
    with store.editing() as edit:
        edit.forget(a)
    assert store.related(set(), ["a:1"]) == set()
    store.release_process_lock()


def test_records_written_piece_by_piece_are_the_whole_document_and_every_line(tmp_path: Path) -> None:
    """More records than one piece: an edit of every record (a cold start's) is written once, as the
    snapshot, which is what one `json.dump` of the whole writes; a later edit of fewer records than
    the store holds has a journal line for each; both read back."""
    from ollama_gitops.reconciler.state import _PIECE, _to_json

    store = StateStore(tmp_path)
    store.acquire_process_lock()
    keys = [ModelKey("default", f"m{i}-1") for i in range(_PIECE * 4 + 3)]
    with store.editing() as edit:
        for key in keys:
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"),
                                      {"default": ModelStatus(error="é")}))
    assert (tmp_path / JOURNAL).read_bytes() == b""  # not in the journal as well: every record encoded once
    records = store.records()
    whole = {"version": 1, "seq": len(keys), "models": [{"key": list(k), "record": _to_json(records[k])} for k in sorted(keys)]}
    assert (tmp_path / SNAPSHOT).read_text() == json.dumps(whole, separators=(",", ":"))
    assert reopen_following(tmp_path).records() == records
    edited = keys[:_PIECE * 2 + 1]
    with store.editing() as edit:
        for key in edited:
            edit.status(key, "default").state = READY
    lines = (tmp_path / JOURNAL).read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(len(keys) + 1, len(keys) + len(edited) + 1))
    records = store.records()
    assert reopen_following(tmp_path).records() == records  # the snapshot, then the journal over it
    store._compact()
    whole = {"version": 1, "seq": len(keys) + len(edited),
             "models": [{"key": list(k), "record": _to_json(records[k])} for k in sorted(keys)]}
    assert (tmp_path / SNAPSHOT).read_text() == json.dumps(whole, separators=(",", ":"))
    store.release_process_lock()
    assert reopen(tmp_path).records() == records


def reopen_following(directory: Path) -> StateStore:
    """What a reader beside the lock holder reads (it takes no lock)."""
    return StateStore(directory, readonly=True)
