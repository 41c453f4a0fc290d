"""What `--repo` names, checked at start where it can be known without the network: a local path
that does not exist, a URL scheme git has no transport for (a typo such as `htps://`), and a local
working repository whose tracked branch is checked out (git refuses every push to it).

Each problem is one line that says what is wrong and how to fix it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RemoteProblem", "check_remote", "checked_out_fix", "is_local", "local_path", "unknown_scheme"]

# The transports git itself speaks (transport.c, connect.c); any other needs a git-remote-<scheme>.
_NATIVE_SCHEMES = ("ssh", "git", "http", "https", "ftp", "ftps", "file", "git+ssh", "ssh+git")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_NOT_A_COMMAND = re.compile(r"git: 'remote-(?P<scheme>[^']+)' is not a git command")


@dataclass(frozen=True)
class RemoteProblem:
    """Something wrong with `--repo`: with `writes_only`, reads work and only pushes would fail
    (so a reconciler alone warns, while a command that serves writes refuses to start)."""

    message: str
    writes_only: bool = False
    warning: bool = False  # it may yet become right (a branch not pushed yet): say so, start anyway


def is_local(url: str) -> bool:
    """Does git read `url` as a path on this machine (git's own rule: no `scheme://`, and no
    `host:` before the first slash, which would be scp-like SSH)?"""
    if url.startswith("file://"):
        return True
    if "://" in url or "::" in url:
        return False
    colon, slash = url.find(":"), url.find("/")
    return colon < 0 or (0 <= slash < colon)


def local_path(url: str) -> Path | None:
    """The path a local `url` names, or None for a remote one."""
    if not is_local(url):
        return None
    return Path(url[len("file://"):] if url.startswith("file://") else url).expanduser()


def unknown_scheme(url: str) -> str | None:
    """One line when `url`'s scheme is one git cannot fetch from (no native transport and no
    `git-remote-<scheme>` helper), with the scheme it probably meant; None when it is fine."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    scheme = match["scheme"]
    if scheme.lower() in _NATIVE_SCHEMES or _has_helper(scheme):
        return None
    return explain_scheme(scheme)


def explain_scheme(scheme: str) -> str:
    """`unknown URL scheme 'htps', did you mean https?`"""
    import difflib  # only for a mistake: not at every start

    guess = difflib.get_close_matches(scheme.lower(), _NATIVE_SCHEMES, n=1, cutoff=0.5)
    hint = f", did you mean {guess[0]}?" if guess else f"; git speaks {', '.join(_NATIVE_SCHEMES[:7])}"
    return f"unknown URL scheme {scheme!r}{hint}"


def explain_git_output(output: str) -> str | None:
    """A one-line reason for git's raw text where it is cryptic (`git: 'remote-htps' is not a git command`)."""
    match = _NOT_A_COMMAND.search(output)
    return explain_scheme(match["scheme"]) if match else None


def _has_helper(scheme: str) -> bool:
    if shutil.which(f"git-remote-{scheme}"):
        return True
    try:
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(exec_path) and os.access(os.path.join(exec_path, f"git-remote-{scheme}"), os.X_OK)


def checked_out_fix(path: Path) -> str:
    """How to make a repository that can be pushed to from a working one."""
    bare = f"{str(path).rstrip('/')}.git"
    return f"use a bare clone of it: git clone --bare {path} {bare} and --repo {bare}"


def check_remote(url: str, branch: str) -> RemoteProblem | None:
    """The first problem with `--repo URL` that is visible without the network, or None."""
    scheme = unknown_scheme(url)
    if scheme is not None:
        return RemoteProblem(f"--repo {url}: {scheme}")
    path = local_path(url)
    if path is None:
        return None
    if not path.exists():
        return RemoteProblem(f"--repo {url}: no such directory")
    worktrees = _git(path, "worktree", "list", "--porcelain")
    if worktrees is None:
        return RemoteProblem(f"--repo {url}: not a Git repository")
    if _branch_checked_out(path, branch, worktrees):
        return RemoteProblem(
            f"--repo {url} is a working repository with branch {branch!r} checked out, and git refuses "
            f"to push to a checked-out branch, so every write would fail; {checked_out_fix(path)}",
            writes_only=True)
    heads = _git(path, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    if heads is not None and branch not in heads.split():
        there = f"it has: {', '.join(sorted(heads.split()))}" if heads.split() else "it has no branch yet"
        return RemoteProblem(f"--repo {url}: branch {branch!r} is not in it; {there}; cycles fail until it is "
                             "pushed (or choose another with --branch)", warning=True)
    return None


def _branch_checked_out(path: Path, branch: str, worktrees: str) -> bool:
    """Is `branch` checked out in one of the `worktrees` (`git worktree list --porcelain`) of the
    repository at `path`, where a push to it is refused (`receive.denyCurrentBranch` at its default)?"""
    for entry in worktrees.split("\n\n"):
        lines = entry.splitlines()
        if "bare" not in lines and f"branch refs/heads/{branch}" in lines:
            deny = (_git(path, "config", "--get", "receive.denyCurrentBranch") or "refuse").strip().lower()
            return deny in ("refuse", "true")  # not for updateInstead, warn, ignore: git takes the push
    return False


def _git(path: Path, *args: str) -> str | None:
    """`git -C path ARGS`'s output, or None when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # the repository at `path`, not ours
    try:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None
