"""Writing model files: commits pushed to a real bare remote, conflicts, races and batching."""

from __future__ import annotations

import subprocess
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import git
import pytest

from gitrepos import WorkRepo
from ollama_gitops.reconciler.models import modelfile
from ollama_gitops.reconciler.git.repo import GitRepo
from ollama_gitops.reconciler.models.modelfile import ModelFields
from ollama_gitops.reconciler.git.writer import (_Splice, CreateModel, DeleteModel, ModelWriter, RefreshModel,
                                                 WriteRejected, bump_refresh, parse_author)

AUTHOR = git.Actor("API Bot", "api@example.com")


@pytest.fixture
def seeded(remote: Path, tmp_path: Path) -> WorkRepo:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.write("models/default/llama3.2-1b.yaml", "# keep this comment\nname: llama3.2\ntag: 1b\n")
    work.commit("seed")
    work.push()
    return work


@pytest.fixture
def writer(remote: Path, tmp_path: Path, seeded: WorkRepo):
    instance = ModelWriter(GitRepo(str(remote), "main", tmp_path / "writer.git"), AUTHOR)
    yield instance
    instance.close()


def remote_files(remote: Path) -> dict[str, str]:
    repo = git.Repo(remote)
    return {b.path: b.data_stream.read().decode() for b in repo.commit("main").tree.traverse() if b.type == "blob"}


def test_create_commits_and_pushes_a_rendered_file(writer: ModelWriter, remote: Path) -> None:
    written = writer.write(CreateModel("default", ModelFields("phi3", "mini")))
    head = git.Repo(remote).commit("main")
    assert written.commit == head.hexsha and written.path == "models/default/phi3-mini.yaml"
    assert head.message == "Add model phi3:mini\n"
    assert (head.author.name, head.author.email) == ("API Bot", "api@example.com")
    content = remote_files(remote)["models/default/phi3-mini.yaml"]
    assert modelfile.parse(content.encode()) == ModelFields("phi3", "mini")
    assert content.startswith("# yaml-language-server: $schema=")


def test_create_of_an_existing_model_is_a_conflict(writer: ModelWriter, remote: Path) -> None:
    before = git.Repo(remote).commit("main").hexsha
    with pytest.raises(WriteRejected) as rejected:
        writer.write(CreateModel("default", ModelFields("llama3.2", "1b")))
    assert (rejected.value.status, rejected.value.message) == (409, "model already exists: llama3.2-1b")
    assert git.Repo(remote).commit("main").hexsha == before


def test_delete_removes_the_file_and_unknown_is_404(writer: ModelWriter, remote: Path) -> None:
    written = writer.write(DeleteModel("default", "llama3.2-1b"))
    assert "models/default/llama3.2-1b.yaml" not in remote_files(remote)
    assert git.Repo(remote).commit("main").message == "Delete model llama3.2:1b\n"
    assert written.fields == ModelFields("llama3.2", "1b")
    with pytest.raises(WriteRejected) as rejected:
        writer.write(DeleteModel("default", "llama3.2-1b"))
    assert (rejected.value.status, rejected.value.message) == (404, "model not found: llama3.2-1b")


def test_refresh_bumps_the_field_and_keeps_the_rest_as_written(writer: ModelWriter, remote: Path) -> None:
    writer.write(RefreshModel("default", "llama3.2-1b", "2026-11-25T14:00:00Z"))
    content = remote_files(remote)["models/default/llama3.2-1b.yaml"]
    assert content == '# keep this comment\nname: llama3.2\ntag: 1b\nrefreshRequestedAt: "2026-11-25T14:00:00Z"\n'
    writer.write(RefreshModel("default", "llama3.2-1b", "2026-11-26T09:30:00Z"))
    content = remote_files(remote)["models/default/llama3.2-1b.yaml"]
    assert content.count("refreshRequestedAt") == 1 and '"2026-11-26T09:30:00Z"' in content


def test_refresh_of_a_broken_file_is_refused(writer: ModelWriter, seeded: WorkRepo) -> None:
    seeded.write("models/default/gemma3-1b.yaml", "name: gemma3\ntag: [\n")
    seeded.commit("broken")
    seeded.push()
    writer.repo.fetch()
    with pytest.raises(WriteRejected) as rejected:
        writer.write(RefreshModel("default", "gemma3-1b", "2026-11-25T14:00:00Z"))
    assert rejected.value.status == 409 and "is invalid; fix it before refreshing" in rejected.value.message


