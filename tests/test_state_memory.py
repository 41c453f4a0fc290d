"""What the state store keeps per model and hands out, counted (never RSS): a record on one server
holds no dict, the records handed out are the store's own (never a copy of every record), and an
edit replaces a record rather than changing it, so what was handed out stays as it was."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.state import (PULLING, READY, AppliedSpec, ModelRecord, ModelStatus, OneServer,
                                            StateStore)

KEYS = [ModelKey("default", f"m{i}-1") for i in range(50)]


def filled(directory: Path) -> StateStore:
    store = StateStore(directory)
    store.acquire_process_lock()
    with store.editing() as edit:
        for key in KEYS:
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"),
                                      {"default": ModelStatus()}))
    return store


def test_a_record_on_one_server_holds_no_dict_and_one_on_two_a_read_only_mapping(tmp_path: Path) -> None:
    store = filled(tmp_path)
    for record in [*store.records().values(), *StateStore(tmp_path, readonly=True).records().values()]:
        assert isinstance(record.servers, OneServer)
        held = [*gc.get_referents(record), *gc.get_referents(record.servers)]
        assert not any(isinstance(thing, dict) for thing in held)
        assert not hasattr(record, "__dict__") and not hasattr(record.servers, "__dict__")
    with store.editing() as edit:
        edit.place(KEYS[0], "gpu-1", ModelStatus())
    two = store.record(KEYS[0])
    assert two is not None and set(two.servers) == {"default", "gpu-1"}
    try:
        two.servers["x"] = ModelStatus()  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("a record's servers can be changed in place")
    with store.editing() as edit:
        edit.drop(KEYS[0], "gpu-1")
    assert isinstance(store.record(KEYS[0]).servers, OneServer)  # type: ignore[union-attr]
    store.release_process_lock()


def test_records_handed_out_are_the_stores_own_and_stay_as_they_were_while_edits_change_it(tmp_path: Path) -> None:
    store = filled(tmp_path)
    before = store.records()
    again = store.records()
    assert all(again[key] is before[key] for key in KEYS)  # no copy of any record
    assert store.record(KEYS[1]) is before[KEYS[1]]
    with store.editing() as edit:
        status = edit.status(KEYS[1], "default")
        assert status is not None and edit.status(KEYS[1], "default") is status  # one copy for the edit
        status.state, status.size = READY, 7
    store.update_progress([KEYS[2]], "default", 5, 10)
    with store.editing() as edit:
        edit.place(KEYS[3], "gpu-1", ModelStatus(PULLING))
        edit.drop(KEYS[4], "default")
    # What was handed out is as it was; the store has the changes (and its files, read again).
    assert all(before[key].servers["default"] == ModelStatus() for key in KEYS)
    assert set(before[KEYS[3]].servers) == {"default"} and KEYS[4] in before
    after = store.records()
    assert after[KEYS[1]].servers["default"].state == READY and after[KEYS[1]].servers["default"].size == 7
    assert after[KEYS[2]].servers["default"].progress_completed == 5
    assert set(after[KEYS[3]].servers) == {"default", "gpu-1"} and KEYS[4] not in after
    assert all(after[key] is before[key] for key in KEYS[5:])  # untouched records are not replaced
    store.release_process_lock()
    read = StateStore(tmp_path, readonly=True).records()
    assert read[KEYS[1]] == after[KEYS[1]] and set(read[KEYS[3]].servers) == {"default", "gpu-1"}
    assert KEYS[4] not in read


def test_a_cold_starts_edit_copies_no_status_and_hands_its_listeners_its_own_keys(tmp_path: Path) -> None:
    """An edit that records every model (a cold start's) and then marks each found: the statuses it
    put are changed in place (no copy of each), and listeners get the edit's keys, not a copy."""
    store = StateStore(tmp_path)
    store.acquire_process_lock()
    heard: list[object] = []
    store.add_listener(heard.append)
    with store.editing() as edit:
        put = {}
        for key in KEYS:
            put[key] = ModelStatus()
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"), {"default": put[key]}))
        for key in KEYS:
            status = edit.status(key, "default")
            assert status is put[key]  # the edit's own: not copied
            status.state = READY
        assert not edit._own  # nothing kept per status either
        keys = edit.touched
    assert heard == [keys] and heard[0] is not None and len(heard[0]) == len(KEYS)  # type: ignore[arg-type]
    assert not isinstance(heard[0], frozenset)  # the edit's own keys, not a copy of them
    # An edit of records that were there copies each status it changes, once.
    before = store.records()
    with store.editing() as edit:
        for key in KEYS[:3]:
            first = edit.status(key, "default")
            assert first is not before[key].servers["default"] and edit.status(key, "default") is first
        assert len(edit._own) == 3
    store.release_process_lock()


def test_a_snapshot_is_read_one_entry_at_a_time_and_one_of_another_layout_as_a_whole(tmp_path: Path) -> None:
    """What `_compact` writes (this release's and the previous one's: the same layout) is decoded
    entry by entry; any other JSON text of a snapshot (another layout, spaces) is read whole, as before;
    both give the same records, and a commit recorded by many records is one string after the load."""
    import io
    import json

    from ollama_gitops.reconciler.state import SNAPSHOT, _to_json

    store = filled(tmp_path)
    with store.editing() as edit:
        for key in KEYS:
            edit.status(key, "default").applied_commit = "c" * 40  # type: ignore[union-attr]
    store._compact()
    written = store.records()
    store.release_process_lock()
    raw = (tmp_path / SNAPSHOT).read_text()
    reader = StateStore(tmp_path, readonly=True)
    assert reader._stream_snapshot(tmp_path / SNAPSHOT, io.StringIO(raw)) is not None  # this layout is streamed
    again = StateStore(tmp_path, readonly=True).records()
    assert again == written
    commits = {id(record.servers["default"].applied_commit) for record in again.values()}
    assert len(commits) == 1
    # The same records in another layout (json.dump's default spacing): read whole, the same records.
    document = {"version": 1, "seq": 100, "models": [{"key": list(k), "record": _to_json(written[k])} for k in sorted(written)]}
    (tmp_path / SNAPSHOT).write_text(json.dumps(document))
    assert StateStore(tmp_path, readonly=True)._stream_snapshot(tmp_path / SNAPSHOT, io.StringIO(json.dumps(document))) is None
    assert StateStore(tmp_path, readonly=True).records() == written


def test_the_snapshot_of_every_record_is_written_a_piece_at_a_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A writer that counts: the snapshot of N records (a cold start's first write) is N / _PIECE
    writes of a piece's records each, never one string of every record."""
    import io

    from ollama_gitops.reconciler import state
    from ollama_gitops.reconciler.state import SNAPSHOT, _PIECE

    writes: list[int] = []
    real = state.write_file

    class Counting(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(len(text))
            return super().write(text)

    def counted(path, write, durable):  # type: ignore[no-untyped-def]
        buffer = Counting()
        write(buffer)
        real(path, lambda handle: handle.write(buffer.getvalue()), durable)

    monkeypatch.setattr(state, "write_file", counted)
    store = StateStore(tmp_path)
    store.acquire_process_lock()
    keys = [ModelKey("default", f"m{i}-1") for i in range(_PIECE * 3 + 1)]
    with store.editing() as edit:  # an edit of every record: written as the snapshot
        for key in keys:
            edit.put(key, ModelRecord(AppliedSpec(f"{key.name}:1", f"models/default/{key.name}.yaml"), {"default": ModelStatus()}))
    whole = len((tmp_path / SNAPSHOT).read_text())
    assert sum(writes) == whole
    assert len([n for n in writes if n > 100]) == 4  # one write per piece of _PIECE records (and the ends)
    assert max(writes) < whole / 3 + 1000
    store.release_process_lock()
    assert StateStore(tmp_path, readonly=True).records() == store.records()


def _snapshot_of(directory: Path, count: int) -> dict[ModelKey, ModelRecord]:
    """A store of `count` Ready records, compacted into a snapshot; its records."""
    store = StateStore(directory)
    store.acquire_process_lock()
    with store.editing() as edit:
        for i in range(count):
            status = ModelStatus(READY, size=10**9 + i, digest=f"{i:064x}", last_pull_time="2026-01-01T00:00:00Z",
                                 applied_commit="c" * 40)
            edit.put(ModelKey("default", f"model{i}-1b"),
                     ModelRecord(AppliedSpec(f"model{i}:1b", f"models/default/model{i}-1b.yaml"), {"default": status}))
    store._compact()
    records = store.records()
    store.release_process_lock()
    return records


@pytest.mark.parametrize("piece", [1, 7, 500, 1 << 16])
def test_a_snapshot_read_in_pieces_of_any_size_gives_the_records_written(tmp_path: Path, piece: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ollama_gitops.reconciler import state

    written = _snapshot_of(tmp_path, 60)
    monkeypatch.setattr(state, "_READ", piece)  # cuts inside entries, numbers and the head
    reader = StateStore(tmp_path, readonly=True)
    assert reader.records() == written and reader.records_read == 60 and not reader._damage


def test_a_snapshot_cut_short_is_read_whole_and_says_what_it_recovered(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ollama_gitops.reconciler import state
    from ollama_gitops.reconciler.state import SNAPSHOT

    written = _snapshot_of(tmp_path, 30)
    text = (tmp_path / SNAPSHOT).read_text()
    (tmp_path / SNAPSHOT).write_text(text[:text.index('{"key":["default","model20-1b"]') + 25])
    monkeypatch.setattr(state, "_READ", 64)
    reader = StateStore(tmp_path, readonly=True)
    before = sorted(written)[:sorted(written).index(ModelKey("default", "model20-1b"))]  # in the snapshot's order
    assert reader.records() == {key: written[key] for key in before}
    assert any(f"{len(before)} record(s) recovered" in line for line in reader._damage)


def test_a_snapshot_is_not_held_whole_while_its_records_are_made(tmp_path: Path) -> None:
    """A restart reads the snapshot a piece at a time: what the load holds beyond the records it
    made is a piece, not the snapshot's text (which is as large as the records themselves)."""
    import tracemalloc

    from ollama_gitops.reconciler.state import SNAPSHOT

    _snapshot_of(tmp_path, 3000)
    size = (tmp_path / SNAPSHOT).stat().st_size  # about 1.3 MB
    gc.collect()
    tracemalloc.start()
    try:
        reader = StateStore(tmp_path, readonly=True)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(reader.records()) == 3000
    assert peak - kept < size / 4, f"{peak - kept} B held beyond the records, for a snapshot of {size} B"
