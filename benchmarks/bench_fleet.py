"""Benchmark: reconcile cycles of a fleet (issue 12), 10 servers beside 1, against real Git and the
stand-in Ollama servers (each its own HTTP server on loopback, in this process).

Steady state, for each fleet size (1 server, then 10), with the same models repository of
--models files (`model<i>:1b`, every one on every server except `model0`, whose file says
`servers: {matchLabels: {slot: "0"}}`, so it is placed on server `s0` alone):

  - every model is already installed on every server; the first (full, cold) cycle is run, untimed,
    and must pull nothing;
  - then one untimed warm-up round plus --repeat timed rounds (medians reported), each round:
      push:              `model0`'s file gets a new `refreshRequestedAt` (a re-pull there), not timed
      one-change cycle:  `run_cycle()` fetching that commit; the HTTP requests it (and the pull it
                         starts, waited for) makes are counted per server: only `s0` may be asked
      no-op cycle:       `run_cycle()` with nothing new; must be `report.noop`
      full resync:       the clock moved past --resync-interval, `run_cycle()` lists every server
                         (in parallel) and plans every model on each; must be `report.full`

Cold fill, for each fleet size (1 server, then 10): --fill-models models in each server's
catalogue, none installed, every pull slowed by the stand-in (--pull-delay seconds between its
progress lines, as a download takes time); timed from the first cycle to every pull done, then a
cycle must find every model Ready on every server. Pulls run --concurrency at a time per server.

Bars (printed as PASS/FAIL):
  - no-op cycle at 10 servers <= 1.5x the no-op cycle at 1 server;
  - the one-change cycle makes requests only to the server the change selects (`s0`);
  - cold fill of 10 servers <= 1.5x the cold fill of 1 server (every server busy at once).

Run from the repository root:

    python benchmarks/bench_fleet.py                 # 10 vs 1 server, 1,000 models; fill 100; 5 repeats
    python benchmarks/bench_fleet.py --repeat 9 --json fleet.json --check
    python benchmarks/bench_fleet.py --smoke         # 3 vs 1 server, 20 models; fill 6; 1 repeat
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the stand-in lives in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, generate, git, model_text, verdict  # noqa: E402

NOOP_BAR = 1.5  # no-op cycle at the larger fleet / at 1 server
FILL_BAR = 1.5  # cold fill of the larger fleet / of 1 server
MODEL_SIZE = 1_234_567_890
RESYNC = 300.0
PLACED = 'servers:\n  matchLabels: {slot: "0"}\n'  # model0's placement: server s0 alone


class Clock:
    """The reconciler's clock, moved by hand to make a resync due."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _model0(refresh: int | None) -> str:
    text = model_text(0) + PLACED
    if refresh is not None:
        text += f'refreshRequestedAt: "2026-12-01T00:{refresh // 60:02d}:{refresh % 60:02d}Z"\n'
    return text


def _fleet(servers: int, catalogue: Callable[[object], None]) -> list:
    from standins.ollama_server import OllamaStandin

    ollamas = []
    for _ in range(servers):
        ollama = OllamaStandin().start()
        catalogue(ollama)
        ollamas.append(ollama)
    return ollamas


