#!/usr/bin/env python3
"""The dashboard at 100 and 10,000 models, in Debian's headless Chromium against `serve` (in this
process, through the tests' harness: real waitress, a bare remote, the stand-in Ollama with every
model installed).

(1) first full render: from navigation to the table's first render with every model in it (the
    page's own `performance.now()`, read from `window.ollamaGitops.state.timings.firstFull`);
(2) one progress update: a model in view set Pulling, then its progress moved in the store, one
    update at a time; per update, the page's milliseconds applying the `models` event and rendering
    after it (an update of a model out of view renders nothing);
(3) the events stream's cost on the server with 20 pages open (20 real SSE readers in a child
    process, so that this process's CPU time is the server's): CPU seconds per second idle, CPU per
    event fanned out, and GET /api/v1/models p50 beside the open streams, each against no stream.

(1) and (2) are given as ratios of 10,000 to 100 models. Needs /usr/bin/chromium and
/usr/bin/chromedriver (Debian's chromium and chromium-driver). `--smoke`: 10 and 100 models, one
repeat, 4 readers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the harness lives in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, generate, wait_for  # noqa: E402

import httpx  # noqa: E402

MODEL_SIZE = 1_234_567_890

READERS = textwrap.dedent("""
    import sys, threading, httpx
    url, count = sys.argv[1], int(sys.argv[2])
    def read():
        with httpx.Client(timeout=httpx.Timeout(10, read=600)) as client:
            with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
                for _ in response.iter_raw():
                    pass
    threads = [threading.Thread(target=read, daemon=True) for _ in range(count)]
    for t in threads: t.start()
    print("open", flush=True)
    sys.stdin.read()
