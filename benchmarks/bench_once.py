"""Benchmark: `ollama-gitops reconcile --once` when nothing changed, beside a bare `git fetch`.

For each size (default 1,000, 10,000 and 100,000 model files in `models/default/`), set-up (not
timed): a models repository made with `git fast-import` (`benchrepos.generate`) in a bare remote; the
stand-in Ollama (in this process, on loopback) with every model installed; one `reconcile --once` on a
fresh state directory (its full first cycle finds every model there: all Ready); a bare clone of the
remote for the baseline. Then `--rounds` rounds, each timing, in turn:

  (1)  bare      `git fetch origin` in that clone: nothing to fetch (the baseline);
  (2)  --once    `ollama-gitops reconcile --once` as a subprocess: its cycle ends after the fetch,
                 from the recorded state (no model file read, no Ollama request: both checked, the
                 requests counted at the stand-in);
  (3)  interpreter  the same interpreter started with nothing to run (`python -c pass`): the part of (2)
                 no Python program can avoid;
  (3b) imports   the same interpreter importing the modules a no-op `reconcile --once` loaded (this
                 project's, as an untimed no-op run listed them, with the standard library's they
                 import: the CLI, `uptodate`, which decides before the reconciler is imported, and
                 what it calls);
  (3c) least     the least a Python program can do for the same answer: import `json`, `os` and
                 `subprocess`, read `sync.json`, run the same fetch, write `sync.json` back (to a
                 copy) through a temporary file: no options, no logging, no checks;
  (4)  --full    `ollama-gitops reconcile --once --full`: every server listed, every model planned
                 (what every `--once` cost before), for reference.

Printed per size: the medians, (2)/(1), (3c)/(1), (2)/(3c) and (4)/(1), and (2) less (3), and less (3b), over (1); the
imports' own time ((3b) less (3)) and what is left of (2) after them (its git commands and its own
work), with the number of git commands a no-op `--once` runs (counted in that untimed run by a `git`
first on PATH); and the growth exponent of each fitted over the sizes (least squares of log time
against log size). Numbers, not assertions: the suite smoke-runs this script (`--smoke`: 10 and 100
models, 1 round).

    python benchmarks/bench_once.py                         # 1,000, 10,000 and 100,000; 5 rounds
    python benchmarks/bench_once.py --sizes 1000,10000 --rounds 3
    python benchmarks/bench_once.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests", Path(__file__).resolve().parent):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from benchrepos import GIT_ENV, exponent, generate, git  # noqa: E402

MODEL_SIZE = 1_234_567_890  # bytes the stand-in reports for every model
COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
# An untimed no-op `--once` in one interpreter: this project's modules it loaded, in the order it loaded them.
PROBE = """
import contextlib, io, json, sys
from ollama_gitops.api.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["reconcile", "--once"])
print(json.dumps({"code": code, "out": out.getvalue(), "loaded": [m for m in sys.modules if m.startswith("ollama_gitops")]}))
"""
# (3c): the least a Python program does to answer as a no-op `--once` does; argv: state, clone, copy.
LEAST = """
import json, os, subprocess, sys
state, clone, copy = sys.argv[1:]
with open(os.path.join(state, "sync.json"), encoding="utf-8") as handle:
    summary = json.load(handle)
