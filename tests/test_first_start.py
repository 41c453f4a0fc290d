"""What a new user trips on at start (issue 15): a working repository as `--repo`, a path or URL
scheme mistyped, a branch that is not there, a port in use, not knowing where the embedded
repository is. Each is one line that says what is wrong and what to do, at start where it can be
known there, and nothing is made in the state directory before it."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import git
import httpx
import pytest

from apirig import ApiRig, settings_for
from gitrepos import WorkRepo, init_bare
from ollama_gitops.api import runtime
from ollama_gitops.reconciler import service
from ollama_gitops.reconciler.git.remote import check_remote, is_local
from ollama_gitops.reconciler.git.repo import BranchMissing, GitError, GitRepo
from ollama_gitops.reconciler.git.writer import CreateModel, ModelWriter, WriteRejected
from ollama_gitops.reconciler.models.modelfile import ModelFields
from standins.ollama_server import OllamaStandin


def options(listen: str = "127.0.0.1:0") -> runtime.ApiOptions:
    return runtime.ApiOptions(listen, None, "default", "API Test <api@example.com>", False)


@pytest.fixture
def working(tmp_path: Path) -> WorkRepo:
    """A working (non-bare) repository with `main` checked out: what `git init` + commits gives."""
    work = WorkRepo(tmp_path / "models")
    work.model("default", "llama3.2", "1b")
    work.commit("seed")
    return work


# -- 1. a working repository with the branch checked out -----------------------------------------------

def test_a_write_to_a_checked_out_branch_says_so_with_the_fix_and_is_not_retried(working: WorkRepo, tmp_path: Path) -> None:
    writer = ModelWriter(GitRepo(str(working.path), "main", tmp_path / "writer.git"), git.Actor("A", "a@example.com"),
                         attempts=12)
    try:
        with pytest.raises(WriteRejected) as rejected:
            writer.write(CreateModel("default", ModelFields("phi3", "mini")))
    finally:
        writer.close()
    message = rejected.value.message
    assert rejected.value.status == 503
    assert "kept moving" not in message and "checked out" in message
    assert f"git clone --bare {working.path} {working.path}.git" in message
    assert not (working.path / "models/default/phi3-mini.yaml").exists()


def test_serve_and_api_refuse_a_checked_out_branch_at_start(working: WorkRepo, tmp_path: Path, ollama: OllamaStandin) -> None:
    import threading

    state = tmp_path / "state"
    settings = settings_for(state, str(working.path), ollama.url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    threads = threading.active_count()
    for with_reconciler in (True, False):
        with pytest.raises(service.ConfigurationError) as refused:
            runtime.start(settings, options(f"127.0.0.1:{port}"), with_reconciler=with_reconciler, schedules=False)
        assert "checked out" in str(refused.value) and f"git clone --bare {working.path}" in str(refused.value)
        assert "\n" not in str(refused.value)
    assert not state.exists()
    # The port bound first is let go again, and its request threads with it.
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
    assert threading.active_count() == threads


def test_reconcile_alone_only_warns_about_a_checked_out_branch(working: WorkRepo, tmp_path: Path, ollama: OllamaStandin,
                                                               caplog) -> None:
    settings = settings_for(tmp_path / "state", str(working.path), ollama.url)
    with caplog.at_level(logging.WARNING, logger="ollama_gitops"):
        running = service.build(settings)
    try:
        assert any("checked out" in r.getMessage() and "only reads" in r.getMessage() for r in caplog.records)
        assert running.reconciler.run_cycle().ok  # reads work
    finally:
        running.stop()


def test_a_bare_repository_or_a_branch_not_checked_out_is_fine(working: WorkRepo, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(working.path), str(bare)], check=True)
    assert check_remote(str(bare), "main") is None
    working.repo.git.branch("dev")
    assert check_remote(str(working.path), "dev") is None  # dev is not checked out: pushes to it land
    working.repo.git.config("receive.denyCurrentBranch", "updateInstead")
    assert check_remote(str(working.path), "main") is None  # git takes the push and updates the tree


# -- 3. a path, a scheme, a branch ---------------------------------------------------------------------

def test_a_nonexistent_local_repo_fails_at_start_in_one_line(tmp_path: Path, ollama: OllamaStandin) -> None:
    state = tmp_path / "state"
    missing = tmp_path / "no-such-models.git"
    for start in (lambda s: service.build(s),
                  lambda s: runtime.start(s, options(), with_reconciler=False, schedules=False)):
        with pytest.raises(service.ConfigurationError, match=f"^--repo {missing}: no such directory$"):
            start(settings_for(state, str(missing), ollama.url))
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    with pytest.raises(service.ConfigurationError, match="not a Git repository"):
        service.build(settings_for(state, str(not_a_repo), ollama.url))
    assert not state.exists()


def test_a_mistyped_scheme_is_explained_at_start_and_in_a_cycle(tmp_path: Path, ollama: OllamaStandin) -> None:
    with pytest.raises(service.ConfigurationError,
                       match=r"^--repo htps://example\.com/models\.git: unknown URL scheme 'htps', did you mean https\?$"):
        service.build(settings_for(tmp_path / "state", "htps://example.com/models.git", ollama.url))
    # Where no start check ran (a GitRepo made directly), git's raw text is explained the same way.
    repo = GitRepo("htps://example.com/models.git", "main", tmp_path / "clone.git")
    with pytest.raises(GitError, match=r"unknown URL scheme 'htps', did you mean https\?"):
        repo.fetch()


def test_a_missing_branch_lists_the_branches_there(remote: Path, tmp_path: Path) -> None:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit()
    work.push("main")
    work.push("dev")
    repo = GitRepo(str(remote), "mian", tmp_path / "clone.git")
    with pytest.raises(BranchMissing, match=r"branch 'mian' is not in .*; it has: dev, main$"):
        repo.fetch()


def test_a_missing_branch_of_a_local_repo_is_warned_about_at_start(remote: Path, tmp_path: Path, ollama: OllamaStandin,
                                                                   caplog) -> None:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit()
    work.push("main")
    work.push("dev")
    with caplog.at_level(logging.WARNING, logger="ollama_gitops"):
        running = service.build(settings_for(tmp_path / "state", str(remote), ollama.url, "--branch", "mian"))
    running.stop()  # it starts: the branch may yet be pushed
    assert [r.getMessage() for r in caplog.records if "mian" in r.getMessage()] == [
        f"--repo {remote}: branch 'mian' is not in it; it has: dev, main; cycles fail until it is pushed "
        "(or choose another with --branch)"]


def test_what_git_reads_as_a_local_path() -> None:
    assert is_local("/srv/models.git") and is_local("models") and is_local("./a:b") and is_local("file:///srv/m")
    assert not is_local("git@github.com:acme/models.git") and not is_local("https://h/m.git")
    assert not is_local("ext::ssh host")


# -- 4. the port ---------------------------------------------------------------------------------------

def test_a_port_in_use_is_named_with_the_option_before_the_state_directory_is_made(tmp_path: Path, remote: Path,
                                                                                    ollama: OllamaStandin) -> None:
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(runtime.ConfigurationError) as refused:
            runtime.start(settings_for(state, str(remote), ollama.url), options(f"127.0.0.1:{port}"),
                          with_reconciler=True, schedules=False)
    assert str(refused.value) == (f"127.0.0.1:{port} is already in use (another ollama-gitops serve?); "
                                  "choose another with --listen HOST:PORT")
    assert not state.exists()


# -- 2. where the repository is ------------------------------------------------------------------------

def test_the_status_and_the_log_name_the_repository_and_branch(tmp_path: Path, ollama: OllamaStandin, caplog) -> None:
    rig = ApiRig(tmp_path, ollama, api_key=None)
    rig.seed(("llama3.2", "1b"))
    with caplog.at_level(logging.INFO, logger="ollama_gitops.api"):
        rig.start()
    try:
        assert any(r.getMessage() == f"models repository: {rig.remote} (branch main); clone it with: "
                   f"git clone --branch main {rig.remote}" for r in caplog.records)
        assert rig.client is not None
        body = rig.client.get("/api/v1/status").json()
        assert (body["repository"], body["branch"]) == (str(rig.remote), "main")
    finally:
        rig.stop()


def test_the_status_names_a_repository_without_its_credentials(tmp_path: Path, ollama: OllamaStandin) -> None:
    from ollama_gitops.api.statusview import Snapshot, render

    text = render(Snapshot([], {"repository": "https://git.example.com/models.git", "branch": "main"}))
    assert "repository: https://git.example.com/models.git (branch main)" in text
    repo = GitRepo("https://bot:s3cret@git.example.com/models.git", "main", tmp_path / "clone.git")
    assert repo.display_url == "https://git.example.com/models.git"


# -- the process: exit code 2 and one line on stderr ---------------------------------------------------

def test_the_commands_stop_with_exit_code_2_and_one_line(tmp_path: Path, remote: Path, ollama: OllamaStandin) -> None:
    import os
    import shutil
    import sys

    command = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({"HOME": str(tmp_path), "OLLAMA_GITOPS_KUBERNETES": "off", "OLLAMA_GITOPS_OLLAMA_URL": ollama.url})
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f"127.0.0.1:{port} is already in use": ["serve", "--listen", f"127.0.0.1:{port}"],
            "no such directory": ["reconcile", "--repo", str(tmp_path / "missing")],
            "did you mean https?": ["api", "--repo", "htps://example.com/m.git"],
        }
        for expected, argv in cases.items():
            result = subprocess.run([command, *argv, "--state-dir", str(state)], capture_output=True, text=True,
                                    env=env, timeout=60)
            assert (result.returncode, result.stderr.count("\n")) == (2, 1), (argv, result.stderr)
            assert expected in result.stderr and result.stderr.startswith("ollama-gitops: ")
    assert not state.exists()  # nothing made, nothing seeded
