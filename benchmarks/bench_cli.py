"""Benchmark: how long the quick commands take to answer, against the imports they cannot avoid.

Each command is started as a user starts it, a fresh `python -m ollama_gitops ...` process (the
console script runs the same `main`), N times; the median wall time of each is compared with the
median of a bare `python -c 'import yaml, jsonschema, git'` (the libraries every command needs)
measured in the same run, interleaved so that machine noise hits them alike:

  baseline        python -c 'import yaml, jsonschema, git'
  --help          ollama-gitops --help
  status --help   ollama-gitops status --help
  status (down)   ollama-gitops status --api-url http://127.0.0.1:PORT, nothing listening: exits 2
  validate        ollama-gitops validate examples/models-repo

Bar: each command within 2x of the baseline (issue 15). Which modules the commands import is
asserted by tests/test_cli_imports.py; these numbers are read by people.

Run from the repository root:

    python benchmarks/bench_cli.py               # 15 runs each
    python benchmarks/bench_cli.py --repeat 31
    python benchmarks/bench_cli.py --smoke       # 2 runs each
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR = 2.0


def commands(down_url: str) -> dict[str, tuple[list[str], int]]:
    """name: (argv after the interpreter, the exit code it must give)."""
    cli = ["-m", "ollama_gitops"]
    return {
        "baseline": (["-c", "import yaml, jsonschema, git"], 0),
        "--help": ([*cli, "--help"], 0),
        "status --help": ([*cli, "status", "--help"], 0),
        "status (down)": ([*cli, "status", "--api-url", down_url], 2),
        "validate": ([*cli, "validate", str(ROOT / "examples" / "models-repo")], 0),
    }


def run_once(argv: list[str], expected: int, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != expected:
        raise SystemExit(f"{argv} exited {result.returncode}, expected {expected}:\n{result.stdout}{result.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs of each command (default 15; --smoke: 2)")
    parser.add_argument("--smoke", action="store_true", help="quick run: 2 runs each")
    args = parser.parse_args(argv)
    repeat = args.repeat or (2 if args.smoke else 15)
    # The checkout first on the path: it runs uninstalled too. No OLLAMA_GITOPS_* from the caller.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_GITOPS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with socket.socket() as closed:  # bound, never listening: a connection to it is refused at once
        closed.bind(("127.0.0.1", 0))
        table = commands(f"http://127.0.0.1:{closed.getsockname()[1]}")
        times: dict[str, list[float]] = {name: [] for name in table}
        for name, (command, expected) in table.items():  # warm-up: page cache, .pyc files
            run_once(command, expected, env)
        for _ in range(repeat):
            for name, (command, expected) in table.items():
                times[name].append(run_once(command, expected, env))
    base = statistics.median(times["baseline"])
    print(f"python {sys.version.split()[0]}, {repeat} runs each, medians")
    print(f"{'command':<16} {'median':>9} {'min':>9} {'max':>9} {'x baseline':>11}")
    worst = 0.0
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = median / base
        worst = max(worst, ratio if name != "baseline" else 0.0)
        print(f"{name:<16} {median * 1000:>7.0f}ms {min(samples) * 1000:>7.0f}ms {max(samples) * 1000:>7.0f}ms "
              f"{ratio:>10.2f}x")
    print(f"worst {worst:.2f}x the baseline (bar: {BAR:.1f}x): {'within' if worst <= BAR else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