subprocess.run(["git", "fetch", "-q", "origin"], cwd=clone, check=True)
with open(copy + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(summary, handle)
os.replace(copy + ".tmp", copy)
"""
# A `git` first on PATH that notes each command it runs, then runs the real one.
GIT_SHIM = '#!/bin/sh\necho "$3" >> "$GIT_SHIM_LOG"\nexec {git} "$@"\n'


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return elapsed, result


def bench(parent: Path, size: int, rounds: int) -> dict:
    from standins.ollama_server import OllamaStandin

    remote, _ = generate(parent, size, lambda i: f"models/default/model{i}-1b.yaml")
    clone = parent / "bare-clone.git"
    git("clone", "-q", "--bare", str(remote), str(clone))
    ollama = OllamaStandin().start()
    try:
        for i in range(size):
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        # Children write their bytecode: a stale one left by PYTHONDONTWRITEBYTECODE is compiled every time.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OLLAMA_", "KUBERNETES_")) and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(GIT_ENV)
        env.update({"OLLAMA_GITOPS_REPO": str(remote), "OLLAMA_GITOPS_STATE_DIR": str(parent / "state"),
                    "OLLAMA_GITOPS_OLLAMA_URL": ollama.url, "OLLAMA_GITOPS_KUBERNETES": "off",
                    "OLLAMA_GITOPS_RESYNC_INTERVAL": "86400", "HOME": str(parent / "home")})
        settle_s, first = timed([COMMAND, "reconcile", "--once"], env)
        if f"{size} already in Ollama" not in first.stdout:
            raise SystemExit(f"the first cycle did not find every model:\n{first.stdout[-2000:]}")
        imports, git_commands = probe(parent, env)
        times: dict[str, list[float]] = {"bare": [], "once": [], "interpreter": [], "imports": [], "least": [],
                                         "full": []}
        requests_per_once: list[int] = []
        for _ in range(rounds):
            times["bare"].append(timed(["git", "fetch", "-q", "origin"], env, cwd=clone)[0])
            before = len(ollama.requests)
            seconds, once = timed([COMMAND, "reconcile", "--once"], env)
            requests_per_once.append(len(ollama.requests) - before)
            if ": up to date at " not in once.stdout or "action=cycle" in once.stderr:
                raise SystemExit(f"--once did not stop after the fetch:\n{once.stdout[-2000:]}{once.stderr[-2000:]}")
            times["once"].append(seconds)
            times["interpreter"].append(timed([sys.executable, "-c", "pass"], env)[0])
            times["imports"].append(timed([sys.executable, "-c", imports], env)[0])
            times["least"].append(timed([sys.executable, "-c", LEAST, str(parent / "state"), str(clone),
                                         str(parent / "sync-copy.json")], env)[0])
            seconds, full = timed([COMMAND, "reconcile", "--once", "--full"], env)
            if "full=True" not in full.stderr:
                raise SystemExit(f"--once --full was not a full cycle:\n{full.stderr[-2000:]}")
            times["full"].append(seconds)
    finally:
        ollama.stop()
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    return {"size": size, "settle_s": settle_s, "requests_per_once": max(requests_per_once),
            "git_commands": git_commands, **medians}


def probe(parent: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """One untimed no-op `--once`: the statement importing the modules of this project it loaded,
    and the git commands it ran."""
    shim, log = parent / "git-shim", parent / "git-shim.log"
    shim.mkdir()
    (shim / "git").write_text(GIT_SHIM.format(git=shutil.which("git")))
    (shim / "git").chmod(0o755)
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600,
                         env={**env, "PATH": f"{shim}{os.pathsep}{env.get('PATH', '')}", "GIT_SHIM_LOG": str(log)})
    result = json.loads(run.stdout) if run.returncode == 0 else {}
    if result.get("code") != 0 or ": up to date at " not in result.get("out", ""):
        raise SystemExit(f"the probing --once did not stop after the fetch:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return "import " + ", ".join(result["loaded"]), log.read_text().split()


def report(results: list[dict], rounds: int) -> None:
    commands = sorted({" ".join(r["git_commands"]) for r in results})
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{rounds} round(s), medians; every --once stopped after the fetch (up to date), with "
          f"{max(r['requests_per_once'] for r in results)} Ollama requests and the git commands "
          f"{' / '.join(commands)}")
    head = ("models", "bare fetch ms", "--once ms", "--once/fetch", "least ms", "least/fetch", "--once/least",
            "interpreter ms", "(--once-interpreter)/fetch",
            "imports ms", "(--once-imports)/fetch", "imports' own ms", "rest ms", "git commands",
            "--once --full ms", "--full/fetch")
    rows = [(f"{r['size']:,}", f"{r['bare'] * 1000:,.1f}", f"{r['once'] * 1000:,.1f}", f"{r['once'] / r['bare']:.1f}x",
             f"{r['least'] * 1000:,.1f}", f"{r['least'] / r['bare']:.1f}x", f"{r['once'] / r['least']:.2f}x",
             f"{r['interpreter'] * 1000:,.1f}", f"{max(0.0, r['once'] - r['interpreter']) / r['bare']:.1f}x",
             f"{r['imports'] * 1000:,.1f}", f"{max(0.0, r['once'] - r['imports']) / r['bare']:.1f}x",
             f"{max(0.0, r['imports'] - r['interpreter']) * 1000:,.1f}", f"{max(0.0, r['once'] - r['imports']) * 1000:,.1f}",
             f"{len(r['git_commands'])}", f"{r['full'] * 1000:,.1f}", f"{r['full'] / r['bare']:.1f}x") for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join("{:>%d}" % w for w in widths)
    print(line.format(*head))
    for row in rows:
        print(line.format(*row))
    fits = {label: exponent([(r["size"], r[key]) for r in results])
            for label, key in (("bare fetch", "bare"), ("--once", "once"), ("interpreter", "interpreter"),
                               ("imports", "imports"), ("least", "least"),
                               ("--once --full", "full"))}
    print("Growth exponents (time ~ models^k, fitted over the sizes): "
          + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in fits.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="model files, comma-separated")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per size (default 5; --smoke: 1)")
    parser.add_argument("--smoke", action="store_true", help="10 and 100 models, 1 round")
    args = parser.parse_args(argv)
    sizes = [10, 100] if args.smoke else [int(s) for s in args.sizes.split(",")]
    rounds = args.rounds or (1 if args.smoke else 5)
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-once-{size}-") as tmp:
            results.append(bench(Path(tmp), size, rounds))
        print(f"  {size:,} models done (first, full cycle {results[-1]['settle_s']:.1f}s)", file=sys.stderr)
    report(results, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
