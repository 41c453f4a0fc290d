"""Waiting for something another process or thread makes true: polling with a deadline, never a
fixed sleep standing in for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, *,
               what: str | None = None) -> T:
    """The first truthy value of `predicate`, polled until `timeout` seconds have passed.

    `timeout` is a ceiling, not a sleep: choose it for a loaded machine. On failure the error says
    what was awaited (`what`, else where the predicate is defined) and the predicate's last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what or _where(predicate)}; "
                                 f"the last check gave {_short(value)}")
        time.sleep(interval)


def _where(predicate: Callable[[], object]) -> str:
    code = getattr(predicate, "__code__", None)
    if code is None:
        return repr(predicate)
    return f"the condition at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