def test_a_rejected_push_is_fetched_reapplied_and_rechecked(writer: ModelWriter, seeded: WorkRepo, remote: Path) -> None:
    writer.write(CreateModel("default", ModelFields("phi3", "mini")))  # the writer's clone now knows a head
    seeded.repo.git.pull("-q", "origin", "main")
    seeded.model("default", "gemma3", "1b")  # a pull request merged behind the writer's back
    seeded.model("default", "qwen2.5", "0.5b")
    seeded.commit("merge PR")
    seeded.push()
    written = writer.write(CreateModel("default", ModelFields("mistral", "7b")))
    files = remote_files(remote)
    assert {"models/default/gemma3-1b.yaml", "models/default/mistral-7b.yaml", "models/default/phi3-mini.yaml"} <= set(files)
    assert git.Repo(remote).commit("main").hexsha == written.commit
    with pytest.raises(WriteRejected) as rejected:  # created meanwhile by the merge: now a conflict
        writer.write(CreateModel("default", ModelFields("qwen2.5", "0.5b")))
    assert rejected.value.status == 409


def test_remote_down_is_503_and_changes_nothing(writer: ModelWriter, remote: Path) -> None:
    moved = remote.with_name("moved.git")
    writer.repo.fetch()
    remote.rename(moved)
    with pytest.raises(WriteRejected) as rejected:
        writer.write(CreateModel("default", ModelFields("phi3", "mini")))
    assert rejected.value.status == 503 and "not available" in rejected.value.message
    moved.rename(remote)
    assert "models/default/phi3-mini.yaml" not in remote_files(remote)


def remote_branches(remote: Path) -> list[str]:
    return git.Repo(remote).git.for_each_ref("--format=%(refname)", "refs/heads").split()


@pytest.mark.parametrize("fetched", [True, False])
def test_a_branch_deleted_from_the_remote_is_never_recreated(remote: Path, tmp_path: Path, seeded: WorkRepo,
                                                             fetched: bool) -> None:
    writer = ModelWriter(GitRepo(str(remote), "main", tmp_path / "writer.git"), AUTHOR)
    try:
        if fetched:
            writer.write(CreateModel("default", ModelFields("phi3", "mini")))  # the writer knows a head
        # As GitHub does: a push from a shallow clone (as the writer's is) is accepted.
        git.Repo(remote).git.config("receive.shallowUpdate", "true")
        git.Repo(remote).git.update_ref("-d", "refs/heads/main")
        with pytest.raises(WriteRejected) as rejected:
            writer.write(CreateModel("default", ModelFields("gemma3", "1b")))
    finally:
        writer.close()
    assert rejected.value.status == 503
    assert "branch 'main' is not in the remote repository" in rejected.value.message
    assert remote_branches(remote) == []


def test_a_pushed_write_is_acknowledged_whatever_fails_after_the_push(remote: Path, tmp_path: Path,
                                                                    seeded: WorkRepo) -> None:
    def failing(commit: str) -> None:
        raise RuntimeError("after the push")

    writer = ModelWriter(GitRepo(str(remote), "main", tmp_path / "writer.git"), AUTHOR, on_written=failing)
    try:
        written = writer.write(CreateModel("default", ModelFields("phi3", "mini")))
    finally:
        writer.close()
    assert written.commit == git.Repo(remote).commit("main").hexsha
    assert "models/default/phi3-mini.yaml" in remote_files(remote)


