"""Waiting for something another process or thread makes true: polling with a deadline, never a
fixed sleep standing in for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.02) -> T:
    """The first truthy value of `predicate`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout:.0f}s")
        time.sleep(interval)
