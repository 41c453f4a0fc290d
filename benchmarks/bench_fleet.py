"""Benchmark: reconcile cycles of a fleet (issues 12 and 16), 1, 10 and 100 servers, against real Git
and the stand-in Ollama servers (each its own HTTP server on loopback and its own port).

For the steady state, every fleet size's stand-ins run in a few child processes (STANDIN_PROCESSES;
real Ollama servers are other machines: in the benchmark's own process their JSON would compete with
the reconciler's for the GIL, and in one child they would answer one listing at a time); each caches
its `/api/tags` body until its models change (real Ollama is Go: building a hundred listings' JSON in
Python is the stand-in's cost, not the reconciler's). The cold fill keeps them in this process (it
measures pulls, which wait, not listings).

Steady state, for each fleet size (--servers, 1 first), with the same models repository of
--models files (`model<i>:1b`, every one on every server except `model0`, whose file says
`servers: {matchLabels: {slot: "0"}}`, so it is placed on server `s0` alone):

  - every model is already installed on every server; the first (full, cold) cycle is run, untimed,
    and must pull nothing;
  - then one untimed warm-up round plus --repeat timed rounds (medians reported), each round:
      push:              `model0`'s file gets a new `refreshRequestedAt` (a re-pull there), not timed
      one-change cycle:  `run_cycle()` fetching that commit; the HTTP requests it (and the pull it
                         starts, waited for) makes are counted per server: only `s0` may be asked
      no-op cycle:       `run_cycle()` with nothing new; must be `report.noop`
      resync:            the clock moved past the resync interval, `run_cycle()` lists every server
                         (in parallel, LISTING_THREADS at a time) and compares each listing with the
                         kept one: nothing changed but model0's re-pull on s0 (whose digest the
                         listing gives), so nothing else is planned; must be `report.full`
                         (also shown: the CPU time this process spent in it, its threads included,
                         which no listing concurrency divides on a machine of few cores)
      full cycle:        `run_cycle(full=True)`: every server listed and every model planned on
                         each, as after a crash or with `reconcile --once --full`

Cold fill, 1 server and --fill-servers: --fill-models models in each server's
catalogue, none installed, every pull slowed by the stand-in (--pull-delay seconds between its
progress lines, as a download takes time); timed from the first cycle to every pull done, then a
cycle must find every model Ready on every server. Pulls run --concurrency at a time per server.

Bars (printed as PASS/FAIL):
  - no-op cycle at every fleet size <= 1.5x the no-op cycle at 1 server;
  - the one-change cycle makes requests only to the server the change selects (`s0`);
  - a resync with nothing changed plans no model on any server (but model0's digest on s0, which
    the one-change cycle's re-pull left to the listing);
  - cold fill of --fill-servers servers <= 1.5x the cold fill of 1 server (every server busy at once).
Printed beside them: the resync's and the full cycle's growth exponent against the rounds of
listings, ceil(servers / LISTING_THREADS) (least squares of log time against log rounds: about 1
when the time is linear in servers divided by the listing concurrency).

Run from the repository root:

    python benchmarks/bench_fleet.py                 # 1, 10, 100 servers, 1,000 models; fill 100 on 10; 5 repeats
    python benchmarks/bench_fleet.py --repeat 9 --json fleet.json --check
    python benchmarks/bench_fleet.py --smoke         # 1 and 3 servers, 20 models; fill 6 on 3; 1 repeat
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
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

from benchrepos import GIT_ENV, exponent, generate, git, model_text, verdict  # noqa: E402

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


STANDIN_PROCESSES = 4  # child processes the steady state's stand-ins are spread over


class _Standins:
    """`servers` stand-in Ollamas spread over up to STANDIN_PROCESSES child processes (this script with
    --standins), each on its own port with every model installed, so that listings are answered
    concurrently as separate machines would (one process would answer them one at a time, its
    threads sharing one GIL); asked for their request and pull counts over pipes."""

    def __init__(self, servers: int, models: int) -> None:
        shares = [servers // STANDIN_PROCESSES + (i < servers % STANDIN_PROCESSES)
                  for i in range(min(servers, STANDIN_PROCESSES))]
        self._children = [subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--standins", str(share), "--models", str(models)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for share in shares]
        self.urls: list[str] = []
        for child in self._children:
            assert child.stdout is not None
            self.urls.extend(json.loads(child.stdout.readline()))

    def counts(self) -> list[tuple[int, int]]:
        """Per server, (requests so far, pulls of model0)."""
        for child in self._children:
            assert child.stdin is not None
            child.stdin.write("counts\n")
            child.stdin.flush()
        counts: list[tuple[int, int]] = []
        for child in self._children:
            assert child.stdout is not None
            counts.extend(tuple(pair) for pair in json.loads(child.stdout.readline()))
        return counts

    def stop(self) -> None:
        for child in self._children:
            assert child.stdin is not None
            child.stdin.close()
        for child in self._children:
            child.wait(timeout=60)


def serve_standins(servers: int, models: int) -> None:
    """The child's side of `_Standins`."""
    from standins.ollama_server import OllamaStandin

    ollamas = []
    for _ in range(servers):
        ollama = OllamaStandin().start()
        for i in range(models):
            ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        ollamas.append(ollama)
    print(json.dumps([o.url for o in ollamas]), flush=True)
    for line in sys.stdin:
        if line.strip() == "counts":
            print(json.dumps([(len(o.requests), o.pull_count["model0:1b"]) for o in ollamas]), flush=True)
    for ollama in ollamas:
        ollama.stop()


