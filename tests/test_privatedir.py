"""The state directory is this user's alone (`privatedir.make_private`)."""

from __future__ import annotations

import stat
from pathlib import Path

from ollama_gitops.reconciler.privatedir import make_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_directory_others_may_use_is_made_private_with_everything_under_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "clone.git" / "objects").mkdir(parents=True)
    (state / "clone.git" / "config").write_text("[core]\n")
    for path, mode in ((state, 0o755), (state / "clone.git", 0o775), (state / "clone.git" / "objects", 0o755),
                       (state / "clone.git" / "config", 0o644)):
        path.chmod(mode)
    make_private(state)
    assert [_mode(p) for p in (state, state / "clone.git", state / "clone.git" / "objects", state / "clone.git" / "config")] \
        == [0o700, 0o700, 0o700, 0o600]


def test_a_missing_directory_is_made_private(tmp_path: Path) -> None:
    make_private(tmp_path / "new" / "state")
    assert _mode(tmp_path / "new" / "state") == 0o700


def test_a_directory_already_private_is_not_walked(tmp_path: Path) -> None:
    """Nobody else can reach what is under a directory only its user may enter: what is there is
    left as it is (a clone's thousands of loose objects are not looked at on every run)."""
    state = tmp_path / "state"
    (state / "clone.git").mkdir(parents=True)
    (state / "clone.git" / "loose").write_text("x")
    (state / "clone.git" / "loose").chmod(0o644)
    state.chmod(0o700)
    make_private(state)
    assert _mode(state) == 0o700 and _mode(state / "clone.git" / "loose") == 0o644
