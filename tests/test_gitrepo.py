"""Git access: fetching into the private clone, credentials kept out of sight, the embedded repo."""

from __future__ import annotations

import base64
import shlex
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
