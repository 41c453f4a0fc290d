"""Benchmark: how the API's writes, lists after a write and memory grow with the models repository,
in one namespace and over 100 namespaces, each figure a ratio to a bare baseline of the same run.

For each layout (`one`: every file in `models/default/`; `hundred`: spread round-robin over
`models/ns000/` .. `models/ns099/`) and each size (default 10,000 and 100,000 model files), set-up
(not timed): a models repository made with `git fast-import` (`benchrepos.generate`), pushed to a bare
remote; the stand-in Ollama with every model installed; a real `ollama-gitops serve` subprocess
(`bench_api.SubprocessServer`; its API namespace `default` or `ns000`) settled on the head. Then, in
`--posts` rounds after one untimed warm-up round:

  (1)  POST /api/v1/models of a new model, next to
  (1b) the bare `git add` + `git commit` + `git push` of the same file from a plain working clone of the
       same remote, to its own branch (`bench_api.bare_round`); the two alternate which goes first;
  (2)  after the server is quiet again (its cycle pulled the new model), the first GET of the list: its
       time, next to (2b) the list answered from the cache (the median of 5 GETs right after), and how many
       models the server serialised for it (`ollama_gitops_api_list_items_serialised_total` from
       /metrics: 1 when only the new model's view had to be made);
  (3)  memory: the serve process's peak RSS (VmHWM) at the end, next to (3b) the peak RSS of a bare Python
       process that reads every model blob of the head with one `git cat-file --batch` and keeps each
       parsed with PyYAML's C loader (the "bare parsed data").
       The absolute ratio (3)/(3b) is printed, but it is not the bar: at 10,000 models it is mostly
       the libraries `serve` imports (Flask, GitPython, the kubernetes client, APScheduler, ...) and
       the bare script does not, about 60 MiB that do not grow with the models. The bar is judged on
       the ratio of what the data costs: (3) less the peak RSS of the same `serve` on an empty
       models repository beside an empty stand-in Ollama, once it has taken one POST and listed the
       namespace (3e: the code a write and a list load, such as the writer and the schema's
       validator, is code, not data), against (3b) less the peak RSS of a bare Python that only
       imported yaml (3i): ((3) - (3e)) / ((3b) - (3i)), "data ratio" below.
  (3r) the same serve restarted: once the rounds are done and the measured serve is stopped, `serve` is
       started again on its state directory, beside the same Ollama; once ready (its status showing the
       head applied, from what it recorded), it takes one POST (whose cycle is its first full one: a new
       process plans every model once) and lists the namespace as a round does. Its peak RSS gives the
       restart's data ratio, with the same baselines as (3): ((3r) - (3e)) / ((3b) - (3i)).
  (4)  readiness: the seconds from starting `serve` to its status showing the head applied
       (`lastAppliedCommit`, what README calls ready for `serve`, which has no /readyz), next to
       (4b) the bare cold baseline: a bare `git clone --depth 1` of the remote, the bare parse of
       (3b) run on that clone (its interpreter start included), and one `/api/tags` of the stand-in.

Printed: each ratio ((1)/(1b), (2)/(2b), (3)/(3b), the data ratios fresh and restarted, (4)/(4b)) per size, each beside its
baseline, and the growth exponent fitted over the sizes (least squares of log value against log size)
of each measure and baseline. Numbers, not assertions: the suite smoke-runs this script (`--smoke`:
100 and 200 models in one namespace, 1 round). `--profile DIR` writes a cProfile of every thread of
the serve child (`serve-<layout>-<size>.prof`, from its start to the end of the rounds) there.

    python benchmarks/bench_scale.py                          # 10,000 and 100,000; both layouts; 5 rounds
    python benchmarks/bench_scale.py --sizes 1000,10000 --layouts one --posts 3
    python benchmarks/bench_scale.py --smoke
    python benchmarks/bench_scale.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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

import httpx  # noqa: E402

from bench_api import API_KEY, BARE_BRANCH, MODEL_SIZE, SubprocessServer, bare_round, wait_quiet  # noqa: E402

LAYOUTS = {"one": 1, "hundred": 100}
SERIALISED = "ollama_gitops_api_list_items_serialised_total"
RESTART_POST = "again"  # the model the restarted serve is given

# The bare parsed data: every model blob of the head read in one `git cat-file --batch`, each parsed
# with the C loader and kept; the process's peak RSS.
BARE_PARSE = r"""
import subprocess, sys, yaml
git_dir = sys.argv[1]
listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "-z", "main", "--", "models/"],
                         capture_output=True, check=True).stdout.decode()