""")


def wait(predicate, what: str):  # type: ignore[no-untyped-def]
    return wait_for(predicate, 300.0, what, interval=0.01)


def p50_list(client: httpx.Client, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.get("/api/v1/models?namespace=*").raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure_size(size: int, args: argparse.Namespace, driver, stream_cost: bool) -> dict:  # type: ignore[no-untyped-def]
    from apirig import ApiRig
    from standins.ollama_server import OllamaStandin
    from ollama_gitops.reconciler.models.desired import ModelKey
    from ollama_gitops.reconciler.state import DEFAULT_SERVER, PULLING

    with tempfile.TemporaryDirectory(prefix=f"bench-dashboard-{size}-") as tmp:
        parent = Path(tmp)
        remote, _ = generate(parent, size, lambda i: f"models/default/model{i}-1b.yaml")
        ollama = OllamaStandin().start()
        for i in range(size):
            ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        rig = ApiRig(parent / "rig", ollama, api_key=None, remote=remote, state_dir=parent / "state")
        rig.start()
        rig.settle()
        result: dict = {"models": size}
        try:
            # (1) first full render
            firsts = []
            for _ in range(args.repeats):
                driver.get("about:blank")
                driver.get(f"{rig.url}/")
                firsts.append(wait(lambda: driver.execute_script(
                    "const s = window.ollamaGitops && window.ollamaGitops.state;"
                    "return s && s.timings.firstFull !== null && s.keys.length === arguments[0] ? s.timings.firstFull : null",
                    size), what="the first full render"))
            result["first_render_ms"] = statistics.median(firsts)
            # (2) one progress update at a time
            store = rig.running.service.store
            key = ModelKey("default", "model0-1b")  # the first row: in view, so each update is rendered
            with store.editing() as edit:
                edit.status(key, DEFAULT_SERVER).state = PULLING
            wait(lambda: driver.execute_script(
                "return window.ollamaGitops.state.models.get(arguments[0]).state === 'Pulling'", str(key)),
                what="the model Pulling in the page")
            works = []
            for step in range(args.updates):
                seen = driver.execute_script("return window.ollamaGitops.state.timings.updates.length")
                store.update_progress([key], DEFAULT_SERVER, (step + 1) * 1000, args.updates * 1000 + 1)
                wait(lambda: driver.execute_script("return window.ollamaGitops.state.timings.updates.length") > seen,
                     what="the progress update rendered")
                works.append(driver.execute_script("const u = window.ollamaGitops.state.timings.updates; return u[u.length - 1]"))
            result["update_ms"] = statistics.median(works)
            if stream_cost:
                driver.get("about:blank")
                result.update(measure_streams(rig, key, args))
        finally:
            driver.get("about:blank")
            rig.stop()
            ollama.stop()
        return result


def measure_streams(rig, key, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    from ollama_gitops.reconciler.state import DEFAULT_SERVER

    bus = rig.running.feed.bus
    store = rig.running.service.store
    client = httpx.Client(base_url=rig.url, timeout=120)

    def phase(seconds: float) -> tuple[float, float]:
        """(CPU s per s idle, CPU ms per event) of this process: idle, then a burst of progress updates."""
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        idle = (time.process_time() - cpu) / (time.perf_counter() - wall)
        first_seq, cpu = bus._seq, time.process_time()
        for step in range(args.burst):
            store.update_progress([key], DEFAULT_SERVER, step * 10, args.burst * 10 + 1)
            time.sleep(0.01)  # 100 updates a second, as a few fast pulls make; the feed batches them
        wait(lambda: bus._seq > first_seq, what="the burst's events")
        time.sleep(0.5)  # the last batch sent
        events = bus._seq - first_seq
        return idle, (time.process_time() - cpu) * 1000 / max(1, events)

    try:
        # The pages' streams end when the server next writes to them (a heartbeat, 15 s at most).
        wait(lambda: bus.subscribers == 0, what="the pages' streams closed")
        base_idle, base_event = phase(args.idle)
        base_list = p50_list(client, args.requests)
        child = subprocess.Popen([sys.executable, "-c", READERS, f"{rig.url}/api/v1/events", str(args.pages)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "open"
            wait(lambda: bus.subscribers >= args.pages, what=f"{args.pages} streams open")
            idle, per_event = phase(args.idle)
            with_list = p50_list(client, args.requests)
            open_streams = bus.subscribers
        finally:
            child.kill()
            child.wait()
    finally:
        client.close()
    return {"pages": open_streams, "idle_cpu": (base_idle, idle), "event_cpu_ms": (base_event, per_event),
            "list_p50_ms": (base_list, with_list)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="10 and 100 models, one repeat, 4 readers")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.repeats, args.updates, args.pages, args.idle, args.burst, args.requests = \
            [10, 100], 1, 3, 4, 0.5, 20, 5
    os.environ.update(GIT_ENV)
    from browser import chromium, quit_chromium

    driver = chromium()
    try:
        results = [measure_size(size, args, driver, stream_cost=size == max(args.sizes)) for size in args.sizes]
    finally:
        quit_chromium(driver)
    small, large = results[0], results[-1]
    print(f"{'models':>8}  {'first full render':>18}  {'one progress update':>20}")
    for r in results:
        print(f"{r['models']:>8}  {r['first_render_ms']:>15.1f} ms  {r['update_ms']:>17.2f} ms")
    print(f"ratio {large['models']:,} / {small['models']:,}: first render {large['first_render_ms'] / small['first_render_ms']:.2f}x, "
          f"progress update {large['update_ms'] / small['update_ms']:.2f}x")
    (idle0, idle1), (event0, event1), (list0, list1) = large["idle_cpu"], large["event_cpu_ms"], large["list_p50_ms"]
    print(f"events stream at {large['models']:,} models, {large['pages']} open streams against none: "
          f"idle CPU {idle1 * 100:.2f}% against {idle0 * 100:.2f}% of a core; "
          f"CPU per event {event1:.2f} ms against {event0:.2f} ms; "
          f"GET /api/v1/models p50 {list1:.1f} ms against {list0:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
