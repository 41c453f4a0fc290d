"""Benchmark: the plan of a pull request (`GET /api/v1/plan?ref=BRANCH`, issue 13) next to the
one-change reconcile cycle that applying it costs, in one run.

Every size is set up side by side in one process, and their rounds interleaved (so that the
machine's load, shared with others, falls alike on each). For each size (number of model files):

  - generates a models repository with `git fast-import` (as bench_reconcile.py does) and pushes it
    to a bare remote; a working clone makes the changes;
  - starts the stand-in Ollama with every model installed and `serve` in-process (the real
    `api.runtime.start`: waitress on loopback, the API's clone and the reconciler's, no schedules),
    and runs its first, full cycle;
  - then one untimed warm-up round plus --repeat timed rounds (medians reported), each:
      branch:       the working clone removes model<n>'s file on a new branch `pr-<n>` and pushes it
                    (not timed)
      (1) plan:     `GET /api/v1/plan?ref=pr-<n>` over HTTP: the ref fetched into the API's clone,
                    loaded, planned against the live state; must show that one model's removal
      merge:        the same commit pushed to main, the API's own fetch of it (not timed)
      (2) cycle:    `run_cycle()` that fetches and applies that commit: the one-change cycle
    Ollama's request log is checked: a plan asks nothing of Ollama.

Bars (PASS/FAIL), ratios from the same run:
  - the plan at the largest size <= 1.5x the one-change cycle at that size;
  - the plan at the largest size <= 2x the plan at the smallest size (its cost grows with the
    change, not with the repository).

    python benchmarks/bench_plan.py                 # 100 and 10000; 5 repeats
    python benchmarks/bench_plan.py --smoke         # 10 and 100, 1 repeat
    python benchmarks/bench_plan.py --json out.json --check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, generate, git, verdict  # noqa: E402

DEFAULT_SIZES = (100, 10_000)
SMOKE_SIZES = (10, 100)
CYCLE_BAR = 1.5  # plan / one-change cycle, at the largest size
GROWTH_BAR = 2.0  # plan at the largest size / plan at the smallest
NAMESPACES = 10
MODEL_SIZE = 1_234_567_890


def model_path(i: int, size: int) -> str:
    return f"models/ns-{i % min(NAMESPACES, size)}/model{i}-1b.yaml"


class Setup:
    """One size: its repository, the stand-in Ollama with every model, and `serve` in-process."""

    def __init__(self, size: int, parent: Path) -> None:
        import httpx

        from apirig import settings_for
        from ollama_gitops.api import runtime
        from standins.ollama_server import OllamaStandin

        self.size = size
        remote, _ = generate(parent, size, lambda i: model_path(i, size))
        self.work = parent / "work"
        git("clone", "-q", str(remote), str(self.work))
        self.ollama = OllamaStandin().start()
        for i in range(size):
            self.ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            self.ollama.install(f"model{i}:1b", MODEL_SIZE)
        settings = settings_for(parent / "state", str(remote), self.ollama.url)
        options = runtime.ApiOptions("127.0.0.1:0", None, "default", "Bench <bench@example.com>", False)
        self.running = runtime.start(settings, options, with_reconciler=True, schedules=False)
        self.client = httpx.Client(base_url=self.running.server.url, timeout=120)
        assert self.running.service is not None
        self.reconciler = self.running.service.reconciler
        self.running.repository.refresh()
        assert self.reconciler.run_cycle().ok
        self.samples: dict[str, list[float]] = {"plan": [], "cycle": []}

    def round(self, n: int, timed: bool) -> None:
        """Plan a branch that removes model<n>'s file, then merge it and time the cycle applying it."""
        path = model_path(n, self.size)
        git("checkout", "-q", "-b", f"pr-{n}", "main", cwd=self.work)
        git("rm", "-q", path, cwd=self.work)
        git("commit", "-q", "-m", f"remove {path}", cwd=self.work)
        git("push", "-q", "origin", f"pr-{n}", cwd=self.work)

        before = len(self.ollama.requests)
        gc.collect()
        started = time.perf_counter()
        answer = self.client.get("/api/v1/plan", params={"ref": f"pr-{n}"})
        plan_s = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
        actions = answer.json()["actions"]
        assert [a["model"] for a in actions] == [f"ns-{n % min(NAMESPACES, self.size)}/model{n}-1b"], actions
        assert len(self.ollama.requests) == before, self.ollama.requests[before:]  # a plan asks Ollama nothing

        git("checkout", "-q", "main", cwd=self.work)
        git("merge", "-q", "--ff-only", f"pr-{n}", cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        self.running.repository.refresh()
        gc.collect()
        started = time.perf_counter()
        report = self.reconciler.run_cycle()
        cycle_s = time.perf_counter() - started
        assert report.ok and not report.noop and not report.full, (report.message, report.full)
        if timed:
            self.samples["plan"].append(plan_s)
            self.samples["cycle"].append(cycle_s)

    def close(self) -> None:
        self.client.close()
        self.running.stop()
        self.ollama.stop()

    def result(self) -> dict:
        return {"size": self.size, "samples_s": self.samples,
                "median_s": {name: statistics.median(values) for name, values in self.samples.items()}}


def bench(sizes: tuple[int, ...], repeat: int) -> list[dict]:
    """Every size set up side by side in this process, their rounds interleaved, so that a change in
    the machine's load falls on every size alike (the ratios compare sizes within one run)."""
    os.environ.update(GIT_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        setups = []
        try:
            for size in sizes:
                print(f"size {size:,}: generating, serve, cold cycle...", file=sys.stderr, flush=True)
                (Path(tmp) / str(size)).mkdir()
                setups.append(Setup(size, Path(tmp) / str(size)))
            for n in range(repeat + 1):  # round 0 warms up
                for setup in setups:
                    setup.round(n, timed=n > 0)
        finally:
            for setup in setups:
                setup.close()
        return [setup.result() for setup in setups]


def evaluate(results: list[dict]) -> list[dict]:
    small, large = results[0], results[-1]
    to_cycle = large["median_s"]["plan"] / large["median_s"]["cycle"]
    growth = large["median_s"]["plan"] / small["median_s"]["plan"]
    return [
        {"bar": f"plan / one-change cycle at {large['size']:,} models", "value": to_cycle, "limit": CYCLE_BAR,
         "ok": to_cycle <= CYCLE_BAR},
        {"bar": f"plan at {large['size']:,} / plan at {small['size']:,} models", "value": growth, "limit": GROWTH_BAR,
         "ok": growth <= GROWTH_BAR},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated model counts")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per size (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, one repeat")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    args = parser.parse_args(argv)
    sizes = SMOKE_SIZES if args.smoke else tuple(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    repeat = 1 if args.smoke else args.repeat
    results = bench(sizes, repeat)
    bars = evaluate(results)
    print(f"\nPlan of a one-file change (GET /api/v1/plan, HTTP) and the one-change cycle applying it; "
          f"medians of {repeat}, sizes interleaved")
    print("| models | plan | one-change cycle | plan / cycle |")
    print("| --- | --- | --- | --- |")
    for r in results:
        m = r["median_s"]
        print(f"| {r['size']:,} | {m['plan'] * 1000:.1f} ms | {m['cycle'] * 1000:.1f} ms | {m['plan'] / m['cycle']:.2f}x |")
    print("\nBars:")
    for bar in bars:
        print(f"  {verdict(bar['ok'])}  {bar['bar']}: {bar['value']:.2f}x (limit {bar['limit']:g}x)")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "bench_plan", "repeat": repeat, "results": results,
                                         "bars": bars}, indent=2))
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
