"""Pulls in the background: a bounded worker pool that records each pull's outcome as it ends.

A cycle hands pulls over and moves on; it never waits for a download. A reference whose pull is in
flight is not pulled again until that pull has ended.

A pull's end is recorded from the pull's own result (`ModelServer.pull`), never from a listing of
the server (100,000 models take seconds to list): Ready, with the size `/api/tags` would give, the
pull time, and no digest (None), as the stream does not carry the manifest's digest. The server's
kept listing (`Fleet`) takes the same result, its digest "", which `plan()` takes as the same as
None, so nothing is planned for the model meanwhile. Until the next resync the API shows it Ready
with its size and lastPullTime and no digest (in Kubernetes mode the status has no `digest`); that
resync's listing gives the digest and records it (a MarkReady "its digest, from the listing").
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .. import metrics
from .server import ModelOperationFailed, ModelServer, ServerUnreachable
from ..models.desired import ModelKey
from ..models.naming import normalize_reference
from ..plan import InstalledModel, Pull
from ..state import DEFAULT_SERVER, FAILED, PULLING, READY, StateStore, utc_rfc3339

log = logging.getLogger("ollama_gitops.pulls")

BACKOFF_BASE = 15.0  # seconds before the first retry
BACKOFF_CAP = 900.0  # never wait more than this between retries


def backoff_delay(failures: int, rng: Callable[[], float] = random.random, base: float = BACKOFF_BASE) -> float:
    """Exponential backoff with jitter: base*2^(n-1), capped, less up to a quarter at random.

    The jitter spreads the retries of models that failed together without making "about 15 s" 8 s.
    """
    ceiling = min(BACKOFF_CAP, base * 2 ** max(0, failures - 1))
    return ceiling * (0.75 + 0.25 * rng())


class PullPool:
    """Runs pulls into one server on at most `concurrency` threads and records their outcome in the
    store, on that server's entries (`name`)."""

    def __init__(
        self,
        server: ModelServer,
        store: StateStore,
        *,
        concurrency: int = 2,
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[str, InstalledModel | None, float | None], None] | None = None,
        backoff_base: float = BACKOFF_BASE,
        name: str = DEFAULT_SERVER,
    ) -> None:
        """`on_finished(reference, installed, retry_at)` runs after each pull: `installed` when it
        succeeded, else `retry_at`, the `clock()` time at which a retry is due."""
        self._server = server
        self.name = name
        self._store = store
        self._clock = clock
        self._on_finished = on_finished
        self._backoff_base = backoff_base
        self._executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pull")
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[None]] = {}
        self._unreachable: str | None = None  # why the last pull that could not reach the server failed

    def take_unreachable(self) -> str | None:
        """Why a pull found the server unreachable since the last call (None if none did)."""
        with self._lock:
            reason, self._unreachable = self._unreachable, None
            return reason

    def in_flight(self) -> frozenset[str]:
        """Normalised references being pulled now."""
        with self._lock:
            return frozenset(self._in_flight)

    def submit(self, pull: Pull, commit: str | None) -> bool:
        """Start `pull` unless the same reference is in flight; returns whether it was started."""
        reference = normalize_reference(pull.reference)
        with self._lock:
            if reference in self._in_flight:
                return False
            with self._store.editing() as edit:
                for key in pull.keys:
                    status = edit.status(key, self.name)
                    if status is not None:
                        # Owned before the download starts, so that a crash never leaves weights no one may prune.
                        status.state, status.owned = PULLING, True
                        status.progress_completed = status.progress_total = None
            self._in_flight[reference] = self._executor.submit(self._run, pull, reference, commit)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every pull in flight now to end; False on timeout."""
        with self._lock:
            futures = list(self._in_flight.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.result(timeout=remaining)
            except TimeoutError:
                return False
        return True

    def shutdown(self, wait: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def _run(self, pull: Pull, reference: str, commit: str | None) -> None:
        started = self._clock()
        installed: InstalledModel | None = None
        retry_at: float | None = None
        try:
            # The pull's own result, not a listing of every model on the server (100,000 of them at
            # times): what it cannot say (the manifest's digest) the next resync's listing fills in.
            installed = self._server.pull(
                pull.reference, lambda done, total: self._store.update_progress(pull.keys, self.name, done, total))
        except ServerUnreachable as exc:
            with self._lock:
                self._unreachable = str(exc)
            retry_at = self._record_failure(pull, str(exc), commit)
        except ModelOperationFailed as exc:
            retry_at = self._record_failure(pull, str(exc), commit)
        except Exception as exc:  # a bug or an unexpected client error must not kill the worker silently
            log.exception("unexpected error pulling %s", pull.reference)
            retry_at = self._record_failure(pull, f"unexpected error: {exc}", commit)
        else:
            self._record_success(pull, installed, commit, self._clock() - started)
        finally:
            with self._lock:
                self._in_flight.pop(reference, None)
            if self._on_finished is not None:
                self._on_finished(reference, installed, retry_at)

    def _record_success(self, pull: Pull, installed: InstalledModel | None, commit: str | None, seconds: float) -> None:
        now = utc_rfc3339(self._clock())
        with self._store.editing() as edit:
            for key in pull.keys:
                status = edit.status(key, self.name)
                if status is None:  # the file went away during the pull; the next cycle prunes it
                    continue
                status.state, status.error, status.failures, status.next_retry_at = READY, None, 0, None
                # The digest stays None (unknown) until a listing gives it: `plan()` takes that as
                # the same as the kept listing's "" for this model, and a resync's MarkReady fills it.
                status.size = installed.size if installed else None
                status.digest = (installed.digest or None) if installed else None
                status.last_pull_time, status.applied_commit = now, commit
                status.progress_completed = status.progress_total = None
                if pull.refresh is not None:
                    status.refresh_handled = pull.refresh
        metrics.PULL_DURATION.labels(self.name).observe(seconds)
        log.info("action=pulled reference=%s models=%s commit=%s server=%s seconds=%.1f", pull.reference,
                 model_names(pull.keys), _short(commit), self.name, seconds)

    def _record_failure(self, pull: Pull, message: str, commit: str | None) -> float:
        """Record the failure on every key of the pull; returns when the retry is due (`clock()` time)."""
        now = self._clock()
        retry_in: float | None = None
        metrics.PULL_FAILURES.labels(self.name).inc()
        with self._store.editing() as edit:
            for key in pull.keys:
                status = edit.status(key, self.name)
                if status is None:
                    continue
                status.failures += 1
                delay = backoff_delay(status.failures, base=self._backoff_base)
                retry_in = delay if retry_in is None else min(retry_in, delay)  # the plan retries at the earliest
                status.state, status.error = FAILED, message[:1024]
                status.next_retry_at = now + delay
                status.applied_commit = commit
                status.progress_completed = status.progress_total = None
        retry_in = retry_in if retry_in is not None else 0.0
        log.warning("action=failed reference=%s models=%s commit=%s server=%s retry_in=%.0fs error=%r",
                    pull.reference, model_names(pull.keys), _short(commit), self.name, retry_in, message)
        return now + retry_in


def model_names(keys: tuple[ModelKey, ...]) -> str:
    """Models as every log line names them: `namespace/name`, comma-separated."""
    return ",".join(map(str, keys))


def _short(commit: str | None) -> str:
    return (commit or "-")[:12]
