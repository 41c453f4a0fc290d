"""A model's status as a whole, from its status on each server of the fleet (pure).

The seed's fields (`state`, `size`, `digest`, `lastPullTime`, `error`) describe one model; in a fleet
they describe it over the servers its `servers:` selector picks. One server named `default` (the
old way) gives exactly that server's status, so a single server behaves as it always has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .models.desired import DesiredState, ModelKey
from .models.selector import LabelSelector
from .state import DEFAULT_SERVER, PENDING, PULLING, READY, ModelRecord, ModelStatus, ServerSeen, whole_state

NO_SERVER_MATCHES = "no server matches the model's servers selector"


def overall(record: ModelRecord | None, selected: Sequence[str]) -> ModelStatus:
    """The seed's fields for the whole, over the servers `selected` (the sorted names the model's
    selector picks in the current inventory).

    state: Failed if any selected server failed, else Pulling if any is pulling, else Pending if any
    is pending, has no entry, or none is selected, else Ready. error: the selected servers' errors as
    `NAME: error` joined by `; ` (for the one server `default`, the bare error); none selected:
    `NO_SERVER_MATCHES`. size and digest from the Ready servers (else from any that has them),
    lastPullTime the latest, progress summed over the servers pulling. The other fields are those of
    the first selected server's entry (for one server: all of its fields, unchanged).
    """
    if not selected:
        return ModelStatus(PENDING, error=NO_SERVER_MATCHES)
    entries = [(name, record.servers.get(name) if record is not None else None) for name in selected]
    if len(entries) == 1:
        name, status = entries[0]
        whole = status.copy() if status is not None else ModelStatus()
        if name != DEFAULT_SERVER and whole.error:
            whole.error = f"{name}: {whole.error}"
        return whole
    present = [(name, status) for name, status in entries if status is not None]
    whole = present[0][1].copy() if present else ModelStatus()
    whole.state = whole_state({status.state for _, status in present}, len(present) == len(entries))

    whole.error = "; ".join(f"{name}: {status.error}" for name, status in present if status.error) or None

    sized = [s for _, s in present if s.state == READY and s.size] or [s for _, s in present if s.size]
    whole.size = sized[0].size if sized else None
    digested = [s for _, s in present if s.state == READY and s.digest] or [s for _, s in present if s.digest]
    whole.digest = digested[0].digest if digested else None
    times = [s.last_pull_time for _, s in present if s.last_pull_time]
    whole.last_pull_time = max(times) if times else None  # RFC 3339 in one format sorts as time

    pulling = [s for _, s in present if s.state == PULLING and s.progress_total]
    if whole.state == PULLING and pulling:
        whole.progress_completed = sum(s.progress_completed or 0 for s in pulling)
        whole.progress_total = sum(s.progress_total or 0 for s in pulling)
    else:
        whole.progress_completed = whole.progress_total = None
    return whole


def overall_recorded(record: ModelRecord) -> ModelStatus:
    """`overall` over the servers the model is recorded on (the one `default` server when none yet):
    for a reader that does not know the inventory."""
    return overall(record, sorted(record.servers) or (DEFAULT_SERVER,))


def selected(selector: LabelSelector | None, servers: Iterable[ServerSeen]) -> list[str]:
    """The sorted names of the servers a model's `servers:` selector picks (None: every server), for
    `overall`; `servers` as the last cycle saw them (`SyncStatus.servers`)."""
    return sorted(s.name for s in servers if selector is None or selector.matches(s.labels))


@dataclass(frozen=True)
class Placements:
    """Which servers each model of `desired` is on in an inventory (`servers`, as the cycle saw them):
    what a writer of the whole (`overall`) needs beside the records."""

    desired: DesiredState
    servers: tuple[ServerSeen, ...]

    @property
    def stamp(self) -> tuple[object, ...]:
        """What the selections depend on: the commit, and the servers' names and labels."""
        return (self.desired.commit, tuple((s.name, tuple(sorted(s.labels.items()))) for s in self.servers))

    def selected(self, key: ModelKey) -> list[str] | None:
        """The servers `key`'s selector picks; None when its file is not in `desired` (a model kept
        at its last good version, or going away) or no inventory is known: then the servers it is
        recorded on are the whole (`overall_recorded`), as the API shows it."""
        model = self.desired.models.get(key)
        if model is None or not self.servers:
            return None
        return selected(model.fields.servers, self.servers)
