"""Loading desired state from commits of real Git repositories."""

from __future__ import annotations

import os
from pathlib import Path

import git
import pytest

from gitrepos import WorkRepo
from ollama_gitops.reconciler.models import modelfile
from ollama_gitops.reconciler.models.desired import BlobStream, GitLoader, ModelKey, load_directory


def load(work: WorkRepo, commit: str | None = None) -> tuple:
    loader = GitLoader(git.Repo(work.path))
    state = loader.load(commit or work.repo.head.commit.hexsha)
    return state, loader


def test_models_are_keyed_by_namespace_and_resource_name(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.model("team-a", "llama3", "8b-instruct-q4_K_M")
    commit = work_repo.commit()
    state, _ = load(work_repo)
    assert state.commit == commit
    assert list(state.models) == [ModelKey("default", "llama3.2-1b"), ModelKey("team-a", "llama3-8b-instruct-q4-k-m")]
    model = state.models[ModelKey("team-a", "llama3-8b-instruct-q4-k-m")]
    assert (model.reference, model.path) == ("llama3:8b-instruct-q4_K_M", "models/team-a/llama3-8b-instruct-q4-k-m.yaml")
    assert model.blob == work_repo.repo.head.commit.tree[model.path].hexsha
    assert state.problems == () and state.unreadable == frozenset()


def test_yml_suffix_is_accepted(work_repo: WorkRepo) -> None:
    work_repo.write("models/default/gemma3-1b.yml", "name: gemma3\ntag: 1b\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert ModelKey("default", "gemma3-1b") in state.models


def test_reads_git_objects_not_the_work_tree(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    commit = work_repo.commit()
    work_repo.write("models/default/llama3.2-1b.yaml", "broken: [\n")  # uncommitted edit
    work_repo.model("default", "phi3", "mini")  # uncommitted file
    state, _ = load(work_repo, commit)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")] and state.problems == ()


def test_one_broken_file_never_stops_the_others(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/default/gemma3-1b.yaml", "name: gemma3\ntag: [\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    assert state.unreadable == {ModelKey("default", "gemma3-1b")}
    (problem,) = state.problems
    assert problem.path == "models/default/gemma3-1b.yaml" and problem.line == 3
    assert str(problem).startswith("models/default/gemma3-1b.yaml:3: YAML syntax error")


def test_file_name_must_match_the_model(work_repo: WorkRepo) -> None:
    work_repo.write("models/default/llama.yaml", "name: llama3.2\ntag: 1b\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert state.models == {}
    assert state.unreadable == {ModelKey("default", "llama")}
    (problem,) = state.problems
    assert "must be in 'default/llama3.2-1b.yaml'" in problem.message


def test_resource_name_must_be_a_valid_kubernetes_name(work_repo: WorkRepo) -> None:
    work_repo.write("models/default/x.-1.yaml", "name: x.\ntag: '1'\n")
    work_repo.write("models/default/long.yaml", f"name: {'a' * 199}\ntag: {'b' * 60}\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert state.models == {}
    messages = sorted(p.message for p in state.problems)
    assert len(messages) == 2
    assert any("must be at most 253 characters" in m for m in messages)
    assert any("start and end with a letter or digit" in m for m in messages)


def test_invalid_namespace_directory_is_reported(work_repo: WorkRepo) -> None:
    work_repo.write("models/Team_A/llama3.2-1b.yaml", "name: llama3.2\ntag: 1b\n")
    work_repo.commit()
    state, _ = load(work_repo)
    (problem,) = state.problems
    assert state.models == {} and "namespace directory 'Team_A' is not a valid namespace name" in problem.message


def test_two_files_for_one_model_are_both_errors(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/default/llama3.2-1b.yml", "name: llama3.2\ntag: 1b\n")
    work_repo.write("models/default/LLAMA3.2-1B.yaml", "name: LLAMA3.2\ntag: 1B\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert ModelKey("default", "llama3.2-1b") not in state.models
    assert ModelKey("default", "llama3.2-1b") in state.unreadable
    duplicate_paths = sorted(p.path for p in state.problems if "defined more than once" in p.message)
    assert duplicate_paths == ["models/default/llama3.2-1b.yaml", "models/default/llama3.2-1b.yml"]
    # the upper-case file is refused on its own (its stem is not the resource name)
    assert any(p.path == "models/default/LLAMA3.2-1B.yaml" and "file name does not match" in p.message for p in state.problems)


def test_misplaced_files_are_reported_and_others_ignored(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/gemma3-1b.yaml", "name: gemma3\ntag: 1b\n")
    work_repo.write("models/default/nested/phi3-mini.yaml", "name: phi3\ntag: mini\n")
    work_repo.write("models/README.md", "# not a model\n")
    work_repo.write("models/default/.gitkeep", "")
    work_repo.write(".github/workflows/validate.yaml", "on: push\n")
    work_repo.write("README.md", "hello\n")
    work_repo.write("other/x.yaml", "not: a model\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    assert {(p.path, p.message.split(";")[0]) for p in state.problems} == {
        ("models/gemma3-1b.yaml", "model files go in models/<namespace>/"),
        ("models/default/nested/phi3-mini.yaml", "model files go directly in models/<namespace>/"),
    }
    assert state.unreadable == frozenset()


def test_symbolic_links_are_refused(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    os.symlink("llama3.2-1b.yaml", work_repo.path / "models/default/gemma3-1b.yaml")
    work_repo.commit()
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    (problem,) = state.problems
    assert "not symbolic links" in problem.message


def test_repository_without_models_directory_is_empty(work_repo: WorkRepo) -> None:
    work_repo.write("README.md", "empty\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert state.models == {} and state.problems == ()


def test_oversized_blob_is_refused_and_the_next_file_still_reads(work_repo: WorkRepo) -> None:
    work_repo.write("models/default/a-1.yaml", b"name: a\ntag: '1'\n" + b"#" * (2 * 1024 * 1024) + b"\n")
    work_repo.model("default", "b", "1")
    work_repo.commit()
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "b-1")]
    (problem,) = state.problems
    assert f"over the {modelfile.MAX_FILE_BYTES}-byte limit" in problem.message


def test_next_commit_parses_only_changed_files(work_repo: WorkRepo) -> None:
    for i in range(20):
        work_repo.model("default" if i % 2 else "team-b", f"model{i}", "1b")
    first = work_repo.commit()
    loader = GitLoader(git.Repo(work_repo.path))
    assert len(loader.load(first).models) == 20
    assert loader.stats.parsed == 20

    work_repo.model("default", "model1", "1b", extra="suspend: true\n")
    second = work_repo.commit()
    state = loader.load(second)
    assert loader.stats.parsed == 21
    # From the last load by the paths git diff-tree names: no namespace is listed again.
    assert (loader.stats.namespaces_listed, loader.stats.incremental, loader.stats.files_checked) == (2, 1, 1)
    assert state.models[ModelKey("default", "model1-1b")].fields.suspend is True

    third = work_repo.commit("empty")  # same tree
    loader.load(third)
    assert loader.stats.parsed == 21


def test_identical_content_in_two_files_is_parsed_once(work_repo: WorkRepo) -> None:
    work_repo.write("models/a/x-1.yaml", "name: x\ntag: '1'\n")
    work_repo.write("models/b/x-1.yaml", "name: x\ntag: '1'\n")
    work_repo.commit()
    state, loader = load(work_repo)
    assert len(state.models) == 2 and loader.stats.parsed == 1


def test_broken_then_fixed_file(work_repo: WorkRepo) -> None:
    path = work_repo.model("default", "llama3.2", "1b")
    work_repo.commit()
    loader = GitLoader(git.Repo(work_repo.path))
    loader.load("HEAD")
    work_repo.write(path, "name: llama3.2\ntag: 1b\nsuspend: perhaps\n")
    broken = loader.load(work_repo.commit())
    assert broken.models == {} and broken.unreadable == {ModelKey("default", "llama3.2-1b")}
    work_repo.model("default", "llama3.2", "1b")
    fixed = loader.load(work_repo.commit())
    assert list(fixed.models) == [ModelKey("default", "llama3.2-1b")] and fixed.unreadable == frozenset()


def test_problems_are_sorted_and_stable(work_repo: WorkRepo) -> None:
    for name in ("c", "a", "b"):
        work_repo.write(f"models/default/{name}-1.yaml", "name: [\n")
    work_repo.commit()
    state, _ = load(work_repo)
    assert [p.path for p in state.problems] == [f"models/default/{n}-1.yaml" for n in "abc"]


@pytest.mark.parametrize("layout", ["git", "directory"])
def test_directory_and_git_loads_agree(work_repo: WorkRepo, layout: str) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/default/bad-1.yaml", "name: bad\n")
    work_repo.write("models/x.yaml", "name: x\ntag: y\n")
    work_repo.commit()
    state = load(work_repo)[0] if layout == "git" else load_directory(work_repo.path)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    assert [(p.path, p.line) for p in state.problems] == [("models/default/bad-1.yaml", 1), ("models/x.yaml", None)]


def test_in_namespace_orders_by_name(work_repo: WorkRepo) -> None:
    for name in ("zeta", "alpha"):
        work_repo.model("default", name, "1")
    work_repo.model("other", "beta", "1")
    work_repo.commit()
    state, _ = load(work_repo)
    assert [m.key.name for m in state.in_namespace("default")] == ["alpha-1", "zeta-1"]


def test_large_namespace_is_read_in_one_batch_with_the_same_results(work_repo: WorkRepo) -> None:
    for i in range(150):
        work_repo.model("default", f"m{i}", "1")
    work_repo.write("models/default/broken-1.yaml", "name: broken\ntag: [\n")
    work_repo.write("models/default/huge-1.yaml", b"name: huge\ntag: '1'\n" + b"#" * (modelfile.MAX_FILE_BYTES + 10) + b"\n")
    work_repo.commit()
    state, loader = load(work_repo)
    assert len(state.models) == 150 and loader.stats.parsed == 152
    assert [p.path for p in state.problems] == ["models/default/broken-1.yaml", "models/default/huge-1.yaml"]
    assert "-byte limit" in state.problems[1].message


@pytest.mark.parametrize("depth", [200, 500, 900, 1000, 5000, 100000])
def test_deeply_nested_file_is_a_problem_of_that_file_only(work_repo: WorkRepo, depth: int) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/default/deep-1.yaml", "name: deep\ntag: '1'\nlabels: " + "{a: " * depth + "x" + "}" * depth + "\n")
    work_repo.commit()
    for state in (load(work_repo)[0], load_directory(work_repo.path)):
        assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
        assert state.unreadable == {ModelKey("default", "deep-1")}
        (problem,) = state.problems
        assert problem.path == "models/default/deep-1.yaml"
        assert problem.line == (None if "-byte limit" in problem.message else 3)


def _entry_problem(state, path: str):
    (problem,) = [p for p in state.problems if p.path == path]
    return problem


@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_a_model_file_replaced_by_a_special_entry_is_a_problem_and_keeps_its_model(work_repo: WorkRepo, kind: str) -> None:
    work_repo.model("default", "llama3.2", "1b")
    path = work_repo.model("default", "gemma3", "1b")
    work_repo.commit()
    work_repo.special(path, kind, "llama3.2-1b.yaml")
    work_repo.submodule("models/default/vendored")  # not a model file's name: reported all the same
    work_repo.commit("replace")
    assert work_repo.mode_of(path) == ("160000" if kind == "submodule" else "120000")
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    assert state.unreadable == {ModelKey("default", "gemma3-1b")}
    assert state.is_unreadable(ModelKey("default", "gemma3-1b"))
    assert ("not Git submodules" if kind == "submodule" else "not symbolic links") in _entry_problem(state, path).message
    assert "Git submodule" in _entry_problem(state, "models/default/vendored").message


@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_a_namespace_folder_replaced_by_a_special_entry_keeps_every_model_of_it(work_repo: WorkRepo, kind: str) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.model("team-a", "gemma3", "1b")
    work_repo.commit()
    work_repo.special("models/default", kind, "team-a")
    work_repo.commit("replace the namespace")
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("team-a", "gemma3-1b")]
    assert state.unreadable_namespaces == {"default"} and not state.all_unreadable
    assert state.is_unreadable(ModelKey("default", "llama3.2-1b")) and state.is_unreadable(ModelKey("default", "any-1"))
    assert not state.is_unreadable(ModelKey("team-a", "other-1"))
    problem = _entry_problem(state, "models/default")
    assert ("a Git submodule" if kind == "submodule" else "a symbolic link") in problem.message
    assert "namespace 'default' keep their last good version" in problem.message
    assert state.problem_of(ModelKey("default", "llama3.2-1b"), "models/default/llama3.2-1b.yaml") == problem


@pytest.mark.parametrize("kind", ["submodule", "symlink"])
def test_models_folder_replaced_by_a_special_entry_keeps_every_model(work_repo: WorkRepo, kind: str) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.commit()
    work_repo.write("elsewhere/default/llama3.2-1b.yaml", "name: llama3.2\ntag: 1b\n")
    work_repo.special("models", kind, "elsewhere")
    work_repo.commit("replace models/")
    state, _ = load(work_repo)
    assert state.models == {} and state.all_unreadable
    assert state.is_unreadable(ModelKey("default", "llama3.2-1b")) and state.is_unreadable(ModelKey("x", "y"))
    assert "every model keeps its last good version" in _entry_problem(state, "models").message


def test_special_entries_deeper_in_a_namespace_are_reported(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.write("models/default/sub/readme.txt", "x\n")
    work_repo.commit()
    work_repo.submodule("models/default/sub/phi3-mini.yaml")
    work_repo.symlink("models/default/sub/link", "../llama3.2-1b.yaml")
    work_repo.commit("deeper")
    state, _ = load(work_repo)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")] and state.unreadable == frozenset()
    assert "Git submodule" in _entry_problem(state, "models/default/sub/phi3-mini.yaml").message
    assert "symbolic link" in _entry_problem(state, "models/default/sub/link").message


def test_a_checkout_with_symlinks_and_submodules_is_reported_by_load_directory(work_repo: WorkRepo) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.model("team-a", "gemma3", "1b")
    work_repo.commit()
    work_repo.symlink("models/team-a", "default")
    (work_repo.path / "models/vendor").mkdir()
    (work_repo.path / "models/vendor/.git").write_text("gitdir: ../../.git/modules/vendor\n")  # a checked-out submodule
    os.symlink("llama3.2-1b.yaml", work_repo.path / "models/default/notes")
    state = load_directory(work_repo.path)
    assert list(state.models) == [ModelKey("default", "llama3.2-1b")]
    assert state.unreadable_namespaces == {"team-a", "vendor"}
    assert "a symbolic link" in _entry_problem(state, "models/team-a").message
    assert "a Git submodule" in _entry_problem(state, "models/vendor").message
    assert "a symbolic link" in _entry_problem(state, "models/default/notes").message
    os.rename(work_repo.path / "models", work_repo.path / "real-models")
    os.symlink("real-models", work_repo.path / "models")
    state = load_directory(work_repo.path)
    assert state.all_unreadable and "every model keeps its last good version" in _entry_problem(state, "models").message


def _edits(work: WorkRepo, parent: str, commit: str) -> dict[str, str | None]:
    """What a write reports: the files it changed, by path, with their new blob (None: removed)."""
    tree = work.repo.commit(commit).tree
    changes = {}
    for diff in work.repo.commit(parent).diff(commit):
        path = diff.b_path if diff.b_blob else diff.a_path
        changes[path] = tree[path].hexsha if diff.b_blob else None
    return changes


@pytest.mark.parametrize("step", ["create", "refresh", "delete", "broken", "fix broken", "delete broken",
                                  "duplicate", "new namespace", "last of a namespace", "misplaced"])
def test_a_load_from_a_writes_edits_equals_a_full_load(work_repo: WorkRepo, step: str) -> None:
    work_repo.model("default", "llama3.2", "1b")
    work_repo.model("default", "phi3", "mini")
    work_repo.model("team-a", "gemma3", "1b")
    work_repo.write("models/default/qwen2.5-0.5b.yaml", "name: qwen2.5\ntag: [\n")  # broken from the start
    work_repo.write("models/misplaced.yaml", "name: x\ntag: y\n")
    parent = work_repo.commit("seed")
    edit = {
        "create": lambda: work_repo.model("default", "aaa", "1b"),
        "refresh": lambda: work_repo.model("default", "phi3", "mini", 'refreshRequestedAt: "2026-11-25T14:00:00Z"\n'),
        "delete": lambda: work_repo.remove("models/default/phi3-mini.yaml"),
        "broken": lambda: work_repo.write("models/default/llama3.2-1b.yaml", "name: llama3.2\n"),
        "fix broken": lambda: work_repo.write("models/default/qwen2.5-0.5b.yaml", "name: qwen2.5\ntag: 0.5b\n"),
        "delete broken": lambda: work_repo.remove("models/default/qwen2.5-0.5b.yaml"),
        "duplicate": lambda: work_repo.write("models/default/phi3-mini.yml", "name: phi3\ntag: mini\n"),
        "new namespace": lambda: work_repo.model("team-b", "mistral", "7b"),
        "last of a namespace": lambda: work_repo.remove("models/team-a/gemma3-1b.yaml"),
        "misplaced": lambda: work_repo.write("models/misplaced.yaml", "name: z\ntag: y\n"),
    }[step]
    edit()
    commit = work_repo.commit(step)
    loader = GitLoader(git.Repo(work_repo.path))
    loader.load(parent)
    before = (loader.stats.parsed, loader.stats.namespaces_listed)
    edited = loader.load_edited(commit, parent, _edits(work_repo, parent, commit))
    full, _ = load(work_repo, commit)
    assert edited == full and list(edited.models) == list(full.models) == sorted(full.models)
    if step in ("create", "refresh", "delete", "broken", "fix broken", "delete broken"):
        # Only the written file is read again; no namespace is listed.
        assert (loader.stats.parsed - before[0], loader.stats.namespaces_listed - before[1]) == (
            0 if step.startswith("delete") else 1, 0)
    again = loader.load(commit)  # and the caches it left serve the next full load as well
    assert again == full and loader.stats.namespaces_listed - before[1] <= 1


def test_a_shared_loader_reads_a_commit_from_the_clone_it_was_fetched_into(work_repo: WorkRepo, tmp_path: Path) -> None:
    """serve's one loader over two clones: the reconciler's may hold a commit it is still fetching
    (a small fetch unpacks the commit before its trees), so a load reads from the clone the caller
    fetched the commit into, not from the first clone that has the commit object (which failed: the
    namespace's tree was 'missing')."""
    import subprocess
    from dataclasses import dataclass

    from ollama_gitops.reconciler.models.desired import SharedLoader

    work_repo.model("default", "llama3.2", "1b")
    commit = work_repo.commit("one model")
    fetching = git.Repo.init(tmp_path / "fetching.git", bare=True)
    raw = subprocess.run(["git", "-C", str(work_repo.path), "cat-file", "commit", commit], capture_output=True,
                         check=True).stdout
    written = subprocess.run(["git", "--git-dir", fetching.git_dir, "hash-object", "-t", "commit", "-w", "--stdin"],
                             input=raw, capture_output=True, check=True).stdout.decode().strip()
    assert written == commit  # the commit object alone: its trees have not arrived

    @dataclass
    class Clone:
        repo: git.Repo
        generation: int = 0

    complete = Clone(git.Repo(work_repo.path))
    assert list(SharedLoader(Clone(fetching), complete).load(commit, source=complete).models) == [
        ModelKey("default", "llama3.2-1b")]
    with pytest.raises(ValueError, match="missing"):  # without saying where it came from: the first clone
        SharedLoader(Clone(fetching), complete).load(commit)


def test_a_blob_stream_hands_out_blobs_in_any_order_and_ends_git_when_closed(work_repo: WorkRepo) -> None:
    for i in range(3):
        work_repo.model("default", f"m{i}", "1b")
    work_repo.commit()
    tree = work_repo.repo.head.commit.tree
    shas = [tree[f"models/default/m{i}-1b.yaml"].hexsha for i in range(3)]
    missing = "0" * 39 + "1"
    stream = BlobStream(work_repo.repo.git_dir, [shas[0], missing, shas[1], shas[0], shas[2]])
    try:
        assert stream.take(shas[2]) == b"name: m2\ntag: \"1b\"\n"  # read past the others, kept for later
        assert stream.take(missing) is None
        assert stream.take(shas[0]) == b"name: m0\ntag: \"1b\"\n"
    finally:
        stream.close()
    assert stream._process.returncode is not None  # ended, with shas[1] never taken
    with BlobStream(work_repo.repo.git_dir, shas) as stream:
        assert [stream.take(sha) for sha in shas] == [f"name: m{i}\ntag: \"1b\"\n".encode() for i in range(3)]


def test_a_load_keeps_one_object_a_valid_file_and_no_parse_beside_its_model(work_repo: WorkRepo) -> None:
    for i in range(70):  # over the batch threshold: read through the blob stream
        work_repo.model("default" if i % 2 else "other", f"m{i}", "1b")
    work_repo.write("models/default/broken-1.yaml", "name: [\n")
    work_repo.commit()
    state, loader = load(work_repo)
    assert loader._parsed == {}  # the fields live in the models alone
    namespaces = {name: namespace for (name, _), namespace in loader._namespaces.items()}
    for model in state.models.values():  # a valid file's result is its model: no wrapper, no index by path
        assert namespaces[model.key.namespace].result(model.path) is model
    assert [list(n.others) for n in namespaces.values()] == [["models/default/broken-1.yaml"], []]
    assert type(namespaces["default"].result("models/default/broken-1.yaml")).__name__ == "_FileResult"
    work_repo.model("default", "m1", "1b", extra="suspend: true\n")
    state = loader.load(work_repo.commit())  # an incremental load keeps nothing parsed either
    assert loader.stats.incremental == 1 and loader._parsed == {}
    assert state.models[ModelKey("default", "m1-1b")].fields.suspend is True
