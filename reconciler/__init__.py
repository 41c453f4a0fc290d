"""The reconciler, and what the API shares with it.

Layers, bottom up: `models/` (the model-file format: bytes in Git to validated desired state), the
edges `git/`, `ollama/` and `cluster/`, the core (`plan`, `reconcile`, `state`), and the process
(`service`, `scheduler`, `settings`, `cli`...). Nothing imports upward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def data_files() -> Traversable:
    """The files shipped inside the package: the schema and the example models repository."""
    from importlib import resources  # ~10 ms to import: only for what reads the shipped files

    return resources.files(__name__).joinpath("data")
