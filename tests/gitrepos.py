"""Real Git repositories for tests: a working clone with helpers to write, commit and push files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import git

AUTHOR = "Test Author <test@example.com>"


def init_bare(path: Path) -> Path:
    """A bare repository whose default branch is main, as a remote."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


class WorkRepo:
    """A non-bare repository that tests write model files into and commit."""

    def __init__(self, path: Path, remote: Path | None = None) -> None:
        self.path = path
        if remote is not None and (remote / "HEAD").exists() and _has_commits(remote):
            self.repo = git.Repo.clone_from(str(remote), str(path))
        else:
            self.repo = git.Repo.init(str(path), initial_branch="main")
            if remote is not None:
                self.repo.create_remote("origin", str(remote))
        with self.repo.config_writer() as config:
            config.set_value("user", "name", "Test Author")
            config.set_value("user", "email", "test@example.com")
            config.set_value("commit", "gpgsign", "false")

    def write(self, relative: str, content: str | bytes) -> Path:
        file = self.path / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        file.write_bytes(content)
        return file

    def model(self, namespace: str, name: str, tag: str, extra: str = "") -> str:
        """Write a minimal valid model file for name:tag and return its repository path."""
        from ollama_gitops.reconciler.models.naming import resource_name

        relative = f"models/{namespace}/{resource_name(name, tag)}.yaml"
        self.write(relative, f"name: {name}\ntag: \"{tag}\"\n{extra}")
        return relative

    def close(self) -> None:
        """End GitPython's persistent `git cat-file` processes (three pipes each, or the suite's
        process runs out of the descriptors select() can watch)."""
        self.repo.close()

    def remove(self, relative: str) -> None:
        (self.path / relative).unlink()

    def _clear(self, relative: str) -> Path:
        """Take whatever is at `relative` (a file, a folder, a link) out of the work tree and the index."""
        target = self.path / relative
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        self.repo.git.rm("-r", "-q", "--cached", "--ignore-unmatch", "--", relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def submodule(self, relative: str, sha: str = "5" * 40) -> None:
        """Put a submodule entry (tree mode 160000, a commit of another repository) at `relative`,
        in place of what was there. Its work-tree folder stays empty, as an uninitialised submodule's."""
        self._clear(relative).mkdir()
        self.repo.git.update_index("--add", "--cacheinfo", f"160000,{sha},{relative}")

    def symlink(self, relative: str, target: str) -> None:
        """Put a symbolic link (tree mode 120000) at `relative`, in place of what was there."""
        os.symlink(target, self._clear(relative))

    def special(self, relative: str, kind: str, target: str = "elsewhere") -> None:
        """Put a `kind` ("submodule" or "symlink", to `target`) entry at `relative`."""
        if kind == "submodule":
            self.submodule(relative)
        else:
            self.symlink(relative, target)

    def mode_of(self, relative: str) -> str:
        """The tree mode of `relative` at HEAD, as `git ls-tree` shows it."""
        return self.repo.git.ls_tree("HEAD", "--", relative).split()[0]

    def commit(self, message: str = "change") -> str:
        """Stage everything (additions, changes, removals) and commit; return the commit SHA."""
        self.repo.git.add("-A")
        self.repo.git.commit("-q", "--allow-empty", "-m", message)
        return self.repo.head.commit.hexsha

    def push(self, branch: str = "main") -> None:
        self.repo.git.push("-q", "origin", f"HEAD:refs/heads/{branch}")


def _has_commits(bare: Path) -> bool:
    result = subprocess.run(["git", "-C", str(bare), "rev-parse", "-q", "--verify", "HEAD"], capture_output=True)
    return result.returncode == 0
