"""A one-change cycle costs what changed (issue 16 item 1): the load goes from the last commit by the
paths that changed, and the plan, the records and the state store touch only those models. Work is
counted, never timed."""

from __future__ import annotations

import git
import pytest

from gitrepos import WorkRepo
from ollama_gitops.reconciler.models.desired import GitLoader, ModelKey, changed_between
from ollama_gitops.reconciler.plan import Delete, MarkReady, Skip
from rig import Rig

SEED = {"llama3.2": "1b", "phi3": "mini"}


def _seed(work: WorkRepo) -> None:
    work.model("default", "llama3.2", "1b")
    work.model("default", "phi3", "mini")
    work.model("team-a", "gemma3", "1b", extra="servers: {matchLabels: {gpu: \"yes\"}}\n")
    work.write("models/default/qwen2.5-0.5b.yaml", "name: qwen2.5\ntag: [\n")  # broken from the start
    work.write("models/default/README.md", "notes\n")
    work.write("models/misplaced.yaml", "name: x\ntag: y\n")


# (what the commit does, whether the load is incremental: False is the full load's fallback)
STEPS = {
    "add": (lambda w: w.model("default", "aaa", "1b"), True),
    "edit": (lambda w: w.model("default", "phi3", "mini", "prune: false\n"), True),
    "remove": (lambda w: w.remove("models/default/phi3-mini.yaml"), True),
    "rename to .yml": (lambda w: (w.remove("models/default/phi3-mini.yaml"),
                                  w.write("models/default/phi3-mini.yml", "name: phi3\ntag: mini\n")), True),
    "move to another namespace": (lambda w: (w.remove("models/default/phi3-mini.yaml"),
                                             w.model("team-a", "phi3", "mini")), True),
    "break": (lambda w: w.write("models/default/llama3.2-1b.yaml", "name: llama3.2\n"), True),
    "fix broken": (lambda w: w.write("models/default/qwen2.5-0.5b.yaml", "name: qwen2.5\ntag: 0.5b\n"), True),
    "remove broken": (lambda w: w.remove("models/default/qwen2.5-0.5b.yaml"), True),
    "selector added": (lambda w: w.model("default", "llama3.2", "1b", "servers: {matchLabels: {gpu: \"no\"}}\n"), True),
    "wrong name": (lambda w: w.write("models/default/llama3.2-1b.yaml", "name: llama3.2\ntag: 3b\n"), True),
    "a README changes": (lambda w: w.write("models/default/README.md", "more notes\n"), True),
    "nothing under models/": (lambda w: w.write("README.md", "top\n"), True),
    "duplicate": (lambda w: w.write("models/default/phi3-mini.yml", "name: phi3\ntag: mini\n"), False),
    "new namespace": (lambda w: w.model("team-b", "mistral", "7b"), False),
    "last of a namespace": (lambda w: w.remove("models/team-a/gemma3-1b.yaml"), False),
    "misplaced": (lambda w: w.write("models/misplaced.yaml", "name: z\ntag: y\n"), False),
    "too deep": (lambda w: w.model("default/sub", "deep", "1"), False),
    "a link in a file's place": (lambda w: w.symlink("models/default/phi3-mini.yaml", "llama3.2-1b.yaml"), False),
    "a submodule for a namespace": (lambda w: w.submodule("models/team-c"), False),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_load_from_the_last_commit_equals_a_full_load(work_repo: WorkRepo, step: str) -> None:
    _seed(work_repo)
    parent = work_repo.commit("seed")
    change, incremental = STEPS[step]
    change(work_repo)
    commit = work_repo.commit(step)
    loader = GitLoader(git.Repo(work_repo.path))
    previous = loader.load(parent)
    before = (loader.stats.parsed, loader.stats.namespaces_listed, loader.stats.incremental)
    state = loader.load(commit)
    full = GitLoader(git.Repo(work_repo.path)).load(commit)
    assert state == full and list(state.models) == list(full.models) == sorted(full.models)
    assert state.with_selectors() == full.with_selectors()
    assert (loader.stats.incremental - before[2] == 1) is incremental
    if incremental:
        # Only the changed files are read; no namespace is listed; the load says which models changed.
        assert loader.stats.namespaces_listed == before[1] and loader.stats.parsed - before[0] <= 2
        assert state.changes is not None and state.changes.base == parent
        assert changed_between(previous, state) <= state.changes.keys
    # and the caches it left serve the loads after it, both ways
    assert loader.load(parent) == previous and loader.load(commit) == full


def test_many_loads_in_a_row_stay_equal_to_full_loads(work_repo: WorkRepo) -> None:
    """The models' mapping carries each load's changes on top of an older one and folds them in
    when they grow: every step of a long run still equals a full load, in order."""
    for i in range(70):
        work_repo.model("default", f"m{i:02d}", "1")
    loader = GitLoader(git.Repo(work_repo.path))
    loader.load(work_repo.commit("seed"))
    for i in range(80):  # more changes than the 64 kept on top before they are folded in
        if i % 3 == 0:
            work_repo.model("default", f"new{i:02d}", "1")
        elif i % 3 == 1:
            work_repo.model("default", f"m{i % 70:02d}", "1", f"labels: {{rev: \"{i}\"}}\n")
        else:
            work_repo.remove(f"models/default/m{i % 70:02d}-1.yaml")
        commit = work_repo.commit(f"step {i}")
        state = loader.load(commit)
        full = GitLoader(git.Repo(work_repo.path)).load(commit)
        assert state == full and list(state.models) == list(full.models), i
        assert len(state.models) == len(full.models) and all(k in state.models for k in full.models)
    assert loader.stats.incremental == 80


def _pushed_models(rig: Rig, count: int) -> list[ModelKey]:
    for i in range(count):
        rig.work.model("default", f"model{i}", "1b")
        rig.ollama.add_to_catalogue(f"model{i}:1b", 1000 + i)
        rig.ollama.install(f"model{i}:1b", 1000 + i)
    rig.push("seed")
    return [ModelKey("default", f"model{i}-1b") for i in range(count)]


def test_a_one_change_cycle_parses_copies_and_plans_only_the_change(rig: Rig) -> None:
    keys = _pushed_models(rig, 120)
    reconciler = rig.start()
    assert rig.cycle().full
    store = reconciler.store
    for round_ in range(2):  # the first change cycle after the full one, and one after that
        rig.work.model("default", "model7", "1b", f"labels: {{rev: \"{round_}\"}}\n")
        rig.push(f"rev {round_}")
        loader = reconciler._loader
        assert loader is not None
        loads = (loader.stats.parsed, loader.stats.namespaces_listed, loader.stats.incremental)
        copied, fsyncs, requests = store.stats.copied, store.stats.fsyncs, len(rig.ollama.requests)
        report = rig.cycle()
        assert report.ok and not report.full and not report.noop, report.message
        # one file parsed, no namespace listed, from the last load
        assert (loader.stats.parsed - loads[0], loader.stats.namespaces_listed - loads[1],
                loader.stats.incremental - loads[2]) == (1, 0, 1)
        # the plan's scope is the changed model; its record is the only one copied; nothing to
        # write (the spec is unchanged), so no fsync at all; Ollama is not asked anything
        assert set(report.plans["default"].specs) == {keys[7]}
        assert store.stats.copied - copied <= 1
        assert store.stats.fsyncs - fsyncs == 0
        assert len(rig.ollama.requests) == requests


def test_a_change_cycle_writes_one_fsync(rig: Rig) -> None:
    _pushed_models(rig, 5)
    reconciler = rig.start()
    assert rig.cycle().full
    rig.work.model("default", "model2", "1b", "prune: false\n")  # the recorded spec changes
    rig.push("prune false")
    fsyncs = reconciler.store.stats.fsyncs
    report = rig.cycle()
    assert report.ok and not report.full
    assert reconciler.store.stats.fsyncs - fsyncs == 1  # the journal's; sync.json is a summary
    assert rig.record("default", "model2-1b").spec.prune is False


def test_incremental_cycles_plan_what_a_full_plan_would_change(rig: Rig) -> None:
    """Each step's cycle (incremental) does exactly what a full plan of the same commit, made just
    before on the same state (a dry run plans everything), would change."""
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "gemma3", "1b")
    rig.work.model("team-a", "phi3", "mini")
    rig.push("seed")
    rig.start()
    assert rig.cycle().ok
    steps = [
        lambda w: w.model("default", "qwen2.5", "0.5b"),  # a pull
        lambda w: w.remove("models/default/gemma3-1b.yaml"),  # a delete (ollama-gitops pulled it)
        lambda w: w.write("models/team-a/phi3-mini.yaml", "name: phi3\n"),  # broken: an error, kept
        lambda w: w.model("team-a", "phi3", "mini", "suspend: true\n"),  # fixed, suspended
        lambda w: (w.remove("models/default/llama3.2-1b.yaml"), w.model("team-a", "llama3.2", "1b")),  # moved
        lambda w: w.model("team-b", "mistral", "7b"),  # a new namespace (a full load)
        lambda w: w.write("models/team-b/mistral-7b.yml", "name: mistral\ntag: 7b\n"),  # a duplicate
    ]
    for number, step in enumerate(steps):
        step(rig.work)
        rig.push(f"step {number}")
        full = rig.cycle(dry_run=True)
        assert full.full and full.ok, full.message
        report = rig.cycle()
        assert report.ok and not report.full, (number, report.message)
        assert _changes(report) == _changes(full), number
        assert _changes(report), number  # every step has something to do


