"""Benchmark: reconcile cycles (`reconciler.reconcile.Reconciler.run_cycle`) against real Git and the
stand-in Ollama server, next to the bare `git fetch` they are built on.

For each layout and size (number of model files) a child process (so that peak RSS is its own):

  - generates a models repository with `git fast-import` (each file `name: model<i>` / `tag: "1b"`)
    in one of the layouts (--layouts): `one`, every file in one folder (`models/default/model<i>-1b.yaml`);
    `hundred`, round-robin over 100 namespaces (`models/ns-<j>/...`); `ten`, over 10 (the spread
    this benchmark used before: not run by default) -- and pushes it to a bare remote
    (`git init --bare -b main`);
  - makes two plain `git clone`s of the remote: a working clone that commits and pushes the changes,
    and a fetch clone for the bare-fetch baseline;
  - starts the stand-in Ollama with every model in its catalogue and already installed, builds
    `Reconciler(GitRepo(remote, "main", state/"clone.git"), OllamaServer(url), StateStore(state),
    resync_interval=3600)` and runs the first (full, cold) cycle, timed, checking that every model
    ends Ready without a single pull;
  - then, for one untimed warm-up round plus --repeat timed rounds (medians reported), each round:
      push:            the working clone adds/changes `labels: {rev: "<n>"}` in one model file
                       (a new value every round), commits and pushes      -- not timed
      (2) change cycle: `run_cycle()` that fetches that commit; must be neither noop nor full;
                       the Ollama requests it made are counted from the stand-in's log
      (3a) bare fetch:  `git fetch origin main` of the same new commit into the fetch clone
      (1) no-op cycle:  `run_cycle()` with nothing new; must be `report.noop`, no Ollama request
      (3b) bare no-op:  `git fetch origin main` with nothing new
    so each cycle is timed right next to the bare fetch it is compared with. Before each timing the
    garbage collector is run (outside the timing) so that a collection left over from preparation
    does not land in it.

Bars (printed as PASS/FAIL):
  - no-op cycle <= 2x bare no-op fetch, at every size;
  - change cycle <= 1.3x the bare fetch of that commit, at every size of 10,000 models and more
    (issue 16: what a one-change cycle costs beyond the fetch grows with the change, not the size).
Printed beside them, per layout: the growth exponent of each series (least squares of log time
against log size), the change cycle's and the bare fetch's side by side.

Peak RSS: measured per size, as `ru_maxrss` (RUSAGE_SELF) of the child process that ran that size: the
Python process with the stand-in server thread, not its git subprocesses (RUSAGE_CHILDREN is left out:
on Linux a forked child inherits its parent's high-water mark, so it would only repeat this number).

Run from the repository root:

    python benchmarks/bench_reconcile.py                          # 10, 1000, 10000; both layouts; 5 repeats
    python benchmarks/bench_reconcile.py --sizes 10000,100000 --layouts one,hundred --repeat 3
    python benchmarks/bench_reconcile.py --smoke                  # 10 and 100, layout hundred, 1 repeat
    python benchmarks/bench_reconcile.py --json results.json --check
    python benchmarks/bench_reconcile.py --sizes 10000 --repeat 3 --profile noop   # cProfile to stderr
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the stand-in lives in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, exponent, generate, git, model_text, verdict  # noqa: E402

DEFAULT_SIZES = (10, 1_000, 10_000)
SMOKE_SIZES = (10, 100)
LAYOUTS = {"one": 1, "hundred": 100, "ten": 10}  # namespaces the files are spread over
DEFAULT_LAYOUTS = ("one", "hundred")
SMOKE_LAYOUTS = ("hundred",)
NOOP_BAR = 2.0  # no-op cycle / bare no-op fetch
CHANGE_BAR = 1.3  # change cycle / bare fetch of that commit
CHANGE_BAR_FROM = 10_000  # at this many models and more
MODEL_SIZE = 1_234_567_890  # bytes the stand-in reports for every model



# ---------------------------------------------------------------------------------------------
# Repositories
# ---------------------------------------------------------------------------------------------



def model_path(i: int, size: int, layout: str) -> str:
    if LAYOUTS[layout] == 1:
        return f"models/default/model{i}-1b.yaml"
    return f"models/ns-{i % min(LAYOUTS[layout], size)}/model{i}-1b.yaml"






def timedgit(*args: str, cwd: Path) -> float:
    gc.collect()
    started = time.perf_counter()
    git(*args, cwd=cwd)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# One size, in its own process
# ---------------------------------------------------------------------------------------------

def bench_size(size: int, layout: str, repeat: int, profile: str | None) -> dict:
    os.environ.update(GIT_ENV)
    from ollama_gitops.reconciler.git.repo import GitRepo
    from ollama_gitops.reconciler.ollama.server import OllamaServer
    from ollama_gitops.reconciler.reconcile import Reconciler
    from ollama_gitops.reconciler.state import READY, StateStore
    from standins.ollama_server import OllamaStandin

    with tempfile.TemporaryDirectory(prefix=f"bench-reconcile-{size}-") as tmp:
        parent = Path(tmp)
        remote, generate_s = generate(parent, size, lambda i: model_path(i, size, layout))
        work, fetch_clone, state = parent / "work", parent / "fetch-clone", parent / "state"
        git("clone", "-q", str(remote), str(work))
        git("clone", "-q", str(remote), str(fetch_clone))

        ollama = OllamaStandin().start()
        for i in range(size):
            ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        store = StateStore(state)
        store.acquire_process_lock()
        reconciler = Reconciler(GitRepo(str(remote), "main", state / "clone.git"), OllamaServer(ollama.url), store,
                                resync_interval=3600)
        profiler = cProfile.Profile() if profile else None
        try:
            # -- cold start: the first, full cycle ---------------------------------------------
            gc.collect()
            started = time.perf_counter()
            if profile == "cold":
                profiler.enable()
            report = reconciler.run_cycle()
            if profile == "cold":
                profiler.disable()
            cold_s = time.perf_counter() - started
            assert report.ok and report.full and not report.noop, report.message
            assert reconciler.pulls.wait(timeout=60)
            assert sum(ollama.pull_count.values()) == 0, f"the cold cycle pulled: {dict(ollama.pull_count)}"
            records = store.records()
            assert len(records) == size and all(r.servers["default"].state == READY for r in records.values()), \
                "not every model is Ready after the cold cycle"
            cold_requests = len(ollama.requests)

            # -- rounds: warm-up (round 0, discarded) + `repeat` timed ones -------------------------
            changed = model_path(0, size, layout)
            samples: dict[str, list[float]] = {"change_cycle": [], "change_fetch": [], "noop_cycle": [], "noop_fetch": []}
            change_requests: list[list[tuple[str, str]]] = []
            noop_requests: list[int] = []
            change_actions: list[list[str]] = []
            for round_ in range(repeat + 1):
                timed = round_ > 0
                last = round_ == repeat
                # push one change (not timed)
                (work / changed).write_text(model_text(0, rev=round_ + 1))
                git("commit", "-q", "-a", "-m", f"rev {round_ + 1}", cwd=work)
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                head = git("rev-parse", "HEAD", cwd=work).decode().strip()

                # (2) the cycle that fetches the change
                before = len(ollama.requests)
                gc.collect()
                started = time.perf_counter()
                if profile == "change" and last:
                    profiler.enable()
                report = reconciler.run_cycle()
                if profile == "change" and last:
                    profiler.disable()
                change_s = time.perf_counter() - started
                assert report.ok and not report.noop and not report.full and report.commit == head, \
                    (report.message, report.noop, report.full)
                assert reconciler.pulls.wait(timeout=60)
                requests = list(ollama.requests[before:])
                actions = sorted(type(a).__name__ for a in report.plan.actions) if report.plan else []

                # (3a) the bare fetch of the same commit
                change_fetch_s = timedgit("fetch", "-q", "origin", "main", cwd=fetch_clone)

                # (1) the no-op cycle
                before = len(ollama.requests)
                gc.collect()
                started = time.perf_counter()
                if profile == "noop" and last:
                    profiler.enable()
                report = reconciler.run_cycle()
                if profile == "noop" and last:
                    profiler.disable()
                noop_s = time.perf_counter() - started
                assert report.ok and report.noop and report.commit == head, (report.message, report.noop)

                # (3b) the bare no-op fetch
                noop_fetch_s = timedgit("fetch", "-q", "origin", "main", cwd=fetch_clone)

                if timed:
                    samples["change_cycle"].append(change_s)
                    samples["change_fetch"].append(change_fetch_s)
                    samples["noop_cycle"].append(noop_s)
                    samples["noop_fetch"].append(noop_fetch_s)
                    change_requests.append(requests)
                    noop_requests.append(len(ollama.requests) - before)
                    change_actions.append(actions)
            assert sum(ollama.pull_count.values()) == 0, f"a cycle pulled: {dict(ollama.pull_count)}"
        finally:
            reconciler.close()
            store.release_process_lock()
            ollama.stop()

    if profiler is not None:
        print(f"\n=== cProfile: {profile} cycle at {size} models (by cumulative time) ===", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)

    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "size": size,
        "layout": layout,
        "namespaces": min(LAYOUTS[layout], size),
        "repeat": repeat,
        "generate_s": generate_s,
        "cold_cycle_s": cold_s,
        "cold_ollama_requests": cold_requests,
        "samples_s": samples,
        "median_s": medians,
        "change_ollama_requests": [len(r) for r in change_requests],
        "change_ollama_request_log": [[f"{m} {p}" for m, p in r] for r in change_requests],
        "noop_ollama_requests": noop_requests,
        "change_plan_actions": change_actions,
        "noop_ratio": medians["noop_cycle"] / medians["noop_fetch"],
        "change_ratio": medians["change_cycle"] / medians["change_fetch"],
        "peak_rss_mib": self_kib / 1024,
    }


def run_child(size: int, layout: str, repeat: int, profile: str | None) -> dict:
    """Run one layout and size in a fresh interpreter so that its peak RSS is its own."""
    with tempfile.NamedTemporaryFile(prefix="bench-reconcile-", suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    try:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(size), "--layouts", layout,
                   "--repeat", str(repeat), "--child-out", str(out_path)]
        if profile:
            command += ["--profile", profile]
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"bench_reconcile: size {size:,}, layout {layout} failed (see the error above)")
        return json.loads(out_path.read_text())
    finally:
        out_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"




def evaluate(results: list[dict]) -> list[dict]:
    bars = []
    for r in results:
        where = f"at {r['size']:,} ({r['layout']})"
        bars.append({
            "bar": f"no-op cycle <= {NOOP_BAR:g}x bare no-op fetch {where}",
            "value": r["noop_ratio"], "limit": NOOP_BAR, "ok": r["noop_ratio"] <= NOOP_BAR,
        })
        if r["size"] >= CHANGE_BAR_FROM:
            bars.append({
                "bar": f"change cycle <= {CHANGE_BAR:g}x bare fetch of that commit {where}",
                "value": r["change_ratio"], "limit": CHANGE_BAR, "ok": r["change_ratio"] <= CHANGE_BAR,
            })
    return bars


def growth(results: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per layout, the fitted growth exponent of each series (time ~ models^k)."""
    fits = {}
    for layout in dict.fromkeys(r["layout"] for r in results):
        of = [r for r in results if r["layout"] == layout]
        fits[layout] = {series: exponent([(r["size"], r["median_s"][series]) for r in of])
                        for series in ("change_cycle", "change_fetch", "noop_cycle", "noop_fetch")}
    return fits


