"""Nothing to do: what a process with nothing in memory (`reconcile --once`, a restart) concludes
after the fetch from the recorded state alone, and `reconcile --once` run on that alone.

A scheduled `reconcile --once` with nothing changed should cost about a fetch. So the check is made
before the reconciler is built, and this module imports only the settings, the clone, the state
directory's summary and lock (not the records' store) and the inventory given on the command line: no
model-file format (PyYAML), no plan, no Ollama client. Anything it cannot tell is left to the whole
reconciler, which makes the same check first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol, TextIO

from .git.repo import GitError, GitRepo
from .privatedir import make_private
from .repository import repository_url
from .settings import Settings, kubernetes_mode
from .summary import (SUCCEEDED, SyncStatus, lock_state_directory, read_summary, records_settled, utc_rfc3339,
                      write_summary)


class _Server(Protocol):
    name: str
    url: str
    labels: Mapping[str, str]


def recorded_up_to_date(sync: SyncStatus, commit: str, now: float, resync_interval: float,
                        servers: Iterable[_Server]) -> bool:
    """Does the summary say there is nothing to do at `commit` with these `servers` (sorted by name)?
    Yes when `commit` is its last applied one, the last cycle succeeded and left nothing to prune or
    retry (`converged`), its resync is not due at `now` (epoch seconds) and the servers are those it
    kept (names, URLs and labels). The records may still have work left: the caller asks them (or
    `summary.records_settled`)."""
    if (commit != sync.last_applied_commit or sync.last_cycle_outcome != SUCCEEDED or not sync.converged
            or sync.last_resync_at is None or now - sync.last_resync_at >= resync_interval):
        return False
    kept = [(s.name, s.url, dict(s.labels)) for s in sync.servers]
    return kept == [(s.name, s.url, dict(s.labels)) for s in servers]


def up_to_date_message(commit: str) -> str:
    """A no-op cycle's message."""
    return f"up to date at {commit[:12]}"


def run_once_if_up_to_date(settings: Settings, out: TextIO) -> int | None:
    """`reconcile --once` when the recorded state says nothing changed: fetch, find nothing to do,
    record the no-op cycle in `sync.json` and print its line, as the whole reconciler would; 0.

    None when this cannot tell, having changed nothing but the clone's fetched branch: Kubernetes
    mode (the records are the resources), servers from a file or a Service, a clone never fetched, a
    fetch that failed, a damaged summary, or anything not up to date. The whole reconciler then runs
    and says why (its fetch, again, costs a no-op fetch). Raises what building the reconciler would:
    StateLocked, and ValueError for credentials that cannot be used."""
    if kubernetes_mode(settings) or settings.ollama_service or settings.servers_file is not None:
        return None
    # No `check_repository`: what it refuses, the fetch fails on (and the whole reconciler then says
    # it), and what it only warns of concerns writes, which `reconcile` never makes.
    servers = sorted(settings.inventory(), key=lambda server: server.name)
    make_private(settings.state_dir)
    lock = lock_state_directory(settings.state_dir)
    try:
        started = time.monotonic()
        try:
            summary = read_summary(settings.state_dir)
        except ValueError:
            return None  # damaged: the whole reconciler keeps it aside and says so
        if summary is None:
            return None  # (read before the fetch: the whole reconciler would fetch again)
        written, sync, records = summary
        repo = GitRepo(repository_url(settings), settings.branch, settings.state_dir / "clone.git",
                       settings.credentials)
        try:
            commit = repo.fetch_again()  # the fetch alone: what it cannot do, the reconciler's `fetch` says
        except GitError:
            return None
        finally:
            repo.close()
        if commit is None:
            return None
        if not (recorded_up_to_date(sync, commit, time.time(), settings.resync_interval, servers)
                and records_settled(settings.state_dir, records)):
            return None
        message = up_to_date_message(commit)
        write_summary(settings.state_dir,
                      replace(sync, last_fetched_commit=commit, last_cycle_at=utc_rfc3339(time.time()),
                              last_cycle_duration=round(time.monotonic() - started, 6),
                              last_cycle_outcome=SUCCEEDED, last_cycle_message=message),
                      written or 0, records, durable=False)
        out.write(f"{SUCCEEDED} at {commit[:12]}: {message}\n")
        return 0
    finally:
        lock.close()