def _changes(report) -> list:  # type: ignore[no-untyped-def]
    # A pull's stream does not give the manifest's digest: the next listing records it (a resync's
    # work, not a change's), so a full plan's digest-filling MarkReady is left out of the comparison.
    return sorted(map(repr, (a for a in report.plan.actions if not isinstance(a, Skip) and not (
        isinstance(a, MarkReady) and a.reason == "its digest, from the listing"))))


def test_a_write_that_removes_one_of_two_duplicates_keeps_the_model_the_other_defines(work_repo: WorkRepo) -> None:
    """`load_edited` (the API's write path) on the file of a duplicate: the model is the other
    file's again, as a full load says (it was dropped until the next full load)."""
    work_repo.model("default", "phi3", "mini")
    work_repo.write("models/default/phi3-mini.yml", "name: phi3\ntag: mini\n")
    parent = work_repo.commit("a duplicate")
    work_repo.remove("models/default/phi3-mini.yml")
    commit = work_repo.commit("undone")
    loader = GitLoader(git.Repo(work_repo.path))
    assert ModelKey("default", "phi3-mini") in loader.load(parent).unreadable
    edited = loader.load_edited(commit, parent, {"models/default/phi3-mini.yml": None})
    assert edited == GitLoader(git.Repo(work_repo.path)).load(commit)
    assert list(edited.models) == [ModelKey("default", "phi3-mini")] and not edited.unreadable


def test_a_cycle_that_deletes_several_models_writes_one_fsync(rig: Rig) -> None:
    _pushed_models(rig, 4)
    rig.work.model("default", "gemma3", "1b")
    rig.work.model("default", "phi3", "mini")
    rig.push("two to pull")
    reconciler = rig.start()
    assert rig.cycle().ok and {"gemma3:1b", "phi3:mini"} <= set(rig.ollama.installed())  # pulled: owned
    rig.work.remove("models/default/gemma3-1b.yaml")
    rig.work.remove("models/default/phi3-mini.yaml")
    rig.push("remove both")
    fsyncs = reconciler.store.stats.fsyncs
    report = rig.cycle()
    assert report.ok and len(report.plan.of(Delete)) == 2, report.message
    assert reconciler.store.stats.fsyncs - fsyncs == 1  # both deletes' outcomes in one journal append
    assert not {"gemma3:1b", "phi3:mini"} & set(rig.ollama.installed())
    assert rig.record("default", "gemma3-1b") is None and rig.record("default", "phi3-mini") is None
