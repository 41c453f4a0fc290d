"""The plan of a fleet: one `plan()` per server, over the models placed on it (pure, no I/O).

A model's `servers:` selector places it on the servers whose labels it matches (without one, on
every server). Each server is planned on its own, over `desired.placed_on(labels)` and the records'
entries for that server, so every safety rule of `plan()` holds per server: a server that could not
be listed has nothing pulled or deleted on it, and no server is pruned to zero without
`allow_empty`. A model no longer placed on a server is removed there as a removed file is: deleted
only where ollama-gitops pulled it and its file allows pruning, else just forgotten there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from .models.desired import DesiredState, ModelKey
from .plan import InstalledModel, Plan, plan
from .state import ModelRecord, on_server


@dataclass(frozen=True)
class ServerView:
    """What the plan needs of one server, no I/O."""

    name: str
    labels: Mapping[str, str] = field(hash=False)
    # None: it could not be listed, so nothing is pulled or deleted there
    observed: Mapping[str, InstalledModel] | None = field(hash=False)
    in_flight: frozenset[str] = frozenset()


def plan_servers(
    desired: DesiredState,
    servers: Sequence[ServerView],
    records: Mapping[ModelKey, ModelRecord],
    *,
    scope: Set[ModelKey] | None = None,
    now: float,
    allow_empty: bool = False,
) -> dict[str, Plan]:
    """One `plan()` per server (keyed by name) over the models placed on it and the records' entries
    for it. `records` holds what `plan()` asks for (every recorded key in scope and those sharing a
    reference with one); a model deselected from a server is 'removed' there, with reasons saying
    'no longer placed on this server'."""
    plans: dict[str, Plan] = {}
    for server in servers:
        placed = desired.placed_on(server.labels)  # shared by the servers with the same labels
        displaced = desired.not_placed_on(server.labels)
        if scope is not None:
            displaced = frozenset(key for key in scope if key in displaced)
        plans[server.name] = plan(placed, server.observed, on_server(records, server.name), scope=scope,
                                  in_flight=server.in_flight, now=now, allow_empty=allow_empty,
                                  displaced=displaced)
    return plans