def _reconciler(remote: Path, state: Path, urls: list[str], clock: Clock, concurrency: int):  # type: ignore[no-untyped-def]
    from ollama_gitops.reconciler.git.repo import GitRepo
    from ollama_gitops.reconciler.ollama.inventory import Inventory, Server, StaticInventory
    from ollama_gitops.reconciler.reconcile import Reconciler
    from ollama_gitops.reconciler.state import StateStore

    store = StateStore(state)
    store.acquire_process_lock()
    inventory = Inventory(tuple(Server(f"s{j}", url, {"slot": str(j)}) for j, url in enumerate(urls)))
    return Reconciler(GitRepo(str(remote), "main", state / "clone.git"), StaticInventory(inventory), store,
                      resync_interval=RESYNC, clock=clock, concurrency=concurrency)


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def steady(servers: int, models: int, repeat: int) -> dict:
    """No-op, one-change, resync and full cycles of `servers` servers keeping `models` models."""
    from ollama_gitops.reconciler.ollama.fleet import LISTING_THREADS
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

        standins = _Standins(servers, models)
        clock = Clock()
        reconciler = _reconciler(remote, parent / "state", standins.urls, clock, concurrency=2)
        try:
            report = reconciler.run_cycle()
            assert report.ok and report.full, report.message
            assert reconciler.pulls.wait(timeout=120)
            assert not any(pulls for _, pulls in standins.counts()), "the cold cycle pulled"
            records = reconciler.store.records()
            assert len(records) == models and all(
                s.state == READY for r in records.values() for s in r.servers.values()), "not every model Ready"
            samples: dict[str, list[float]] = {"change": [], "noop": [], "resync": [], "full": [], "resync_cpu": []}
            change_requests: list[list[int]] = []
            resync_requests: list[list[int]] = []
            resync_planned: list[int] = []
            for round_ in range(repeat + 1):
                changed.write_text(_model0(round_ + 1))
                git("commit", "-q", "-a", "-m", f"refresh {round_ + 1}", cwd=work)
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                clock.now += 1
                before = standins.counts()
                change_s, report = _timed(reconciler.run_cycle)
                assert report.ok and not report.noop and not report.full, report.message
                assert reconciler.pulls.wait(timeout=120)
                after = standins.counts()
                requests = [a[0] - b[0] for a, b in zip(after, before)]
                clock.now += 1
                noop_s, report = _timed(reconciler.run_cycle)
                assert report.ok and report.noop, report.message
                clock.now += RESYNC + 1
                cpu = time.process_time()
                resync_s, report = _timed(reconciler.run_cycle)
                resync_cpu = time.process_time() - cpu
                assert report.ok and report.full and not report.everything, report.message
                # The one-change cycle's re-pull of model0 on s0 gave no digest (a pull's stream has none):
                # the resync records it from s0's listing, the one change there is. Nothing else is planned.
                planned = sum(len(plan.specs) for plan in report.plans.values()) - \
                    sum(1 for key in report.plans["s0"].specs if key.name == "model0-1b")
                listed = [a[0] - b[0] for a, b in zip(standins.counts(), after)]
                full_s, report = _timed(lambda: reconciler.run_cycle(full=True))
                assert report.ok and report.everything, report.message
                if round_ > 0:
                    for name, value in (("change", change_s), ("noop", noop_s), ("resync", resync_s), ("full", full_s),
                                        ("resync_cpu", resync_cpu)):
                        samples[name].append(value)
                    change_requests.append(requests)
                    resync_requests.append(listed)
                    resync_planned.append(planned)
            assert standins.counts()[0][1] == repeat + 1, "the refresh was not pulled on s0"
        finally:
            reconciler.close()
            reconciler.store.release_process_lock()
            standins.stop()
    return {"servers": servers, "models": models, "samples_s": samples, "listing_threads": LISTING_THREADS,
            "median_s": {k: statistics.median(v) for k, v in samples.items()},
            "change_requests_per_server": change_requests, "resync_requests_per_server": resync_requests,
            "resync_models_planned": resync_planned}


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
        reconciler = _reconciler(remote, parent / "state", [o.url for o in ollamas], Clock(), concurrency=concurrency)
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


