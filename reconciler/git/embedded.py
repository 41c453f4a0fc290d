"""The embedded default models repository: what a new user reconciles with nothing to set up.

On first run it is created as a bare repository inside the state directory and seeded with the
example models repository shipped in the package, so it works from an installed wheel as well as
from a checkout. After that it is an ordinary Git remote: the API commits to it, people may push.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import data_files

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SEED_AUTHOR = ("ollama-gitops", "ollama-gitops@localhost")  # name, email


def ensure_default_repo(state_dir: Path, branch: str = "main") -> Path:
    """The path of the default bare repository, created and seeded if it does not exist yet."""
    bare = state_dir / "models.git"
    if (bare / "HEAD").exists():
        return bare
    import git  # GitPython (~70 ms) only when there is a repository to create: not on every start

    author = git.Actor(*SEED_AUTHOR)
    staging = Path(tempfile.mkdtemp(prefix=".seed-", dir=state_dir))
    try:
        work = git.Repo.init(str(staging / "work"), initial_branch=branch)
        _copy_tree(data_files().joinpath("models-repo"), Path(work.working_dir))
        work.git.add("-A")
        work.index.commit("Seed models repository from ollama-gitops examples", author=author, committer=author)
        # Build the bare repository aside and rename it into place, so that a crash never leaves a
        # half-made repository that would be taken for the real one.
        git.Repo.init(str(staging / "models.git"), bare=True, initial_branch=branch)
        work.git.push(str(staging / "models.git"), f"HEAD:refs/heads/{branch}")
        (staging / "models.git").rename(bare)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bare


def _copy_tree(source: Traversable, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())
