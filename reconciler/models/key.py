"""A model's identity and a file's problem: the two names every layer shares.

Apart from `desired` (which re-exports both) so that what only reads the recorded state (the state
store, `reconcile --once` when nothing changed) need not import the model-file format and PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class ModelKey(NamedTuple):
    """A model's identity: the namespace directory and the resource name (the file's stem).

    A named tuple rather than a dataclass: keys are hashed and compared by the ten thousand on
    every load, and tuples do that in C.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """Why a file is not (or not entirely) part of the desired state."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"