def print_table(results: list[dict], bars: list[dict], repeat: int) -> None:
    head = ("layout", "models", "cold cycle", "(2) change cyc", "(3a) fetch new", "(2)/(3a)", "(1) no-op cyc",
            "(3b) no-op fetch", "(1)/(3b)", "ollama req (2)", "peak RSS")
    rows = []
    for r in results:
        m = r["median_s"]
        requests = sorted(set(r["change_ollama_requests"]))
        rows.append((
            f"{r['layout']} ({r['namespaces']} ns)", f"{r['size']:,}", _ms(r["cold_cycle_s"]), _ms(m["change_cycle"]),
            _ms(m["change_fetch"]), f"{r['change_ratio']:.2f}x", _ms(m["noop_cycle"]), _ms(m["noop_fetch"]),
            f"{r['noop_ratio']:.2f}x", "/".join(map(str, requests)), f"{r['peak_rss_mib']:,.1f} MiB",
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join("{:>%d}" % w for w in widths)
    print(f"\nReconcile cycles: times in ms, median of {repeat} (cold cycle: one run)")
    print(line.format(*head))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print("\n  cold cycle: first run_cycle() of a fresh process (full: clone, load all, /api/tags, plan all, write all states)")
    print("  (2) change cycle: run_cycle() after a pushed commit changing one file; (3a) git fetch origin main of that commit")
    print("  (1) no-op cycle: run_cycle() with nothing new;                        (3b) git fetch origin main, nothing new")
    print("  ollama req (2): HTTP requests the change cycle made to Ollama; no-op cycles made "
          f"{'none' if all(n == 0 for r in results for n in r['noop_ollama_requests']) else 'SOME'}")
    print("  peak RSS: ru_maxrss of the child process that ran that size only (Python, stand-in Ollama thread included;"
          " git subprocesses not included)")
    fits = growth(results)
    if any(v is not None for f in fits.values() for v in f.values()):
        print("\nGrowth exponents (time ~ models^k, least squares over the sizes):")
        for layout, f in fits.items():
            said = ", ".join(f"{name} {'-' if k is None else f'{k:.2f}'}" for name, k in (
                ("(2) change cycle", f["change_cycle"]), ("(3a) its fetch", f["change_fetch"]),
                ("(1) no-op cycle", f["noop_cycle"]), ("(3b) its fetch", f["noop_fetch"])))
            print(f"  {layout}: {said}")
    print("\nBars:")
    for bar in bars:
        print(f"  {verdict(bar['ok'])}  {bar['bar']}: {bar['value']:.2f}x (limit {bar['limit']:g}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated model counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per size (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                        help=f"comma-separated layouts of the files: {', '.join(LAYOUTS)} (the number of namespaces)")
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, layout {','.join(SMOKE_LAYOUTS)}, one repeat")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    parser.add_argument("--profile", choices=("cold", "change", "noop"),
                        help="cProfile that cycle (last round of each size) and print the stats to stderr")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        sizes = SMOKE_SIZES if args.smoke else tuple(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        parser.error(f"--sizes must be comma-separated whole numbers, not {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs at least one size, each at least 1")
    layouts = SMOKE_LAYOUTS if args.smoke else tuple(name.strip() for name in args.layouts.split(",") if name.strip())
    if not layouts or any(name not in LAYOUTS for name in layouts):
        parser.error(f"--layouts takes {', '.join(LAYOUTS)}, not {args.layouts!r}")

    if args.child is not None:
        result = bench_size(args.child, layouts[0], args.repeat, args.profile)
        args.child_out.write_text(json.dumps(result))
        return 0

    repeat = 1 if args.smoke else args.repeat
    results = []
    for layout in layouts:
        for size in sizes:
            print(f"{layout}, size {size:,}: generating, cold cycle, 1 warm-up + {repeat} rounds...", file=sys.stderr,
                  flush=True)
            results.append(run_child(size, layout, repeat, args.profile))
    bars = evaluate(results)
    print_table(results, bars, repeat)
    if args.json:
        git_version = git("--version").decode().strip()
        args.json.write_text(json.dumps({
            "benchmark": "bench_reconcile", "repeat": repeat, "sizes": list(sizes), "layouts": list(layouts),
            "growth": growth(results),
            "python": sys.version.split()[0], "platform": platform.platform(), "git": git_version,
            "cpus": os.cpu_count(), "peak_rss": "per size, measured in a child process per size",
            "results": results, "bars": bars, "all_pass": all(b["ok"] for b in bars),
        }, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