shas = [entry.split("\t")[0].split()[2] for entry in listing.split("\0") if entry]
out = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "--batch"], input="".join(s + "\n" for s in shas).encode(),
                     capture_output=True, check=True).stdout
parsed, position = [], 0
for _ in shas:
    end = out.index(b"\n", position)
    size = int(out[position:end].split()[2])
    parsed.append(yaml.load(out[end + 1:end + 1 + size], Loader=yaml.CSafeLoader))
    position = end + 1 + size + 1
del out
assert len(parsed) == len(shas)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""

# A bare interpreter that imported what the bare parse imports, and nothing more: its peak RSS.
BARE_INTERPRETER = r"""
import subprocess, sys, yaml
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""

# In the serve child with --profile: every thread's calls (cProfile), merged and written at exit.
PROFILE_HOOK = r"""
import atexit as _atexit, cProfile as _cProfile, os as _os, threading as _threading
_out = _os.environ.get("BENCH_SCALE_PROFILE")
if _out:
    _done, _lock, _run = [], _threading.Lock(), _threading.Thread.run
    def _profiled_run(self):
        profile = _cProfile.Profile()
        profile.enable()
        try:
            _run(self)
        finally:
            profile.disable()
            with _lock:
                _done.append(profile)
    _threading.Thread.run = _profiled_run
    _main = _cProfile.Profile()
    _main.enable()
    def _write_profile():
        import pstats
        _main.disable()
        with _lock:
            stats = pstats.Stats(_main)
            for profile in _done:
                stats.add(profile)
        stats.dump_stats(_out)
    _atexit.register(_write_profile)
"""


def path_of(layout: str):  # type: ignore[no-untyped-def]
    spread = LAYOUTS[layout]
    if spread == 1:
        return lambda i: f"models/default/model{i}-1b.yaml"
    return lambda i: f"models/ns{i % spread:03d}/model{i}-1b.yaml"


def api_namespace(layout: str) -> str:
    return "default" if LAYOUTS[layout] == 1 else "ns000"


def serialised_count(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{SERIALISED} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def peak_of(script: str, *args: str) -> float:
    """The peak RSS (MiB) a Python `script` prints."""
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def bare_cold(parent: Path, remote: Path, ollama_url: str) -> tuple[float, float]:
    """The bare cold baseline: a shallow clone, the bare parse of every model blob on it and one
    listing of Ollama; its seconds, and the bare parse's peak RSS (MiB)."""
    clone = parent / "bare-shallow.git"
    started = time.perf_counter()
    git("clone", "-q", "--bare", "--depth", "1", "--branch", "main", f"file://{remote}", str(clone))
    peak = peak_of(BARE_PARSE, str(clone))
    httpx.get(f"{ollama_url}/api/tags", timeout=300).raise_for_status()
    return time.perf_counter() - started, peak


def wait_applied(client: httpx.Client, server: SubprocessServer, head: str) -> None:
    deadline = time.monotonic() + 1800
    while client.get("/api/v1/status").json()["lastAppliedCommit"] != head:
        if time.monotonic() > deadline:
            raise RuntimeError(f"serve did not apply the head:\n{server.log_tail()}")
        time.sleep(0.05)


