"""Cycles run one at a time, and a cycle can be requested now; none is lost while one runs."""

from __future__ import annotations

import threading
import time

from ollama_gitops.reconciler.scheduler import CycleScheduler
from waiting import eventually


def test_first_cycle_runs_at_start_and_requests_run_at_once() -> None:
    ran = threading.Semaphore(0)
    scheduler = CycleScheduler(ran.release, interval=3600)
    scheduler.start()
    try:
        assert ran.acquire(timeout=10)  # the first cycle, at start
        scheduler.request_cycle()
        assert ran.acquire(timeout=10)  # not an hour later
    finally:
        scheduler.shutdown()


def test_request_during_a_cycle_runs_another_after_it_and_cycles_never_overlap() -> None:
    inside = threading.Event()
    proceed = threading.Event()
    finished = threading.Semaphore(0)
    active = 0
    overlaps = []
    calls = []

    def cycle() -> None:
        nonlocal active
        active += 1
        overlaps.append(active > 1)
        calls.append(1)
        if len(calls) == 1:
            inside.set()
            proceed.wait(10)
        active -= 1
        finished.release()

    scheduler = CycleScheduler(cycle, interval=3600)
    scheduler.start()
    try:
        assert inside.wait(10)
        for _ in range(5):  # a burst while the first cycle runs collapses into one more cycle
            scheduler.request_cycle()
        proceed.set()
        assert finished.acquire(timeout=10) and finished.acquire(timeout=10)
    finally:
        scheduler.shutdown()
    assert not any(overlaps)
    assert len(calls) == 2


def test_a_crashing_cycle_does_not_stop_the_schedule() -> None:
    ran = threading.Semaphore(0)
    calls = []

    def cycle() -> None:
        calls.append(1)
        ran.release()
        if len(calls) == 1:
            raise RuntimeError("bug")

    scheduler = CycleScheduler(cycle, interval=3600)
    scheduler.start()
    try:
        assert ran.acquire(timeout=10)
        scheduler.request_cycle()
        assert ran.acquire(timeout=10)
    finally:
        scheduler.shutdown()


def test_busy_while_a_cycle_runs_or_waits_to() -> None:
    inside = threading.Event()
    proceed = threading.Event()
    calls = []

    def cycle() -> None:
        calls.append(1)
        inside.set()
        proceed.wait(10)

    scheduler = CycleScheduler(cycle, interval=3600)
    assert not scheduler.busy
    scheduler.start()
    try:
        assert inside.wait(10) and scheduler.busy
        scheduler.request_cycle()
        proceed.set()
        eventually(lambda: not scheduler.busy)
        assert len(calls) == 2  # idle now: no cycle left to run, none requested
    finally:
        scheduler.shutdown()


def test_cycles_asked_for_at_a_time_run_then_and_a_later_one_is_not_lost_behind_an_earlier() -> None:
    ran = threading.Semaphore(0)
    scheduler = CycleScheduler(ran.release, interval=3600)
    scheduler.start()
    try:
        assert ran.acquire(timeout=10)  # the first cycle, at start
        now = time.time()
        scheduler.request_cycle_at(now + 2.5)
        scheduler.request_cycle_at(now + 1)  # earlier, asked for later
        assert ran.acquire(timeout=30)
        assert ran.acquire(timeout=30)  # the later one still runs (not an hour later)
        scheduler.request_cycle_at(now - 10)  # already due: at once
        assert ran.acquire(timeout=30)
    finally:
        scheduler.shutdown()


def test_next_cycle_at_is_the_interval_or_an_earlier_wake_up() -> None:
    ran = threading.Event()
    scheduler = CycleScheduler(ran.set, interval=3600)
    assert scheduler.next_cycle_at() is None  # not started
    scheduler.start()
    try:
        assert ran.wait(30)  # the first cycle, at once
        later = eventually(lambda: (at := scheduler.next_cycle_at()) is not None and at > time.time() + 3000 and at,
                           timeout=30)
        scheduler.request_cycle_at(time.time() + 600)
        assert scheduler.next_cycle_at() < later
    finally:
        scheduler.shutdown()