def _reconciler(remote: Path, state: Path, ollamas: list, clock: Clock, concurrency: int):  # type: ignore[no-untyped-def]
    from ollama_gitops.reconciler.git.repo import GitRepo
    from ollama_gitops.reconciler.ollama.inventory import Inventory, Server, StaticInventory
    from ollama_gitops.reconciler.reconcile import Reconciler
    from ollama_gitops.reconciler.state import StateStore

    store = StateStore(state)
    store.acquire_process_lock()
    inventory = Inventory(tuple(Server(f"s{j}", o.url, {"slot": str(j)}) for j, o in enumerate(ollamas)))
    return Reconciler(GitRepo(str(remote), "main", state / "clone.git"), StaticInventory(inventory), store,
                      resync_interval=RESYNC, clock=clock, concurrency=concurrency)


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def steady(servers: int, models: int, repeat: int) -> dict:
    """No-op, one-change and full-resync cycles of `servers` servers keeping `models` models."""
    from ollama_gitops.reconciler.state import READY

    with tempfile.TemporaryDirectory(prefix=f"bench-fleet-{servers}-") as tmp:
        parent = Path(tmp)
        remote, _ = generate(parent, models, lambda i: f"models/default/model{i}-1b.yaml")
        work = parent / "work"
        git("clone", "-q", str(remote), str(work))
        changed = work / "models/default/model0-1b.yaml"
        changed.write_text(_model0(None))
        git("commit", "-q", "-a", "-m", "model0 on s0 only", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)

        def installed(ollama) -> None:  # type: ignore[no-untyped-def]
            for i in range(models):
                ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
                ollama.install(f"model{i}:1b", MODEL_SIZE)

        ollamas = _fleet(servers, installed)
        clock = Clock()
        reconciler = _reconciler(remote, parent / "state", ollamas, clock, concurrency=2)
        try:
            report = reconciler.run_cycle()
            assert report.ok and report.full, report.message
            assert reconciler.pulls.wait(timeout=120)
            assert not any(sum(o.pull_count.values()) for o in ollamas), "the cold cycle pulled"
            records = reconciler.store.records()
            assert len(records) == models and all(
                s.state == READY for r in records.values() for s in r.servers.values()), "not every model Ready"
            samples: dict[str, list[float]] = {"change": [], "noop": [], "resync": []}
            change_requests: list[list[int]] = []
            for round_ in range(repeat + 1):
                changed.write_text(_model0(round_ + 1))
                git("commit", "-q", "-a", "-m", f"refresh {round_ + 1}", cwd=work)
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                clock.now += 1
                before = [len(o.requests) for o in ollamas]
                change_s, report = _timed(reconciler.run_cycle)
                assert report.ok and not report.noop and not report.full, report.message
                assert reconciler.pulls.wait(timeout=120)
                requests = [len(o.requests) - b for o, b in zip(ollamas, before)]
                clock.now += 1
                noop_s, report = _timed(reconciler.run_cycle)
                assert report.ok and report.noop, report.message
                clock.now += RESYNC + 1
                resync_s, report = _timed(reconciler.run_cycle)
                assert report.ok and report.full, report.message
                if round_ > 0:
                    samples["change"].append(change_s)
                    samples["noop"].append(noop_s)
                    samples["resync"].append(resync_s)
                    change_requests.append(requests)
            assert ollamas[0].pull_count["model0:1b"] == repeat + 1, "the refresh was not pulled on s0"
        finally:
            reconciler.close()
            reconciler.store.release_process_lock()
            for ollama in ollamas:
                ollama.stop()
    return {"servers": servers, "models": models, "samples_s": samples,
            "median_s": {k: statistics.median(v) for k, v in samples.items()},
            "change_requests_per_server": change_requests}