def empty_serve_peak_mib(parent: Path, layout: str) -> float:
    """The peak RSS of `serve` on a models repository with no model file, settled on its head, beside
    an Ollama with no model (what it holds of Ollama's listing is data too), after one POST and one
    list of its namespace, as the measured serve makes (so that what they import is counted here)."""
    from standins.ollama_server import OllamaStandin

    where = parent / "empty"
    where.mkdir()
    remote, _ = generate(where, 0, path_of(layout))
    ollama = OllamaStandin().start()
    ollama.add_to_catalogue("empty:1b", MODEL_SIZE)
    namespace = api_namespace(layout)
    server = SubprocessServer(where, remote, ollama.url, ("--namespace", namespace))
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY, "Accept-Encoding": "identity"},
                          timeout=300) as client:
            wait_applied(client, server, git("--git-dir", str(remote), "rev-parse", "refs/heads/main").decode().strip())
            _, response = post_model_in(client, "empty", namespace)
            if response.status_code != 201:
                raise RuntimeError(f"POST empty: {response.status_code} {response.text[:300]}")
            wait_quiet_in(client, server, namespace, "empty-1b")
            assert client.get("/api/v1/models", params={"namespace": namespace}).status_code == 200
        peak = server.peak_rss_mib()
    finally:
        server.stop()
        ollama.stop()
    assert peak is not None
    return peak


def bench(parent: Path, layout: str, size: int, posts: int, profile: Path | None = None) -> dict:
    from standins.ollama_server import OllamaStandin

    namespace = api_namespace(layout)
    where = path_of(layout)
    print(f"[{layout} {size:,}] generating...", file=sys.stderr, flush=True)
    remote, _ = generate(parent, size, where)
    names = [f"post{i}" for i in range(posts + 1)]
    ollama = OllamaStandin().start()
    for i in range(size):
        ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
        ollama.install(f"model{i}:1b", MODEL_SIZE)
    for name in [*names, RESTART_POST]:
        ollama.add_to_catalogue(f"{name}:1b", MODEL_SIZE)
    print(f"[{layout} {size:,}] bare cold baseline, serve on an empty repository...", file=sys.stderr, flush=True)
    bare_cold_s, bare_peak = bare_cold(parent, remote, ollama.url)
    empty_peak = empty_serve_peak_mib(parent, layout)
    print(f"[{layout} {size:,}] serve...", file=sys.stderr, flush=True)
    head = git("--git-dir", str(remote), "rev-parse", "refs/heads/main").decode().strip()
    env = {"BENCH_SCALE_PROFILE": str(profile / f"serve-{layout}-{size}.prof")} if profile else None
    started = time.perf_counter()
    server = SubprocessServer(parent, remote, ollama.url, ("--namespace", namespace), PROFILE_HOOK, env)
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY, "Accept-Encoding": "identity"},
                          timeout=300)
    try:
        wait_applied(client, server, head)
        ready_s = time.perf_counter() - started
        clone = parent / "bare-clone"
        git("clone", "-q", str(remote), str(clone))
        git("checkout", "-q", "-b", BARE_BRANCH, cwd=clone)
        git("push", "-q", "origin", f"HEAD:{BARE_BRANCH}", cwd=clone)
        post_s, bare_s, relist_s, cached_s, serialised = [], [], [], [], []
        for round_, name in enumerate(names):
            relative = f"models/{namespace}/{name}-1b.yaml"
            if round_ % 2:
                bare = bare_round(clone, f"bare{round_}", relative.replace(name, f"bare{round_}"))
            seconds, response = post_model_in(client, name, namespace)
            if response.status_code != 201:
                raise RuntimeError(f"POST {name}: {response.status_code} {response.text[:300]}")
            if not round_ % 2:
                bare = bare_round(clone, f"bare{round_}", relative.replace(name, f"bare{round_}"))
            wait_quiet_in(client, server, namespace, f"{name}-1b")
            before = serialised_count(client)
            started = time.perf_counter()
            listed = client.get("/api/v1/models", params={"namespace": namespace})
            relist = time.perf_counter() - started
            assert listed.status_code == 200 and f'"{name}-1b"' in listed.text
            count = serialised_count(client) - before
            cached = []
            for _ in range(5):
                started = time.perf_counter()
                client.get("/api/v1/models", params={"namespace": namespace}).read()
                cached.append(time.perf_counter() - started)
            if round_:  # the first round warms up
                post_s.append(seconds)
                bare_s.append(bare)
                relist_s.append(relist)
                cached_s.append(statistics.median(cached))
                serialised.append(count)
        peak = server.peak_rss_mib()
        client.close()
        server.stop()
        print(f"[{layout} {size:,}] serve restarted on its state...", file=sys.stderr, flush=True)
        restart = restarted_serve(parent, remote, ollama.url, namespace)
    finally:
        client.close()
        server.stop()
        ollama.stop()
    bare_interpreter = peak_of(BARE_INTERPRETER)
    return {
        "layout": layout, "size": size, "namespace_models": size // LAYOUTS[layout] + posts + 1,
        "post_s": statistics.median(post_s), "bare_s": statistics.median(bare_s),
        "relist_s": statistics.median(relist_s), "cached_list_s": statistics.median(cached_s),
        "serialised_per_relist": sorted(set(serialised)),
        "serve_peak_mib": peak, "bare_parse_peak_mib": bare_peak,
        "serve_empty_peak_mib": empty_peak, "bare_interpreter_peak_mib": bare_interpreter,
        "serve_data_mib": peak - empty_peak, "bare_data_mib": bare_peak - bare_interpreter,
        "ready_s": ready_s, "bare_cold_s": bare_cold_s,
        "restart_peak_mib": restart["peak_mib"], "restart_data_mib": restart["peak_mib"] - empty_peak,
        "restart_ready_s": restart["ready_s"],
    }


