"""Child processes started by a test, whose output is kept and shown when the test fails.

Each child writes its stdout and stderr to files under the test's temporary directory (files, not
pipes: nobody has to keep reading them, and nothing is lost when a test stops early). The
`children` fixture (tests/conftest.py) stops every child at the end of the test, SIGTERM first and
SIGKILL after a grace period, and adds the tail of each child's output to the report of a failed
test. `Child.wait_for` waits on a line of the child's own log, and fails at once, with that log,
when the child has exited instead. Children run with PYTHONFAULTHANDLER=1: one that ignores SIGTERM
gets SIGABRT before SIGKILL, and a Python child then writes every thread's stack to its stderr, so
the report says where it was stuck.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from waiting import eventually

TAIL_LINES = 150  # per stream, in a failure report (enough for a stack dump of a dozen threads)
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL when a test ends with a child still running
DUMP_GRACE = 10.0  # seconds a Python child has to write its threads' stacks after SIGABRT


class Child:
    """One child process and the files its stdout and stderr go to."""

    def __init__(self, name: str, args: Sequence[str], directory: Path, env: Mapping[str, str] | None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        self.started = time.monotonic()
        environment = {**(env if env is not None else os.environ), "PYTHONFAULTHANDLER": "1"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            env=environment, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=STOP_GRACE)

    def abort(self) -> int:
        """SIGABRT (a Python child writes its threads' stacks to stderr), then SIGKILL if need be."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGABRT)
            try:
                return self.process.wait(timeout=DUMP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def wait(self, timeout: float) -> int:
        """The exit code, once it has exited within `timeout` seconds (an AssertionError with the
        child's output otherwise)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout:.0f}s later\n{self.tail()}") from None

    def terminate(self, timeout: float = STOP_GRACE) -> int:
        """SIGTERM and the exit code; SIGABRT then SIGKILL if it has not exited after `timeout`
        seconds (and an AssertionError: a process that ignores SIGTERM is a failure)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout:.0f}s and was aborted (its stacks are "
                                 f"at the end of its stderr)\n{self.tail()}") from None

    def wait_for(self, pattern: str, timeout: float, *, stream: str = "stderr") -> re.Match[str]:
        """The first match of the regular expression `pattern` in the child's stderr (or stdout),
        once it is there, within `timeout` seconds. Fails at once if the child exits without it."""
        read = self.stderr if stream == "stderr" else self.stdout
        compiled = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = compiled.search(read())
            if match is None and self.process.poll() is not None:
                match = compiled.search(read())  # written just before it exited
                if match is None:
                    raise AssertionError(f"{self.name} exited with {self.process.returncode} before its "
                                         f"{stream} said {pattern!r}\n{self.tail()}")
            return match

        return eventually(found, timeout, interval=0.05, what=f"{self.name}'s {stream} to say {pattern!r}")

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of each stream, with how the process stands."""
        code = self.process.poll()
        state = "running" if code is None else f"exited with {code}"
        parts = [f"== {self.name} (pid {self.pid}, {state}, {time.monotonic() - self.started:.1f}s since start): "
                 f"{' '.join(self.args)}"]
        for label, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            kept = text.splitlines()[-lines:]
            parts.append(f"-- {label} ({len(text.splitlines())} lines, last {len(kept)}):")
            parts.extend(kept)
        return "\n".join(parts)


class Children:
    """The child processes of one test: started through it, all stopped by `stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started: list[Child] = []

    def start(self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        """Start a child; `name` (unique in the test) names its output files and its report section."""
        if any(child.name == name for child in self.started):
            raise ValueError(f"a child named {name!r} was already started in this test")
        child = Child(name, args, self.directory, env, cwd)
        self.started.append(child)
        return child

    def run(self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a child to its end, like `subprocess.run(capture_output=True, text=True)`; its output
        stays in the report too. One that outlives `timeout` is killed and fails the test."""
        child = self.start(name, args, env=env)
        try:
            code = child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise AssertionError(f"{name} did not finish within {timeout:.0f}s\n{child.tail()}") from None
        return subprocess.CompletedProcess(child.args, code, child.stdout(), child.stderr())

    def report(self) -> str:
        return "\n\n".join(child.tail() for child in self.started)

    def stop_all(self, grace: float = STOP_GRACE) -> list[str]:
        """SIGTERM to every child still running, SIGABRT (then SIGKILL) to those still running
        `grace` seconds later; returns the names of those that had to be aborted."""
        running = [child for child in self.started if child.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = []
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.abort()
                killed.append(child.name)
        return killed