def rounds(result: dict) -> int:
    """How many rounds of listings a resync of that fleet takes: ceil(servers / listing threads)."""
    return math.ceil(result["servers"] / result["listing_threads"])


def report(steadies: list[dict], fill_one: dict, fill_many: dict, repeat: int) -> list[dict]:
    one = steadies[0]
    sizes = [r["servers"] for r in steadies]
    print(f"\nFleet cycles, {one['models']:,} models: medians of {repeat} (ms); each ratio to 1 server's")
    print(f"  {'cycle':<14}" + "".join(f"{f'{n} server' + ('s' if n > 1 else ''):>22}" for n in sizes))
    for name, label in (("noop", "no-op"), ("change", "one-change"), ("resync", "resync"),
                        ("resync_cpu", "(its CPU here)"), ("full", "full cycle")):
        base = one["median_s"][name]
        cells = [f"{_ms(r['median_s'][name])} ({r['median_s'][name] / base:.2f}x)" for r in steadies]
        print(f"  {label:<14}" + "".join(f"{cell:>22}" for cell in cells))
    for r in steadies[1:]:
        n = r["servers"]
        on_s0 = sorted({x[0] for x in r["change_requests_per_server"]})
        others = sorted({y for x in r["change_requests_per_server"] for y in x[1:]})
        listed = sorted({x for each in r["resync_requests_per_server"] for x in each})
        print(f"  {n} servers: one-change cycle's requests: s0 {'/'.join(map(str, on_s0))}, each of the {n - 1} "
              f"others {'/'.join(map(str, others))}; "
              f"resync: {'/'.join(map(str, listed))} request(s) per server, "
              f"{'/'.join(map(str, sorted(set(r['resync_models_planned']))))} model(s) planned besides model0 on s0")
    for r in steadies:
        n, threads = r["servers"], r["listing_threads"]
        print(f"  {n} server{'s' if n > 1 else ''}: resync {r['median_s']['resync'] / one['median_s']['resync']:.2f}x "
              f"one server's, against servers / {threads} = {n / threads:.2f} and ceil(servers / {threads}) = "
              f"{rounds(r)}; this process's CPU per listing {_ms(r['median_s']['resync_cpu'] / n)}")
    for against, x in ((f"servers / {one['listing_threads']} (the listing concurrency)", lambda r: r["servers"]),
                       (f"ceil(servers / {one['listing_threads']}), the rounds of listings", rounds)):
        fits = {name: exponent([(x(r), r["median_s"][name]) for r in steadies]) for name in ("resync", "full")}
        print(f"  growth exponent against {against}: "
              + ", ".join(f"{label} {'-' if fits[name] is None else f'{fits[name]:.2f}'}"
                          for name, label in (("resync", "resync"), ("full", "full cycle"))))
    ratio = fill_many["fill_s"] / fill_one["fill_s"]
    n_fill = fill_many["servers"]
    print(f"\nCold fill, {fill_one['models']:,} models per server: 1 server {fill_one['fill_s']:.2f} s, "
          f"{n_fill} servers {fill_many['fill_s']:.2f} s ({ratio:.2f}x); pulls per server {fill_many['pulls_per_server']}")
    bars = []
    for r in steadies[1:]:
        n = r["servers"]
        noop = r["median_s"]["noop"] / one["median_s"]["noop"]
        bars.append({"bar": f"no-op cycle at {n} servers <= {NOOP_BAR:g}x at 1 server", "value": noop,
                     "limit": NOOP_BAR, "ok": noop <= NOOP_BAR})
        bars.append({"bar": f"one-change cycle at {n} servers asks only the server the change selects (s0)",
                     "value": None, "limit": None,
                     "ok": all(x[0] > 0 and not any(x[1:]) for x in r["change_requests_per_server"])})
    bars.append({"bar": "a resync with nothing changed plans no model (but the re-pulled model0's digest on s0)",
                 "value": None, "limit": None,
                 "ok": all(p == 0 for r in steadies for p in r["resync_models_planned"])})
    bars.append({"bar": f"cold fill of {n_fill} servers <= {FILL_BAR:g}x one server's", "value": ratio,
                 "limit": FILL_BAR, "ok": ratio <= FILL_BAR})
    print("\nBars:")
    for bar in bars:
        value = f": {bar['value']:.2f}x (limit {bar['limit']:g}x)" if bar["value"] is not None else ""
        print(f"  {verdict(bar['ok'])}  {bar['bar']}{value}")
    return bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="1,10,100", help="comma-separated fleet sizes (1 is always run, first)")
    parser.add_argument("--fill-servers", type=int, default=10, help="the fleet the cold fill compares with 1 server")
    parser.add_argument("--models", type=int, default=1_000, help="model files for the steady-state cycles")
    parser.add_argument("--fill-models", type=int, default=100, help="models per server for the cold fill")
    parser.add_argument("--pull-delay", type=float, default=0.02,
                        help="seconds the stand-in waits between a pull's progress lines")
    parser.add_argument("--concurrency", type=int, default=2, help="pulls at a time per server (the default's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--smoke", action="store_true", help="1 and 3 servers, 20 models, fill 6 on 3, one repeat")
    parser.add_argument("--standins", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    args = parser.parse_args(argv)
    if args.standins is not None:
        serve_standins(args.standins, args.models)
        return 0
    if args.smoke:
        args.servers, args.models, args.fill_models, args.repeat, args.pull_delay = "1,3", 20, 6, 1, 0.005
        args.fill_servers = 3
    try:
        sizes = sorted({1, *(int(n) for n in args.servers.split(",") if n.strip())})
    except ValueError:
        parser.error(f"--servers must be comma-separated whole numbers, not {args.servers!r}")
    if len(sizes) < 2 or args.fill_servers < 2 or args.models < 1 or args.fill_models < 1 or args.repeat < 1:
        parser.error("--servers needs a fleet of at least 2, --fill-servers at least 2, --models, --fill-models "
                     "and --repeat at least 1")
    os.environ.update(GIT_ENV)
    steadies = []
    for n in sizes:
        print(f"steady state: {n} server(s), {args.models:,} models...", file=sys.stderr, flush=True)
        steadies.append(steady(n, args.models, args.repeat))
    print(f"cold fill: 1 and {args.fill_servers} servers, {args.fill_models:,} models each...", file=sys.stderr,
          flush=True)
    fill_one = cold_fill(1, args.fill_models, args.pull_delay, args.concurrency)
    fill_many = cold_fill(args.fill_servers, args.fill_models, args.pull_delay, args.concurrency)
    bars = report(steadies, fill_one, fill_many, args.repeat)
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "bench_fleet", "python": sys.version.split()[0], "platform": platform.platform(),
            "git": git("--version").decode().strip(), "cpus": os.cpu_count(), "options": vars(args) | {"json": None},
            "steady": steadies, "cold_fill": [fill_one, fill_many], "bars": bars,
            "all_pass": all(b["ok"] for b in bars)}, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
