"""A reconciler restarted on its state holds what a cold start holds: after its first full cycle, each
record is made of the very strings (and sizes) of the kept Ollama listing and the loaded model files,
not of its own read from the snapshot beside them. Nothing is written for it: the records' files are
as they were, and every record is equal to what it was."""

from __future__ import annotations

import pytest

from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.models.naming import normalize_reference
from ollama_gitops.reconciler.state import JOURNAL, READY, SNAPSHOT
from rig import CATALOGUE, Rig

MODELS = [("llama3.2", "1b"), ("gemma3", "1b"), ("phi3", "mini"), ("qwen2.5", "0.5b")]


def _key(name: str, tag: str) -> ModelKey:
    return ModelKey("default", f"{name}-{tag}")


def _assert_shared(rig: Rig, keys: bool = True) -> None:
    reconciler = rig.reconciler
    assert reconciler is not None and reconciler.desired is not None
    listing = reconciler.fleet.observed("default")
    assert listing is not None
    for name, tag in MODELS:
        key = _key(name, tag)
        record = reconciler.store.record(key)
        assert record is not None
        status, entry = record.servers["default"], listing[normalize_reference(f"{name}:{tag}")]
        assert status.state == READY and status.digest == entry.digest and status.size == entry.size
        assert record.spec.reference is entry.reference, key
        assert status.digest is entry.digest and status.size is entry.size, key
        assert record.spec.path is reconciler.desired.models[key].path, key
        if keys:  # the store's key is the loaded model's too
            assert next(k for k in reconciler.store.records() if k == key) is reconciler.desired.models[key].key


def _cold_start(rig: Rig) -> dict[ModelKey, object]:
    """MODELS in Git and in Ollama, a cold start's cycle, its records in a snapshot (as a cold start of
    1,000 models or more leaves them) and the summary saved over it, as a cycle leaves them; the records."""
    for name, tag in MODELS:
        rig.ollama.install(f"{name}:{tag}")
        rig.work.model("default", name, tag)
    rig.push()
    rig.start()
    assert rig.cycle().ok
    _assert_shared(rig)  # a cold start's records are made from them
    records = dict(rig.reconciler.store.records())  # type: ignore[union-attr]
    rig.reconciler.store._compact()  # type: ignore[union-attr]
    assert rig.cycle().noop
    return records  # type: ignore[return-value]


@pytest.mark.parametrize("lazy", [True, False], ids=["records-read-in-the-cycle", "records-read-at-start"])
def test_a_restart_s_first_full_cycle_leaves_records_made_of_the_listing_s_and_the_files_strings(
        rig: Rig, lazy: bool) -> None:
    """Read in the first cycle (as `serve` and `reconcile --once` read them), once the commit is
    loaded and the server listed, the records are made of their strings as they are read; read
    before (a store read at start, or by the API meanwhile), the listing takes the records' and the
    records the plan's specs (their keys stay their own)."""
    before = _cold_start(rig)

    rig.start(lazy=lazy)  # a new process on the same state directory
    assert rig.cycle().noop  # nothing to do: the recorded state says so
    files = {name: (rig.state_dir / name).read_bytes() for name in (SNAPSHOT, JOURNAL)}
    rig.ollama.install("mistral:7b")
    rig.work.model("default", "mistral", "7b")
    rig.push("one more")
    report = rig.cycle()  # the process's first full cycle
    assert report.ok and report.everything
    _assert_shared(rig, keys=lazy)
    store = rig.reconciler.store  # type: ignore[union-attr]
    assert {key: store.record(key) for key in before} == before  # equal, as they were
    # Only the new model was written: its journal line follows what was there, unchanged.
    assert (rig.state_dir / SNAPSHOT).read_bytes() == files[SNAPSHOT]
    journal = (rig.state_dir / JOURNAL).read_bytes()
    assert journal.startswith(files[JOURNAL])
    added = journal[len(files[JOURNAL]):].decode().splitlines()
    assert len(added) == 1 and '"mistral-7b"' in added[0]
    assert store.record(_key("mistral", "7b")).servers["default"].size == CATALOGUE["mistral:7b"]  # type: ignore[union-attr]


