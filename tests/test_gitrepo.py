"""Git access: fetching into the private clone, credentials kept out of sight, the embedded repo."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import git
import pytest

from gitrepos import WorkRepo
from ollama_gitops.reconciler.git.embedded import ensure_default_repo
from ollama_gitops.reconciler.git.repo import GitCredentials, GitError, GitRepo, redact


def test_fetch_returns_the_branch_head_and_is_shallow(remote: Path, tmp_path: Path) -> None:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "a", "1")
    work.commit()
    work.model("default", "b", "1")
    head = work.commit()
    work.push()
    repo = GitRepo(str(remote), "main", tmp_path / "clone.git")
    assert not repo.has_fetched()
    assert repo.fetch() == head and repo.has_fetched()
    assert (tmp_path / "clone.git" / "shallow").read_text().strip() == head


def test_missing_branch_is_a_clear_error(remote: Path, tmp_path: Path) -> None:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit()
    work.push()
    repo = GitRepo(str(remote), "release", tmp_path / "clone.git")
    with pytest.raises(GitError, match="the branch 'release' is not in the remote repository"):
        repo.fetch()


def test_credentials_travel_only_in_the_environment() -> None:
    credentials = GitCredentials(ssh_key_file=Path("/keys/id"), known_hosts_file=Path("/keys/known"), token="s3cret")
    env = credentials.environment()
    ssh = shlex.split(env["GIT_SSH_COMMAND"])
    assert ["-i", "/keys/id"] == ssh[ssh.index("-i"):ssh.index("-i") + 2]
    assert "StrictHostKeyChecking=yes" in ssh and "UserKnownHostsFile=/keys/known" in ssh
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Basic " + base64.b64encode(b"x-access-token:s3cret").decode()
    assert "s3cret" not in repr(credentials)


def test_redact_removes_url_user_info_and_secrets() -> None:
    text = "fatal: unable to access 'https://bob:hunter2@git.example.com/x.git/': token abc123"
    assert redact(text, ["abc123"]) == "fatal: unable to access 'https://***@git.example.com/x.git/': token ***"


def test_embedded_repo_is_seeded_once_from_the_packaged_example(tmp_path: Path) -> None:
    bare = ensure_default_repo(tmp_path)
    files = git.Repo(bare).git.ls_tree("-r", "--name-only", "main").splitlines()
    assert "models/default/llama3.2-1b.yaml" in files and "models/default/gemma3-1b.yaml" in files
    head = git.Repo(bare).head.commit.hexsha
    assert ensure_default_repo(tmp_path) == bare and git.Repo(bare).head.commit.hexsha == head


def test_fetch_ref_finds_branches_tags_pull_request_refs_and_commits_without_moving_the_branch(
        remote: Path, tmp_path: Path) -> None:
    from ollama_gitops.reconciler.git.repo import InvalidRef, RefNotFound

    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "a", "1")
    main = work.commit()
    work.push()
    work.model("default", "b", "1")
    pr = work.commit()
    work.push("my-pr")
    work.repo.git.tag("-a", "v1", "-m", "an annotated tag")
    work.repo.git.push("origin", "v1")
    work.model("default", "c", "1")
    pull = work.commit()
    work.repo.git.push("origin", "HEAD:refs/pull/7/head")
    work.model("default", "d", "1")
    lone = work.commit()  # reachable from no ref once its branch is gone: fetched by its id
    work.repo.git.push("origin", "HEAD:refs/heads/tmp")
    work.repo.git.push("origin", ":refs/heads/tmp")
    repo = GitRepo(str(remote), "main", tmp_path / "clone.git")
    assert repo.fetch() == main
    assert [repo.fetch_ref(r) for r in ("my-pr", "v1", "refs/pull/7/head", pr[:10], lone)] == [pr, pr, pull, pr, lone]
    assert repo.head() == main
    assert repo.run("for-each-ref", "--format=%(refname)", action="list refs") == "refs/remotes/origin/main"
    with pytest.raises(RefNotFound, match="no branch, tag or ref 'nope' in"):
        repo.fetch_ref("nope")
    for bad in ("--upload-pack=touch x", "a..b", "x.lock", "a b", ""):
        with pytest.raises(InvalidRef):
            repo.fetch_ref(bad)


def test_fetch_again_is_the_fetch_alone_by_url_into_the_tracking_ref_of_a_clone_fetched_before(
        remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "a", "1")
    first = work.commit()
    work.push()
    clone = tmp_path / "clone.git"
    # A git first on PATH that notes each command it runs.
    shim, log = tmp_path / "shim", tmp_path / "git.log"
    shim.mkdir()
    (shim / "git").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec {shutil.which("git")} "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    repo = GitRepo(str(remote), "main", clone)

    def fetched_again() -> tuple[str | None, list[str]]:
        """fetch_again's answer, and the git commands it ran."""
        before = len(log.read_text().splitlines()) if log.exists() else 0
        commit = repo.fetch_again()
        ran = log.read_text().splitlines()[before:] if log.exists() else []
        return commit, [line.split()[2] for line in ran]

    assert fetched_again() == (None, []) and not clone.exists()  # never fetched: `fetch`'s to do
    assert GitRepo(str(remote), "main", clone).fetch() == first
    assert fetched_again() == (first, ["fetch"])  # nothing new
    # The head is this fetch's, not that of the last fetch made (a preview's); the tracking ref moves.
    work.model("default", "b", "1")
    other = work.commit()
    work.push("other")
    work.model("default", "c", "1")
    second = work.commit()
    work.push()
    assert repo.fetch_ref("other") == other and "'other'" in (clone / "FETCH_HEAD").read_text()
    assert fetched_again() == (second, ["fetch"]) and repo.head() == second
    # The tracking ref packed (`git gc`, `pack-refs`) is found as well; the origin is not what it reads.
    subprocess.run(["git", "--git-dir", str(clone), "pack-refs", "--all"], check=True)
    assert not (clone / "refs/remotes/origin/main").exists()
    subprocess.run(["git", "--git-dir", str(clone), "remote", "set-url", "origin", str(tmp_path / "gone.git")],
                   check=True)
    work.model("default", "d", "1")
    third = work.commit()
    work.push()
    assert fetched_again() == (third, ["fetch"]) and GitRepo(str(remote), "main", clone).head() == third


def test_fetch_again_fails_where_fetch_would_check_repair_or_explain(remote: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where an option taken from the URL would run its command
    work = WorkRepo(tmp_path / "work", remote=remote)
    head = work.commit()
    work.push()
    clone = tmp_path / "clone.git"
    GitRepo(str(remote), "main", clone).fetch()
    assert GitRepo(str(remote), "release", clone).fetch_again() is None  # never fetched: no command
    (clone / "refs/remotes/origin/release").write_text(head + "\n")  # fetched once, deleted since
    with pytest.raises(GitError, match="could not fetch branch 'release'"):
        GitRepo(str(remote), "release", clone).fetch_again()
    with pytest.raises(GitError):  # a URL that could pass for an option is a repository, never an option
        GitRepo("--upload-pack=touch pwned", "main", clone).fetch_again()
    assert not (Path.cwd() / "pwned").exists()
    (clone / "HEAD").write_text("garbage\n")  # damaged: `fetch` sets it aside, this only fails
    with pytest.raises(GitError):
        GitRepo(str(remote), "main", clone).fetch_again()
    assert (clone / "HEAD").read_text() == "garbage\n"
    assert GitRepo(str(remote), "main", clone).fetch() == head
