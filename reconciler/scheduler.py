"""Running cycles on a schedule (APScheduler), one at a time, and on request.

The job runs with one instance and coalescing, so cycles never overlap and missed runs collapse
into one. A request made while a cycle runs is not lost: the running job loops once more.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("ollama_gitops.scheduler")

JOB_ID = "reconcile"
WAKE_PREFIX = "wake-"  # one date job per second at which a cycle is due (a failed pull's retry)


class CycleScheduler:
    """Calls `cycle` every `interval` seconds, and at once when `request_cycle()` is called."""

    def __init__(self, cycle: Callable[[], object], interval: float) -> None:
        self._cycle = cycle
        self._interval = interval
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self.cycle_started: float | None = None  # time.monotonic() of the running cycle's start, or None
        self.cycles_ended = 0
        self._scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        """Start the schedule; the first cycle runs at once."""
        self._scheduler.add_job(self._run, "interval", seconds=self._interval, id=JOB_ID,
                                next_run_time=datetime.now(timezone.utc))
        self._scheduler.start()

    def request_cycle(self) -> None:
        """Run a cycle now (or right after the running one) instead of waiting for the interval."""
        with self._lock:
            self._requested.set()
            if self._running:  # the running cycle loops once more; asking APScheduler would be refused
                return
        if self._scheduler.running:
            try:
                self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(timezone.utc))
            except LookupError:  # shutting down
                pass

    def request_cycle_at(self, when: float) -> None:
        """Run a cycle at `when` (seconds since the epoch, as `time.time()`), whatever the interval.

        Every wake-up asked for is kept, one per second (rounded up, so that a cycle woken for a
        retry never runs before the retry is due): a later one is not lost behind an earlier one.
        """
        second = math.ceil(when)
        if second <= time.time():
            self.request_cycle()
            return
        if not self._scheduler.running:
            return
        try:
            self._scheduler.add_job(self.request_cycle, "date", id=f"{WAKE_PREFIX}{second}", replace_existing=True,
                                    run_date=datetime.fromtimestamp(second, timezone.utc))
        except RuntimeError:  # shutting down
            pass

    @property
    def busy(self) -> bool:
        """A cycle is running, or has been requested and not started yet."""
        with self._lock:
            return self._running or self._requested.is_set()

    def next_cycle_at(self) -> float | None:
        """When the next scheduled cycle is due (epoch seconds): the earliest of the interval's next run
        and the wake-ups (a cycle requested meanwhile runs sooner); None when not scheduled."""
        try:
            times = [job.next_run_time for job in self._scheduler.get_jobs() if job.next_run_time is not None]
        except RuntimeError:  # shutting down
            return None
        return min(times).timestamp() if times else None

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._running = True
                self._requested.clear()
            self.cycle_started = time.monotonic()
            try:
                self._cycle()
            except Exception:  # the schedule must survive a bug in one cycle
                log.exception("cycle crashed")
            self.cycle_started = None
            self.cycles_ended += 1
            with self._lock:
                if not self._requested.is_set():
                    self._running = False
                    return
