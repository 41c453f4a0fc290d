"""`ollama-gitops validate`: check a models repository checkout, for pull requests and pre-commit."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .desired import MODELS_DIR, DesiredState, Problem, load_directory

FORMATS = ("text", "github")


def validate_checkout(root: str | os.PathLike[str]) -> DesiredState:
    """Load a checkout; a missing `models/` directory is itself a problem (likely the wrong path)."""
    state = load_directory(root)
    models_dir = Path(root) / MODELS_DIR
    if not models_dir.exists() and not models_dir.is_symlink():  # anything else there is a problem of its own
        missing = Problem(MODELS_DIR, None, f"no {MODELS_DIR}/ directory in {os.fspath(root)!r}; is this a models repository?")
        state = dataclasses.replace(state, problems=state.problems + (missing,))
    return state


def report(problems: Iterable[Problem], root: str, out: TextIO, fmt: str = "text") -> int:
    """Print one line per problem, paths shown relative to where the command runs; return the count."""
    count = 0
    for problem in problems:
        count += 1
        path = os.path.normpath(os.path.join(root, problem.path))
        if fmt == "github":
            properties = f"file={_escape_property(path)}"
            if problem.line:
                properties += f",line={problem.line}"
            out.write(f"::error {properties},title=ollama-gitops::{_escape_data(problem.message)}\n")
        else:
            shown = Problem(path, problem.line, problem.message)
            out.write(f"{shown}\n")
    return count


def _escape_data(value: str) -> str:
    # GitHub Actions workflow command escaping
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")