def test_concurrent_writers_and_a_racing_clone_lose_nothing(writer: ModelWriter, seeded: WorkRepo, remote: Path, tmp_path: Path) -> None:
    second = ModelWriter(GitRepo(str(remote), "main", tmp_path / "writer2.git"), AUTHOR)
    stop = threading.Event()
    outside: list[str] = []

    def racing_clone() -> None:
        clone = WorkRepo(tmp_path / "racer", remote=remote)
        for i in range(6):
            if stop.is_set():
                break
            clone.repo.git.pull("-q", "--rebase", "origin", "main")
            clone.model("outside", f"pr{i}", "1")
            clone.commit(f"PR {i}")
            try:
                clone.push()
                outside.append(f"models/outside/pr{i}-1.yaml")
            except git.GitCommandError:
                clone.repo.git.reset("-q", "--hard", "origin/main")

    def create(i: int) -> str:
        target = writer if i % 2 else second
        return target.write(CreateModel("team", ModelFields(f"m{i}", "1b"))).path

    racer = threading.Thread(target=racing_clone)
    racer.start()
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            acknowledged = list(pool.map(create, range(32)))
    finally:
        stop.set()
        racer.join()
        second.close()
    files = remote_files(remote)
    assert set(acknowledged) <= set(files)
    assert set(outside) <= set(files)
    assert len(acknowledged) == len(set(acknowledged)) == 32
    log = subprocess.run(["git", "-C", str(remote), "log", "--format=%s", "main"], capture_output=True, text=True).stdout
    assert log.count("Add model m") >= 2  # batched: fewer commits than writes, but at least one per writer


def test_bump_refresh_appends_or_replaces() -> None:
    assert bump_refresh(b"name: a\ntag: b", "T") == b'name: a\ntag: b\nrefreshRequestedAt: "T"\n'
    assert bump_refresh(b"name: a\nrefreshRequestedAt: 'x'  # old\ntag: b\n", "T") == b'name: a\nrefreshRequestedAt: "T"\ntag: b\n'


def test_parse_author() -> None:
    assert parse_author("Ops Team <ops@example.com>") == git.Actor("Ops Team", "ops@example.com")
    with pytest.raises(ValueError):
        parse_author("no email")


def _tree_from_an_index(repo: Path, parent: str, changes: dict[str, str | None], scratch: Path) -> str:
    """What `git add`/`git rm` and `git write-tree` make of `parent` with `changes` (path -> blob SHA, or None)."""
    env = {"GIT_INDEX_FILE": str(scratch / "index"), "PATH": "/usr/bin:/bin"}
    run = lambda *args, stdin=None: subprocess.run(["git", "--git-dir", str(repo), *args], env=env, input=stdin,
                                                   capture_output=True, check=True).stdout.decode().strip()
    run("read-tree", parent)
    lines = [f"100644 {blob}\t{path}" if blob else f"0 {'0' * 40}\t{path}" for path, blob in changes.items()]
    run("update-index", "--index-info", stdin=("\n".join(lines) + "\n").encode())
    return run("write-tree")


def test_a_commit_is_the_parent_tree_with_only_the_changed_paths_replaced(
        writer: ModelWriter, seeded: WorkRepo, remote: Path, tmp_path: Path) -> None:
    # Neighbours that sort around the changed names as Git orders them (a folder sorts as "name/").
    seeded.write("README.md", "models\n")
    seeded.model("team", "gemma3", "1b")
    seeded.model("team-a", "phi3", "mini")
    seeded.write("models/team.yaml", "name: misplaced\ntag: x\n")
    seeded.model("solo", "qwen2.5", "0.5b")
    seeded.commit("neighbours")
    seeded.push()
    writer.repo.fetch()
    parent = git.Repo(remote).commit("main")
    with ThreadPoolExecutor(3) as pool:  # one batch: a new namespace, the last file of one deleted, a refresh
        writes = [pool.submit(writer.write, change) for change in (
            CreateModel("team-0", ModelFields("mistral", "7b")), DeleteModel("solo", "qwen2.5-0.5b"),
            RefreshModel("team", "gemma3-1b", "2026-11-25T14:00:00Z"))]
        results = [w.result(timeout=60) for w in writes]
    head = git.Repo(remote).commit("main")
    commits = list(git.Repo(remote).iter_commits(f"{parent.hexsha}..main"))
    changed: dict[str, str | None] = {}
    for commit in reversed(commits):
        for diff in commit.parents[0].diff(commit):
            changed[diff.b_path if diff.b_blob else diff.a_path] = diff.b_blob.hexsha if diff.b_blob else None
    assert set(changed) == {r.path for r in results}
    assert changed["models/solo/qwen2.5-0.5b.yaml"] is None
    # Byte for byte the tree an index would have made: same order, no empty folder left behind.
    assert head.tree.hexsha == _tree_from_an_index(remote, parent.hexsha, changed, tmp_path)
    assert "solo" not in [t.name for t in head.tree["models"].trees]
    subprocess.run(["git", "--git-dir", str(remote), "fsck", "--strict", "--no-dangling"], check=True, capture_output=True)


