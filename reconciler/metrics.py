"""Prometheus metrics of the reconciler (served by the API's `/metrics`)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .fleetstatus import overall_recorded
from .state import STATES, ModelRecord

CYCLES = Counter("ollama_gitops_reconcile_cycles_total", "Reconcile cycles, by outcome", ["outcome"])
CYCLE_DURATION = Histogram("ollama_gitops_reconcile_duration_seconds", "Duration of reconcile cycles",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LAST_APPLIED = Gauge("ollama_gitops_last_applied_commit_timestamp_seconds",
                     "When the last commit was applied (Unix time)")
LAST_CYCLE = Gauge("ollama_gitops_last_cycle_timestamp_seconds", "When the last cycle ended (Unix time)")
PULL_DURATION = Histogram("ollama_gitops_pull_duration_seconds", "Duration of successful model pulls, by server",
                          ["server"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
PULL_FAILURES = Counter("ollama_gitops_pull_failures_total", "Failed model pulls, by server", ["server"])
PUSH_RETRIES = Counter("ollama_gitops_git_push_retries_total", "Pushes refused because the branch moved, then retried")
BACKGROUND_ERRORS = Counter("ollama_gitops_background_errors_total",
                            "Unexpected errors (bugs, an incompatible client) in background writers, by component",
                            ["component"])
FILE_PROBLEMS = Gauge("ollama_gitops_model_file_problems", "Problems found in model files at the last loaded commit")


Tallies = tuple[Tally[str], Tally[tuple[str, str]]]


class ModelsByState(Collector):
    """`ollama_gitops_models{state}` (each model as a whole) and `ollama_gitops_server_models{server,
    state}` (each model on each server it is planned on): counted at scrape time from the records,
    or by `tally` (the state store's `tally`, which copies no record) when given."""

    def __init__(self, records: Callable[[], dict[object, ModelRecord]],
                 tally: Callable[[], Tallies] | None = None) -> None:
        self._records = records
        self._tally = tally

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, on = self._tally() if self._tally is not None else _tally(self._records().values())
        family = GaugeMetricFamily("ollama_gitops_models", "Managed models, by state", labels=["state"])
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family
        per_server = GaugeMetricFamily("ollama_gitops_server_models", "Managed models on each server, by state",
                                       labels=["server", "state"])
        for server in sorted({server for server, _ in on}):
            for state in STATES:
                per_server.add_metric([server, state], on.get((server, state), 0))
        yield per_server


def _tally(records: Iterable[ModelRecord]) -> Tallies:
    records = list(records)
    return (Tally(overall_recorded(r).state for r in records),
            Tally((server, status.state) for r in records for server, status in r.servers.items()))