def test_registering_the_models_metrics_reads_no_record_and_a_scrape_counts_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`serve` registers its models' metrics at start: reading the records there would read them
    before the commit is loaded and the servers listed, so that none shares their strings."""
    from prometheus_client import CollectorRegistry

    from ollama_gitops.reconciler.metrics import ModelsByState
    from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus, StateStore

    writer = StateStore(tmp_path)
    writer.acquire_process_lock()
    with writer.editing() as edit:
        for i in range(3):
            edit.put(ModelKey("default", f"m{i}-1"), ModelRecord(AppliedSpec(f"m{i}:1", f"models/default/m{i}-1.yaml"),
                                                                 {"default": ModelStatus(READY)}))
    writer.release_process_lock()
    store = StateStore(tmp_path, lazy=True)
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client.REGISTRY, where serve registers it
    registry.register(ModelsByState(store.records, store.tally))
    assert not store.loaded
    assert registry.get_sample_value("ollama_gitops_models", {"state": READY}) == 3
    assert registry.get_sample_value("ollama_gitops_server_models", {"server": "default", "state": READY}) == 3
    assert store.loaded


def test_records_read_before_the_first_cycle_by_the_api_share_the_key_and_path_its_loader_loaded(rig: Rig) -> None:
    """`serve`: a GET after a write reads the records before the first cycle has loaded the commit
    or listed the server. They take the key and path of the state the loader shared with the API
    loaded last (for the write); the listing, decoded after, takes their reference, digest and size."""
    from ollama_gitops.reconciler.models.desired import SharedLoader

    _cold_start(rig)
    reconciler = rig.start(lazy=True)
    reconciler.shared_loader = SharedLoader(reconciler.repo)
    assert rig.cycle().noop
    rig.ollama.install("mistral:7b")
    rig.work.model("default", "mistral", "7b")
    commit = rig.push("one more")
    assert reconciler.repo.fetch() == commit
    loaded = reconciler.shared_loader.load(commit, source=reconciler.repo)  # the API's write loads it
    assert not reconciler.store.loaded
    assert reconciler.store.record(_key(*MODELS[0])) is not None  # the API's GET reads the records
    assert rig.cycle().everything
    assert reconciler.desired is loaded
    _assert_shared(rig)


def test_a_first_listing_after_the_records_are_read_never_holds_a_copy_of_their_strings(rig: Rig) -> None:
    """Each entry takes the record's strings as it is decoded: what the listing holds at its peak
    is about what it keeps (an entry and its time each), not a decoded listing beside a shared one."""
    import gc
    import tracemalloc

    from ollama_gitops.reconciler.ollama.server import OllamaServer
    from ollama_gitops.reconciler.state import AppliedSpec, ModelRecord, ModelStatus

    count = 6000
    for i in range(count):
        rig.ollama.install(f"model{i}:1b", 10**9 + i)
    listed = OllamaServer(rig.ollama.url, timeout=30).installed()
    reconciler = rig.start()
    with reconciler.store.editing() as edit:
        for reference, entry in listed.items():
            name = reference.replace(":", "-")
            edit.put(ModelKey("default", name), ModelRecord(
                AppliedSpec("".join(entry.reference), f"models/default/{name}.yaml"),
                {"default": ModelStatus(READY, size=int(str(entry.size)), digest="".join(entry.digest))}))
    del listed
    reconciler.fleet.refresh()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        reconciler.fleet.list_servers({"default"})
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    observed = reconciler.fleet.observed("default")
    assert observed is not None and len(observed) == count
    record = reconciler.store.record(ModelKey("default", "model7-1b"))
    assert observed["model7:1b"].digest is record.servers["default"].digest  # type: ignore[union-attr]
    # Measured: 108 B kept and 191 B at the peak an entry (6,000 entries); 421 B at the peak when the
    # listing was decoded whole and then made to share, about 350 B kept with no sharing at all.
    assert (kept - before) / count < 200, f"{(kept - before) / count:.0f} B kept an entry"
    assert (peak - before) / count < 300, f"{(peak - before) / count:.0f} B an entry at the listing's peak"