def restarted_serve(parent: Path, remote: Path, ollama_url: str, namespace: str) -> dict[str, float]:
    """`serve` started again on the state directory the measured serve left (3r): ready on what it
    recorded, then one POST (its first full cycle) and the lists of a round; its seconds to ready
    and its peak RSS (MiB)."""
    where = parent / "restart"
    where.mkdir()
    head = git("--git-dir", str(remote), "rev-parse", "refs/heads/main").decode().strip()
    started = time.perf_counter()
    server = SubprocessServer(where, remote, ollama_url, ("--namespace", namespace), state=parent / "state")
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY, "Accept-Encoding": "identity"},
                          timeout=300) as client:
            wait_applied(client, server, head)
            ready_s = time.perf_counter() - started
            _, response = post_model_in(client, RESTART_POST, namespace)
            if response.status_code != 201:
                raise RuntimeError(f"POST {RESTART_POST}: {response.status_code} {response.text[:300]}")
            wait_quiet_in(client, server, namespace, f"{RESTART_POST}-1b")
            listed = client.get("/api/v1/models", params={"namespace": namespace})
            assert listed.status_code == 200 and f'"{RESTART_POST}-1b"' in listed.text
            for _ in range(5):
                client.get("/api/v1/models", params={"namespace": namespace}).read()
        peak = server.peak_rss_mib()
    finally:
        server.stop()
    assert peak is not None
    return {"peak_mib": peak, "ready_s": ready_s}


