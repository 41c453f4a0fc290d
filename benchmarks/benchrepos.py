"""What the benchmarks share: a quiet, fixed Git configuration and big models repositories made fast."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# Every git process of a benchmark, the product's included, runs with the same configuration:
# none from the user or the system (hooks, signing, fsmonitor...), and a fixed identity.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
    "LC_ALL": "C",
}


def git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    """Run git; its stdout, or RuntimeError with its stderr."""
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def model_text(i: int, rev: int | None = None) -> str:
    """Model file `i` (`model<i>:1b`); `rev` adds a label, to change the file."""
    text = f'name: model{i}\ntag: "1b"\n'
    if rev is not None:
        text += f'labels: {{rev: "{rev}"}}\n'
    return text


def generate(parent: Path, size: int, path_of: Callable[[int], str]) -> tuple[Path, float]:
    """A bare remote holding one commit with `size` model files at `path_of(i)`, made with one
    `git fast-import` stream; returns it and the seconds taken."""
    started = time.perf_counter()
    seed = parent / "seed.git"
    git("init", "-q", "--bare", "-b", "main", str(seed))
    stream = [b"commit refs/heads/main\n", b"committer Bench <bench@example.com> 1800000000 +0000\n",
              b"data 16\nmodels for bench\n"]
    for i in range(size):
        data = model_text(i).encode()
        stream.append(f"M 100644 inline {path_of(i)}\ndata {len(data)}\n".encode() + data + b"\n")
    stream.append(b"done\n")
    git("fast-import", "--quiet", "--done", cwd=seed, input=b"".join(stream))
    remote = parent / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(remote))
    git("push", "-q", str(remote), "main:main", cwd=seed)
    shutil.rmtree(seed)
    return remote, time.perf_counter() - started


def wait_for(predicate, timeout: float, what: str, interval: float = 0.001):  # type: ignore[no-untyped-def]
    """The first truthy value of `predicate`, polled every `interval` seconds; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def exponent(points: list[tuple[float, float]]) -> float | None:
    """The slope of log(value) against log(size), least squares; None below two distinct sizes."""
    points = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx, my = statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