def cold_fill(servers: int, models: int, pull_delay: float, concurrency: int) -> dict:
    """From nothing installed to `models` models on each of `servers` servers."""
    from ollama_gitops.reconciler.state import READY

    with tempfile.TemporaryDirectory(prefix=f"bench-fleet-fill-{servers}-") as tmp:
        parent = Path(tmp)
        remote, _ = generate(parent, models, lambda i: f"models/default/model{i}-1b.yaml")

        def catalogue(ollama) -> None:  # type: ignore[no-untyped-def]
            for i in range(models):
                ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.set_pull_delay(pull_delay)

        ollamas = _fleet(servers, catalogue)
        reconciler = _reconciler(remote, parent / "state", ollamas, Clock(), concurrency=concurrency)
        try:
            def fill() -> None:
                report = reconciler.run_cycle()
                assert report.ok, report.message
                assert reconciler.pulls.wait(timeout=1800), "the pulls did not end"

            fill_s, _ = _timed(fill)
            report = reconciler.run_cycle()
            assert report.ok, report.message
            records = reconciler.store.records()
            ready = sum(1 for r in records.values() for s in r.servers.values() if s.state == READY)
            assert ready == models * servers, f"{ready} of {models * servers} Ready after the fill"
            pulls = [sum(o.pull_count.values()) for o in ollamas]
            assert pulls == [models] * servers, pulls
        finally:
            reconciler.close()
            reconciler.store.release_process_lock()
            for ollama in ollamas:
                ollama.stop()
    return {"servers": servers, "models": models, "fill_s": fill_s, "pulls_per_server": pulls}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def report(one: dict, many: dict, fill_one: dict, fill_many: dict, repeat: int) -> list[dict]:
    n = many["servers"]
    print(f"\nFleet cycles, {one['models']:,} models: medians of {repeat} (ms), 1 server beside {n}")
    print(f"  {'cycle':<18}{'1 server':>14}{f'{n} servers':>14}{'ratio':>10}")
    for name, label in (("noop", "no-op"), ("change", "one-change"), ("resync", "full resync")):
        a, b = one["median_s"][name], many["median_s"][name]
        print(f"  {label:<18}{_ms(a):>14}{_ms(b):>14}{b / a:>9.2f}x")
    asked = sorted({tuple(r) for r in many["change_requests_per_server"]})
    print(f"  one-change cycle's requests per server (s0..s{n - 1}): {', '.join(map(str, asked))}")
    ratio = fill_many["fill_s"] / fill_one["fill_s"]
    print(f"\nCold fill, {fill_one['models']:,} models per server: 1 server {fill_one['fill_s']:.2f} s, "
          f"{n} servers {fill_many['fill_s']:.2f} s ({ratio:.2f}x); pulls per server {fill_many['pulls_per_server']}")
    noop = many["median_s"]["noop"] / one["median_s"]["noop"]
    only_s0 = all(r[0] > 0 and not any(r[1:]) for r in many["change_requests_per_server"])
    bars = [
        {"bar": f"no-op cycle at {n} servers <= {NOOP_BAR:g}x at 1 server", "value": noop, "limit": NOOP_BAR,
         "ok": noop <= NOOP_BAR},
        {"bar": "one-change cycle asks only the server the change selects (s0)", "value": None, "limit": None,
         "ok": only_s0},
        {"bar": f"cold fill of {n} servers <= {FILL_BAR:g}x one server's", "value": ratio, "limit": FILL_BAR,
         "ok": ratio <= FILL_BAR},
    ]
    print("\nBars:")
    for bar in bars:
        value = f": {bar['value']:.2f}x (limit {bar['limit']:g}x)" if bar["value"] is not None else ""
        print(f"  {verdict(bar['ok'])}  {bar['bar']}{value}")
    return bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10, help="the larger fleet (beside 1 server)")
    parser.add_argument("--models", type=int, default=1_000, help="model files for the steady-state cycles")
    parser.add_argument("--fill-models", type=int, default=100, help="models per server for the cold fill")
    parser.add_argument("--pull-delay", type=float, default=0.02,
                        help="seconds the stand-in waits between a pull's progress lines")
    parser.add_argument("--concurrency", type=int, default=2, help="pulls at a time per server (the default's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--smoke", action="store_true", help="3 servers, 20 models, fill 6, one repeat")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    args = parser.parse_args(argv)
    if args.smoke:
        args.servers, args.models, args.fill_models, args.repeat, args.pull_delay = 3, 20, 6, 1, 0.005
    if args.servers < 2 or args.models < 1 or args.fill_models < 1 or args.repeat < 1:
        parser.error("--servers must be at least 2, --models, --fill-models and --repeat at least 1")
    os.environ.update(GIT_ENV)
    print(f"steady state: 1 and {args.servers} servers, {args.models:,} models...", file=sys.stderr, flush=True)
    one, many = steady(1, args.models, args.repeat), steady(args.servers, args.models, args.repeat)
    print(f"cold fill: 1 and {args.servers} servers, {args.fill_models:,} models each...", file=sys.stderr, flush=True)
    fill_one = cold_fill(1, args.fill_models, args.pull_delay, args.concurrency)
    fill_many = cold_fill(args.servers, args.fill_models, args.pull_delay, args.concurrency)
    bars = report(one, many, fill_one, fill_many, args.repeat)
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "bench_fleet", "python": sys.version.split()[0], "platform": platform.platform(),
            "git": git("--version").decode().strip(), "cpus": os.cpu_count(), "options": vars(args) | {"json": None},
            "steady": [one, many], "cold_fill": [fill_one, fill_many], "bars": bars,
            "all_pass": all(b["ok"] for b in bars)}, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