def post_model_in(client: httpx.Client, name: str, namespace: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post("/api/v1/models", params={"namespace": namespace}, json={"name": name, "tag": "1b"})
    response.read()
    return time.perf_counter() - started, response


def wait_quiet_in(client: httpx.Client, server: SubprocessServer, namespace: str, name: str) -> None:
    if namespace == "default":
        wait_quiet(client, server, [name])
        return
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the same as wait_quiet, in another namespace
        status = client.get("/api/v1/status").json()
        state = client.get(f"/api/v1/models/{name}", params={"namespace": namespace}).json().get("state")
        if status["lastAppliedCommit"] == status["lastFetchedCommit"] and state == "Ready":
            time.sleep(0.3)
            return
        time.sleep(0.05)
    raise RuntimeError(f"serve did not settle on {name}:\n{server.log_tail()}")


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join("{:>%d}" % w for w in widths)
    print(line.format(*head))
    for row in rows:
        print(line.format(*row))


def report(results: list[dict]) -> None:
    _table(("layout", "models", "POST ms", "bare ms", "POST/bare", "list after write ms", "cached list ms",
            "after/cached", "serialised"),
           [(r["layout"], f"{r['size']:,}", f"{r['post_s'] * 1000:,.1f}", f"{r['bare_s'] * 1000:,.1f}",
             f"{r['post_s'] / r['bare_s']:.2f}x", f"{r['relist_s'] * 1000:,.1f}", f"{r['cached_list_s'] * 1000:,.1f}",
             f"{r['relist_s'] / r['cached_list_s']:.2f}x", "/".join(f"{c:g}" for c in r["serialised_per_relist"]))
            for r in results])
    print("\nMemory, peak RSS in MiB (the bar is the data ratio: serve less serve on an empty repository, "
          "against the bare parse less a bare interpreter with yaml; restarted: the same serve started again "
          "on its state, through one POST and its lists):")
    _table(("layout", "models", "serve", "bare parse", "absolute ratio", "serve empty", "bare interpreter",
            "serve data", "bare data", "data ratio", "restarted", "restarted data", "restarted ratio"),
           [(r["layout"], f"{r['size']:,}", f"{r['serve_peak_mib']:,.0f}", f"{r['bare_parse_peak_mib']:,.0f}",
             f"{r['serve_peak_mib'] / r['bare_parse_peak_mib']:.2f}x", f"{r['serve_empty_peak_mib']:,.0f}",
             f"{r['bare_interpreter_peak_mib']:,.0f}", f"{r['serve_data_mib']:,.0f}", f"{r['bare_data_mib']:,.0f}",
             f"{r['serve_data_mib'] / r['bare_data_mib']:.2f}x", f"{r['restart_peak_mib']:,.0f}",
             f"{r['restart_data_mib']:,.0f}", f"{r['restart_data_mib'] / r['bare_data_mib']:.2f}x") for r in results])
    print("\nReady: seconds from starting serve to its status showing the head applied, against the bare cold "
          "baseline (shallow clone + bare parse + one /api/tags):")
    _table(("layout", "models", "serve ready s", "bare cold s", "ratio", "restarted ready s"),
           [(r["layout"], f"{r['size']:,}", f"{r['ready_s']:,.2f}", f"{r['bare_cold_s']:,.2f}",
             f"{r['ready_s'] / r['bare_cold_s']:.2f}x", f"{r['restart_ready_s']:,.2f}") for r in results])
    print("\nGrowth exponents (value ~ models^k, fitted over the sizes):")
    for layout in dict.fromkeys(r["layout"] for r in results):
        of = [r for r in results if r["layout"] == layout]
        fits = {label: exponent([(r["size"], r[key]) for r in of]) for label, key in (
            ("POST", "post_s"), ("bare add+commit+push", "bare_s"), ("list after write", "relist_s"),
            ("cached list", "cached_list_s"), ("serve peak RSS", "serve_peak_mib"),
            ("bare parse RSS", "bare_parse_peak_mib"), ("serve data", "serve_data_mib"),
            ("bare data", "bare_data_mib"), ("restarted data", "restart_data_mib"), ("serve ready", "ready_s"),
            ("bare cold", "bare_cold_s"))}
        print(f"  {layout}: " + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in fits.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="model files, comma-separated (default 10000,100000)")
    parser.add_argument("--layouts", default="one,hundred", help="one, hundred or both (default both)")
    parser.add_argument("--posts", type=int, default=5, help="timed rounds per size (default 5)")
    parser.add_argument("--smoke", action="store_true", help="sizes 100 and 200 in one namespace, 1 round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="write a cProfile of each serve child (all its threads) in DIR")
    args = parser.parse_args(argv)
    sizes = [100, 200] if args.smoke else [int(s) for s in args.sizes.split(",")]
    posts = 1 if args.smoke else args.posts
    layouts = ["one"] if args.smoke else args.layouts.split(",")
    if posts < 1 or not sizes or any(layout not in LAYOUTS for layout in layouts):
        parser.error("--posts must be at least 1, --layouts one and/or hundred")
    os.environ.update(GIT_ENV)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    results = []
    for layout in layouts:
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{layout}-{size}-") as tmp:
                results.append(bench(Path(tmp), layout, size, posts, args.profile))
    print(f"\nThe API at scale (ollama-gitops serve subprocess; {posts} rounds, medians; Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs)")
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "bench_scale", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