def test_a_write_under_a_file_where_a_folder_belongs_is_refused(writer: ModelWriter, seeded: WorkRepo, remote: Path) -> None:
    seeded.write("models/notes", "a file, not a namespace folder\n")
    seeded.commit("file in the way")
    seeded.push()
    writer.repo.fetch()
    before = git.Repo(remote).commit("main").hexsha
    with pytest.raises(WriteRejected) as rejected:
        writer.write(CreateModel("notes", ModelFields("phi3", "mini")))
    assert rejected.value.status == 409 and "models/notes is a file, not a folder" in rejected.value.message
    assert git.Repo(remote).commit("main").hexsha == before and "models/notes" in remote_files(remote)


def test_a_write_into_a_large_folder_streams_its_listing_through_and_never_holds_it(remote: Path, tmp_path: Path) -> None:
    # A folder of 20,000 files (one blob under every name), made with git's plumbing.
    def plumbing(*args: str, stdin: bytes = b"") -> str:
        return subprocess.run(["git", "--git-dir", str(remote), *args], input=stdin, capture_output=True,
                              check=True).stdout.decode().strip()

    blob = plumbing("hash-object", "-w", "--stdin", stdin=b"name: m\ntag: 1b\n")
    listing = b"".join(f"100644 blob {blob}\tm{i}-1b.yaml\0".encode() for i in range(20_000))
    folder = plumbing("mktree", "-z", stdin=listing)
    models = plumbing("mktree", "-z", stdin=f"040000 tree {folder}\tdefault\0".encode())
    root = plumbing("mktree", "-z", stdin=f"040000 tree {models}\tmodels\0".encode())
    plumbing("update-ref", "refs/heads/main", plumbing("commit-tree", root, "-m", "many"))
    writer = ModelWriter(GitRepo(str(remote), "main", tmp_path / "writer.git"), AUTHOR)
    try:
        writer.write(CreateModel("default", ModelFields("warm", "up")))  # the clone fetched, outside the count
        tracemalloc.start()
        try:
            written = writer.write(CreateModel("default", ModelFields("phi3", "mini")))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        writer.close()
    assert written.path == "models/default/phi3-mini.yaml"
    assert len(plumbing("ls-tree", "main:models/default").splitlines()) == 20_002
    # The folder's listing (1.35 MB) passes from `git ls-tree` to `git mktree` a pipe's read at a time:
    # what is held is a few reads of 64 KiB (about 0.3 MB), never the listing (nor a copy of it, nor a
    # decoded one: 2.8 MB when it was held).
    assert peak < len(listing) / 3, (peak, len(listing))


@pytest.mark.parametrize("read_size", [1, 7, 50, 10_000])
def test_a_tree_listing_is_spliced_the_same_however_its_reads_are_cut(read_size: int) -> None:
    entries = [f"100644 blob {i:040x}\tm{i}-1b.yaml\0".encode() for i in range(200)]
    entries.append(f"040000 tree {7:040x}\tname\twith-tab\0".encode())  # a name that holds a tab
    listing = b"".join(entries)
    removed = ["m0-1b.yaml", "m57-1b.yaml", "m199-1b.yaml", "with-tab", "absent.yaml"]
    added = [f"100644 blob {1:040x}\tnew-1b.yaml\0".encode()]
    splice = _Splice(removed, added)
    reads = [listing[at:at + read_size] for at in range(0, len(listing), read_size)]
    out = b"".join(splice(iter(reads)))
    expected = [e for i, e in enumerate(entries) if i not in (0, 57, 199)] + added  # "with-tab" is not that entry's name
    assert out == b"".join(expected) and splice.kept
    emptied = _Splice([f"m{i}-1b.yaml" for i in range(200)] + ["name\twith-tab"], [])
    assert b"".join(emptied(iter(reads))) == b"" and not emptied.kept
