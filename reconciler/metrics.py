"""Prometheus metrics of the reconciler (served by the API's `/metrics`).

The metrics are made, and prometheus_client imported (~35-55 ms with the `http.server` it brings),
on the first use of one of them (PEP 562's module `__getattr__`), not when the reconciler is
imported: `reconcile --once` serves no `/metrics`, and within `unrecorded()` (which it runs in) a
process that has not made them yet never does, so that a cycle ending after the fetch costs no
metrics library. Once made, they are ordinary module attributes.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .fleetstatus import overall_recorded
from .state import STATES, ModelRecord

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

_NAMES = ("CYCLES", "CYCLE_DURATION", "LAST_APPLIED", "LAST_CYCLE", "PULL_DURATION", "PULL_FAILURES", "PUSH_RETRIES",
          "BACKGROUND_ERRORS", "FILE_PROBLEMS")
_making = threading.Lock()
_unrecorded = 0  # how many `unrecorded()` blocks are open


def _make() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "CYCLES": Counter("ollama_gitops_reconcile_cycles_total", "Reconcile cycles, by outcome", ["outcome"]),
        "CYCLE_DURATION": Histogram("ollama_gitops_reconcile_duration_seconds", "Duration of reconcile cycles",
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
        "LAST_APPLIED": Gauge("ollama_gitops_last_applied_commit_timestamp_seconds",
                              "When the last commit was applied (Unix time)"),
        "LAST_CYCLE": Gauge("ollama_gitops_last_cycle_timestamp_seconds", "When the last cycle ended (Unix time)"),
        "PULL_DURATION": Histogram("ollama_gitops_pull_duration_seconds", "Duration of successful model pulls, by server",
                                   ["server"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)),
        "PULL_FAILURES": Counter("ollama_gitops_pull_failures_total", "Failed model pulls, by server", ["server"]),
        "PUSH_RETRIES": Counter("ollama_gitops_git_push_retries_total",
                                "Pushes refused because the branch moved, then retried"),
        "BACKGROUND_ERRORS": Counter("ollama_gitops_background_errors_total",
                                     "Unexpected errors (bugs, an incompatible client) in background writers, by "
                                     "component", ["component"]),
        "FILE_PROBLEMS": Gauge("ollama_gitops_model_file_problems",
                               "Problems found in model files at the last loaded commit"),
    }


class _Unrecorded:
    """What a metric is within `unrecorded()` before the metrics are made: every update is dropped."""

    def labels(self, *values: str) -> _Unrecorded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _making:
        if name not in globals():
            if _unrecorded:
                return _Unrecorded()
            globals().update(_make())  # registered once, in prometheus_client's default registry
    return globals()[name]


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Within it, the metrics' updates are dropped unless the metrics were made already (their
    library imported): for a process that serves no `/metrics` and exits after (`reconcile --once`)."""
    global _unrecorded
    with _making:
        _unrecorded += 1
    try:
        yield
    finally:
        with _making:
            _unrecorded -= 1


Tallies = tuple[Tally[str], Tally[tuple[str, str]]]


class ModelsByState:
    """A prometheus_client Collector (a Protocol: `collect` is all its registry needs, so nothing of
    prometheus_client is imported here until a scrape): `ollama_gitops_models{state}` (each model as a whole) and `ollama_gitops_server_models{server,
    state}` (each model on each server it is planned on): counted at scrape time from the records,
    or by `tally` (the state store's `tally`, which copies no record) when given."""

    def __init__(self, records: Callable[[], dict[object, ModelRecord]],
                 tally: Callable[[], Tallies] | None = None) -> None:
        self._records = records
        self._tally = tally

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metrics, without a value: what the registry reads of a collector when it is registered,
        which then counts nothing (else it collects, and a `serve` restarted on its state would read
        every record at its start, rather than in its first cycle, where they share the strings of
        the loaded files and of the servers' listings)."""
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(*_MODELS)
        yield GaugeMetricFamily(*_SERVER_MODELS)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        counts, on = self._tally() if self._tally is not None else _tally(self._records().values())
        family = GaugeMetricFamily(*_MODELS)
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family
        per_server = GaugeMetricFamily(*_SERVER_MODELS)
        for server in sorted({server for server, _ in on}):
            for state in STATES:
                per_server.add_metric([server, state], on.get((server, state), 0))
        yield per_server


_MODELS = ("ollama_gitops_models", "Managed models, by state", None, ["state"])
_SERVER_MODELS = ("ollama_gitops_server_models", "Managed models on each server, by state", None, ["server", "state"])


def _tally(records: Iterable[ModelRecord]) -> Tallies:
    records = list(records)
    return (Tally(overall_recorded(r).state for r in records),
            Tally((server, status.state) for r in records for server, status in r.servers.items()))
