"""Benchmark: the HTTP API (`ollama-gitops serve`) on a big models repository, over real HTTP.

Set-up (not timed):

  - generates a models repository with `git fast-import`: one commit with --models files
    `models/default/model<i>-1b.yaml` (`name: model<i>` / `tag: "1b"`), all in namespace `default`
    (the API's default, so the list answers every model), pushed to a bare remote
    (`git init --bare -b main`);
  - starts the stand-in Ollama (`tests/standins/ollama_server.py`) with every model installed, and
    the models the benchmark will POST in its catalogue (so that the cycles a write starts can pull
    them);
  - starts the server. By default a real `ollama-gitops serve` subprocess (`--listen 127.0.0.1:0`,
    `--interval 3600`, `--kubernetes off`, API key from OLLAMA_GITOPS_API_KEY, its log in the
    temporary directory); with --in-process, `tests/apirig.py`'s ApiRig in this process (no
    schedules: a write starts no cycle). Then it settles: the subprocess's first cycle (run at start)
    must apply the head and leave every model Ready; in-process, one `ApiRig.settle()`.

Measured, all with a keep-alive `httpx.Client` in this process sending the API key:

  (1)  GET /api/v1/models, --requests times after 3 untimed warm-ups: p50, p99, response size; the
       first answer is checked to hold every model, all Ready. (1') for information: the first list
       after each write of (3), when the list is serialised afresh.
  (2)  GET /api/v1/models/{name}, --requests times, names drawn at random (fixed seed): p50, p99.
  (3)  POST /api/v1/models (a new model each time, 201 expected), --posts rounds, next to
  (3b) a bare `git add <file>` + `git commit` + `git push` of the same kind of file (the text the API
       writes, `modelfile.render`) from a plain working clone of the same remote, timed as three
       subprocesses. The clone works on its own branch `bench-bare` of the remote, so the API's
       branch `main` is moved by the API alone (else every POST would first meet a rejected push);
       before each round the clone pulls (`--ff-only`, not timed). The two alternate which goes
       first; after each POST the benchmark waits, not timed, until the server is quiet again (the
       subprocess runs a cycle that pulls the new model).
  (3c) for information, --foreign rounds of: another clone pushes a commit to `main` (not timed),
       then one POST (timed): the API's push is refused, it fetches and commits again.
  (4)  --writers threads, each with its own keep-alive client, start together and each POST
       --per-writer distinct models one after the other: total time, acknowledged writes per second,
       per-write p50/p99 and how many commits they became. Then every acknowledged write must be in
       the remote: `git ls-tree` of `main` in the bare remote lists exactly the generated files plus
       every acknowledged model, nothing lost and nothing extra.

The "server full GCs" column counts the server process's generation-2 garbage collections that ended
during the timed requests (for (4), during the whole phase) and their pauses: in the subprocess a
`sitecustomize` put first on its PYTHONPATH registers a `gc.callbacks` hook (the only thing added to
the real `serve`) and writes the pauses to a file at exit; in-process the hook is in this process.
Each GET is preceded by a `gc.collect()` of the benchmark process, outside its timing.

Bars (printed as PASS/FAIL):
  - (1) p50 under 150 ms;
  - (3) median POST at most 1.5x the median bare add+commit+push;
  - (4) every write acknowledged (201) and every acknowledged write in the remote.

Run from the repository root:

    python benchmarks/bench_api.py                       # 10,000 models, 200 requests, 32 writers x 5
    python benchmarks/bench_api.py --smoke               # 100 models, 20 requests, 4 writers x 2
    python benchmarks/bench_api.py --in-process          # the server in this process (tests/apirig.py)
    python benchmarks/bench_api.py --json out.json --check
    python benchmarks/bench_api.py --in-process --profile post   # cProfile of the server's threads, to stderr
                                                                 # (list, get, post or writers)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import logging
import math
import os
import platform
import pstats
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the harness lives in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, generate, git, verdict  # noqa: E402

import httpx  # noqa: E402

LIST_BAR_MS = 150.0  # (1) p50 of GET /api/v1/models
POST_BAR = 1.5  # (3) median POST / median bare add+commit+push
NAMESPACE = "default"
MODEL_SIZE = 1_234_567_890  # bytes the stand-in reports for every model
API_KEY = "bench-key-0123456789"
BARE_BRANCH = "bench-bare"



# ---------------------------------------------------------------------------------------------
# Repositories
# ---------------------------------------------------------------------------------------------



def model_path(name: str) -> str:
    return f"models/{NAMESPACE}/{name}-1b.yaml"




def remote_files(remote: Path, branch: str = "main") -> list[str]:
    out = git("--git-dir", str(remote), "ls-tree", "-r", "-z", "--name-only", branch, "--", "models/")
    return [p for p in out.decode().split("\0") if p]


def remote_head(remote: Path, branch: str = "main") -> str:
    return git("--git-dir", str(remote), "rev-parse", f"refs/heads/{branch}").decode().strip()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------

# The server's garbage collector: every collection's end time, generation and pause, so that each
# measurement can say how much of it the server spent in full (generation 2) collections. In the
# subprocess a `sitecustomize` put first on its PYTHONPATH registers a `gc.callbacks` hook and writes
# the pauses to a file at exit; in-process the hook is registered in this process.
GC_HOOK = """\
import atexit, gc, json, os, time
_path = os.environ.get("BENCH_API_GC_LOG")
if _path:
    _pauses, _started = [], [0.0]
    def _hook(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            _pauses.append((time.time(), info["generation"], time.perf_counter() - _started[0]))
    gc.callbacks.append(_hook)
    def _write():
        with open(_path, "w") as out:
            json.dump(_pauses, out)
    atexit.register(_write)
"""


class GcLog:
    """Pauses of the server's collector, (end time, generation, seconds), read after the server stopped."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []
        self._started = 0.0

    def hook(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.time(), info["generation"], time.perf_counter() - self._started))

    def full(self, windows: list[tuple[float, float]]) -> tuple[int, float]:
        """Full collections that ended inside any of `windows` (wall-clock times): count and seconds."""
        hits = [seconds for end, generation, seconds in self.pauses
                if generation == 2 and any(a <= end <= b for a, b in windows)]
        return len(hits), sum(hits)


class SubprocessServer:
    """`ollama-gitops serve` as a child process (the console script next to this Python)."""

    mode = "ollama-gitops serve subprocess"

    def __init__(self, parent: Path, remote: Path, ollama_url: str, extra: tuple[str, ...] = (),
                 site_hook: str = "", env: dict[str, str] | None = None, state: Path | None = None) -> None:
        """`state`: the state directory (default `parent/state`); another serve's, to restart on it."""
        script = Path(sys.executable).with_name("ollama-gitops")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "ollama_gitops"]
        self.log_path = parent / "serve.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, **GIT_ENV, "OLLAMA_GITOPS_API_KEY": API_KEY, **(env or {})}
        self.gc = GcLog()
        self._gc_path = parent / "gc.json"
        site = parent / "gc-hook"
        site.mkdir()
        (site / "sitecustomize.py").write_text(GC_HOOK + site_hook)  # site_hook: more start-up code of the caller's
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
        env["BENCH_API_GC_LOG"] = str(self._gc_path)
        self.process = subprocess.Popen(
            [*command, "serve", "--repo", str(remote), "--state-dir", str(state or parent / "state"),
             "--ollama-url", ollama_url, "--kubernetes", "off", "--interval", "3600",
             "--listen", "127.0.0.1:0", "--log-level", "INFO", *extra],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = self._wait_for_url(timeout=120)
        self.pid = self.process.pid

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"API listening on (http://\S+)", self.log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"ollama-gitops serve exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"ollama-gitops serve did not start within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def peak_rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self._gc_path.exists():
            self.gc.pauses = [tuple(p) for p in json.loads(self._gc_path.read_text())]  # type: ignore[misc]


class InProcessServer:
    """`serve` in this process through the tests' harness (`tests/apirig.py`): no schedules."""

    mode = "in-process ApiRig (no schedules)"

    def __init__(self, parent: Path, remote: Path, ollama) -> None:  # type: ignore[no-untyped-def]
        import apirig

        self.gc = GcLog()
        gc.callbacks.append(self.gc.hook)
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # 32 writers on 16 threads queue, as meant
        self.rig = apirig.ApiRig(parent / "rig", ollama, api_key=API_KEY, remote=remote,
                                 state_dir=parent / "state").start()
        self.url = self.rig.url
        self.rig.settle()

    def peak_rss_mib(self) -> float | None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def log_tail(self, lines: int = 30) -> str:
        return "(in-process: the log went to this process's stderr)"

    def stop(self) -> None:
        self.rig.stop()
        if self.gc.hook in gc.callbacks:
            gc.callbacks.remove(self.gc.hook)


def wait_quiet(client: httpx.Client, server, names: list[str], timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Until the server has applied the commit it knows and its cycles stopped (subprocess only:
    in-process, a write starts no cycle). `names` must be Ready."""
    if isinstance(server, InProcessServer):
        return
    deadline = time.monotonic() + timeout
    stable_since, last = None, None
    while time.monotonic() < deadline:
        status = client.get("/api/v1/status").json()
        states = [client.get(f"/api/v1/models/{n}").json().get("state") for n in names]
        snapshot = (status["lastFetchedCommit"], status["lastAppliedCommit"], status["lastCycleTime"], states)
        done = status["lastAppliedCommit"] == status["lastFetchedCommit"] and all(s == "Ready" for s in states)
        if not done or snapshot != last:
            stable_since = time.monotonic() if done else None
        elif time.monotonic() - stable_since >= 0.3:  # type: ignore[operator]
            return
        last = snapshot
        time.sleep(0.05)
    raise RuntimeError(f"the server did not settle within {timeout:.0f}s (waiting for {names}; last seen: "
                       f"status {status}, states {states}):\n{server.log_tail()}")


# ---------------------------------------------------------------------------------------------
# Profiling the server (in-process only)
# ---------------------------------------------------------------------------------------------

class ServerProfiler:
    """cProfile of the server's work while `on`: each request (the WSGI application waitress calls, in a
    waitress worker thread) and each batch of the model writer (`_commit_batch`, in its own thread) runs under
    a cProfile of its thread. The wrappers are instance attributes set by the benchmark on the running
    objects; no product code changes. The profiles of all threads are merged when printed."""

    def __init__(self) -> None:
        self.on = False
        self._local = threading.local()
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def wrap(self, function):  # type: ignore[no-untyped-def]
        def profiled(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not self.on:
                return function(*args, **kwargs)
            profile = getattr(self._local, "profile", None)
            if profile is None:
                profile = self._local.profile = cProfile.Profile()
                with self._lock:
                    self._profiles.append(profile)
            profile.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profile.disable()
        return profiled

    def attach(self, running) -> None:  # type: ignore[no-untyped-def]
        wsgi = running.server._server  # waitress calls `.application` (the Flask app, behind its middleware)
        wsgi.application = self.wrap(wsgi.application)
        writer = running.repository.writer
        writer._commit_batch = self.wrap(writer._commit_batch)

    def stats(self) -> pstats.Stats | None:
        merged = None
        with self._lock:
            profiles = list(self._profiles)
        for profile in profiles:
            profile.create_stats()
            if not profile.stats:  # type: ignore[attr-defined]
                continue
            if merged is None:
                merged = pstats.Stats(profile, stream=sys.stderr)
            else:
                merged.add(profile)
        return merged


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def time_requests(client: httpx.Client, paths: list[str],
                  spans: list[tuple[float, float]] | None = None) -> tuple[list[float], int]:
    """GET each path, timed alone (a collection of this process's garbage first, not timed)."""
    samples, size = [], 0
    for path in paths:
        gc.collect()
        wall = time.time()
        started = time.perf_counter()
        response = client.get(path)
        body = response.content
        samples.append(time.perf_counter() - started)
        if spans is not None:
            spans.append((wall, time.time()))
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {body[:300]!r}")
        size = len(body)
    return samples, size


def post_model(client: httpx.Client, name: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post("/api/v1/models", json={"name": name, "tag": "1b"})
    response.read()
    return time.perf_counter() - started, response


@contextlib.contextmanager
def window(windows: list[tuple[float, float]]):  # type: ignore[no-untyped-def]
    """Record the wall-clock span of the block (to find the server's collections inside it)."""
    started = time.time()
    try:
        yield
    finally:
        windows.append((started, time.time()))


def bare_round(clone: Path, name: str, relative: str | None = None) -> float:
    """Pull (not timed), then add + commit + push one model file (timed), at `relative` (by default
    in this benchmark's namespace)."""
    from ollama_gitops.reconciler.models.modelfile import ModelFields, render

    git("pull", "-q", "--ff-only", "origin", BARE_BRANCH, cwd=clone)
    relative = relative or model_path(name)
    (clone / relative).write_bytes(render(ModelFields(name=name, tag="1b")))
    gc.collect()
    started = time.perf_counter()
    git("add", relative, cwd=clone)
    git("commit", "-q", "-m", f"Add model {name}:1b", cwd=clone)
    git("push", "-q", "origin", f"HEAD:{BARE_BRANCH}", cwd=clone)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    os.environ.update(GIT_ENV)
    from standins.ollama_server import OllamaStandin

    rng = random.Random(20240601)
    profiler = ServerProfiler() if args.profile and args.in_process else None

    @contextlib.contextmanager
    def profiled(phase: str):  # type: ignore[no-untyped-def]
        if profiler is not None and args.profile == phase:
            profiler.on = True
        try:
            yield
        finally:
            if profiler is not None:
                profiler.on = False

    with tempfile.TemporaryDirectory(prefix=f"bench-api-{args.models}-") as tmp:
        parent = Path(tmp)
        print(f"generating {args.models:,} models...", file=sys.stderr, flush=True)
        remote, generate_s = generate(parent, args.models, lambda i: model_path(f"model{i}"))
        initial_files = remote_files(remote)
        assert len(initial_files) == args.models

        post_names = [f"post{i}" for i in range(args.posts)]
        foreign_names = [f"foreign{i}" for i in range(args.foreign)]
        writer_names = [[f"writer{w}x{k}" for k in range(args.per_writer)] for w in range(args.writers)]
        ollama = OllamaStandin().start()
        for i in range(args.models):
            ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        for name in [*post_names, *foreign_names, *(n for names in writer_names for n in names)]:
            ollama.add_to_catalogue(f"{name}:1b", MODEL_SIZE)

        print("starting the server and settling...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        server = InProcessServer(parent, remote, ollama) if args.in_process else \
            SubprocessServer(parent, remote, ollama.url)
        if profiler is not None:
            assert isinstance(server, InProcessServer) and server.rig.running is not None
            profiler.attach(server.rig.running)
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=120)
        try:
            # -- settle: every model Ready at the head ---------------------------------------------
            head = remote_head(remote)
            deadline = time.monotonic() + 300
            while True:
                status = client.get("/api/v1/status").json()
                if status["lastAppliedCommit"] == head == status["lastFetchedCommit"]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not apply {head[:12]}: {status}\n{server.log_tail()}")
                time.sleep(0.1)
            settle_s = time.perf_counter() - started
            listing = client.get("/api/v1/models")
            items = listing.json()["items"]
            assert len(items) == args.models, f"the list has {len(items)} models, expected {args.models}"
            not_ready = [m["name"] for m in items if m["state"] != "Ready"]
            assert not not_ready, f"{len(not_ready)} models not Ready after settling, e.g. {not_ready[:5]}"
            assert sum(ollama.pull_count.values()) == 0, f"settling pulled: {dict(ollama.pull_count)}"

            # -- (1) the list ----------------------------------------------------------------------
            print(f"(1) GET /api/v1/models x {args.requests}...", file=sys.stderr, flush=True)
            time_requests(client, ["/api/v1/models"] * 3)  # warm-up
            windows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("list", "get", "post", "foreign", "writers")}
            with profiled("list"):
                list_s, list_bytes = time_requests(client, ["/api/v1/models"] * args.requests, windows["list"])

            # -- (2) one model ---------------------------------------------------------------------
            print(f"(2) GET /api/v1/models/{{name}} x {args.requests}...", file=sys.stderr, flush=True)
            names = [f"model{rng.randrange(args.models)}-1b" for _ in range(args.requests)]
            time_requests(client, [f"/api/v1/models/{n}" for n in names[:3]])  # warm-up
            with profiled("get"):
                get_s, get_bytes = time_requests(client, [f"/api/v1/models/{n}" for n in names], windows["get"])

            # -- (3) one POST next to a bare add + commit + push ----------------------------------
            print(f"(3) POST vs bare git add+commit+push x {args.posts}...", file=sys.stderr, flush=True)
            clone = parent / "bare-clone"
            git("clone", "-q", str(remote), str(clone))
            git("checkout", "-q", "-b", BARE_BRANCH, cwd=clone)
            git("push", "-q", "origin", f"HEAD:{BARE_BRANCH}", cwd=clone)
            post_s, bare_s, relist_s = [], [], []
            acknowledged: list[str] = []
            for round_, name in enumerate(post_names):
                post_first = round_ % 2 == 0
                if not post_first:
                    bare_s.append(bare_round(clone, f"bare{round_}"))
                gc.collect()
                with profiled("post"), window(windows["post"]):
                    seconds, response = post_model(client, name)
                if response.status_code != 201:
                    raise RuntimeError(f"POST {name} answered {response.status_code}: {response.text[:300]}")
                post_s.append(seconds)
                acknowledged.append(name)
                if post_first:
                    bare_s.append(bare_round(clone, f"bare{round_}"))
                wait_quiet(client, server, [f"{name}-1b"])
                relist, _ = time_requests(client, ["/api/v1/models"])  # the first list after the write
                relist_s.extend(relist)

            # -- (3c) a POST after another writer moved the branch -------------------------------
            foreign_s = []
            if foreign_names:
                print(f"(3c) POST after a foreign push x {args.foreign}...", file=sys.stderr, flush=True)
                other = parent / "other-clone"
                git("clone", "-q", str(remote), str(other))
            for round_, name in enumerate(foreign_names):
                git("pull", "-q", "--ff-only", "origin", "main", cwd=other)
                (other / "README.md").write_text(f"foreign change {round_}\n")
                git("add", "README.md", cwd=other)
                git("commit", "-q", "-m", f"foreign change {round_}", cwd=other)
                git("push", "-q", "origin", "HEAD:main", cwd=other)
                gc.collect()
                with window(windows["foreign"]):
                    seconds, response = post_model(client, name)
                if response.status_code != 201:
                    raise RuntimeError(f"POST {name} answered {response.status_code}: {response.text[:300]}")
                foreign_s.append(seconds)
                acknowledged.append(name)
                wait_quiet(client, server, [f"{name}-1b"])

            # -- (4) concurrent writers ------------------------------------------------------------
            print(f"(4) {args.writers} writers x {args.per_writer} POSTs...", file=sys.stderr, flush=True)
            before = remote_head(remote)
            barrier = threading.Barrier(args.writers + 1)
            outcomes: list[list[tuple[str, int, float]]] = [[] for _ in range(args.writers)]
            errors: list[str] = []

            def writer(index: int) -> None:
                with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=300) as own:
                    own.get("/health")  # connect before the start, so the timing holds requests only
                    barrier.wait()
                    for name in writer_names[index]:
                        try:
                            seconds, response = post_model(own, name)
                            outcomes[index].append((name, response.status_code, seconds))
                        except httpx.HTTPError as exc:
                            errors.append(f"{name}: {exc!r}")

            threads = [threading.Thread(target=writer, args=(w,), name=f"writer-{w}") for w in range(args.writers)]
            for thread in threads:
                thread.start()
            gc.collect()
            with profiled("writers"), window(windows["writers"]):
                barrier.wait()
                started = time.perf_counter()
                for thread in threads:
                    thread.join()
                writers_s = time.perf_counter() - started
            after = remote_head(remote)
            writes = [o for per in outcomes for o in per]
            acked = [name for name, code, _ in writes if code == 201]
            refused = [(name, code) for name, code, _ in writes if code != 201]
            commits = int(git("--git-dir", str(remote), "rev-list", "--count", f"{before}..{after}").decode())
            acknowledged.extend(acked)

            # -- nothing lost: the remote holds exactly the generated files and every acknowledged write
            files = remote_files(remote)
            expected = set(initial_files) | {model_path(n) for n in acknowledged}
            missing = sorted(expected - set(files))
            extra = sorted(set(files) - expected)
            # and reads see them
            served = {m["name"] for m in client.get("/api/v1/models").json()["items"]}
            unseen = sorted(f"{n}-1b" for n in acknowledged if f"{n}-1b" not in served)
            present = sum(1 for n in acked if model_path(n) in set(files))
            peak_rss = server.peak_rss_mib()
        finally:
            client.close()
            server.stop()
            ollama.stop()

    if args.profile and profiler is None:
        print("\n(no profile: --profile needs --in-process; the server's threads are in another process)",
              file=sys.stderr)
    if profiler is not None:
        stats = profiler.stats()
        if stats is not None:
            print(f"\n=== cProfile: {args.profile}, all server threads merged (by cumulative time) ===", file=sys.stderr)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(20)

    writer_seconds = [s for name, code, s in writes if code == 201]
    return {
        "models": args.models,
        "mode": server.mode,
        "requests": args.requests,
        "generate_s": generate_s,
        "settle_s": settle_s,
        "list": {"samples_s": list_s, "p50_s": percentile(list_s, 50), "p99_s": percentile(list_s, 99),
                 "bytes": list_bytes, "items": args.models},
        "list_after_write": {"samples_s": relist_s, "p50_s": statistics.median(relist_s),
                             "max_s": max(relist_s)},
        "get": {"samples_s": get_s, "p50_s": percentile(get_s, 50), "p99_s": percentile(get_s, 99),
                "bytes": get_bytes},
        "post": {"samples_s": post_s, "median_s": statistics.median(post_s)},
        "bare": {"samples_s": bare_s, "median_s": statistics.median(bare_s)},
        "post_ratio": statistics.median(post_s) / statistics.median(bare_s),
        "foreign": {"samples_s": foreign_s, "median_s": statistics.median(foreign_s) if foreign_s else None},
        "writers": {
            "writers": args.writers, "per_writer": args.per_writer, "attempted": args.writers * args.per_writer,
            "total_s": writers_s, "acknowledged": len(acked), "refused": refused, "errors": errors,
            "writes_per_s": len(acked) / writers_s,
            "p50_s": percentile(writer_seconds, 50) if writer_seconds else None,
            "p99_s": percentile(writer_seconds, 99) if writer_seconds else None,
            "commits": commits, "acknowledged_in_remote": present,
            "remote_files": len(files), "expected_files": len(expected),
            "missing": missing[:20], "missing_count": len(missing),
            "extra": extra[:20], "extra_count": len(extra),
            "unseen_by_list": unseen[:20], "unseen_count": len(unseen),
        },
        "server_peak_rss_mib": peak_rss,
        "server_full_gc": {phase: dict(zip(("count", "seconds"), server.gc.full(spans)))
                           for phase, spans in windows.items()},
    }


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"




def evaluate(r: dict) -> list[dict]:
    w = r["writers"]
    lossless = (w["acknowledged"] == w["attempted"] and not w["errors"] and w["missing_count"] == 0
                and w["extra_count"] == 0 and w["unseen_count"] == 0)
    return [
        {"bar": f"(1) GET /api/v1/models p50 < {LIST_BAR_MS:g} ms at {r['models']:,} models",
         "value": r["list"]["p50_s"] * 1000, "limit": LIST_BAR_MS, "unit": "ms",
         "ok": r["list"]["p50_s"] * 1000 < LIST_BAR_MS},
        {"bar": f"(3) POST <= {POST_BAR:g}x bare git add+commit+push",
         "value": r["post_ratio"], "limit": POST_BAR, "unit": "x", "ok": r["post_ratio"] <= POST_BAR},
        {"bar": f"(4) {w['writers']} writers lose nothing: {w['acknowledged']}/{w['attempted']} acknowledged, "
                f"{w['acknowledged_in_remote']}/{w['acknowledged']} of those in the remote "
                f"({w['remote_files']:,} files = {w['expected_files']:,} expected; missing {w['missing_count']}, "
                f"extra {w['extra_count']}, not listed {w['unseen_count']})",
         "value": None, "limit": None, "unit": "", "ok": lossless},
    ]


def print_table(r: dict, bars: list[dict]) -> None:
    w = r["writers"]
    head = ("measurement", "n", "p50 ms", "p99 ms", "server full GCs", "notes")
    gcs = r["server_full_gc"]

    def full_gc(phase: str, per: str | None = None) -> str:
        count, seconds = gcs[phase]["count"], gcs[phase]["seconds"]
        text = f"{count} ({seconds * 1000:,.0f} ms)"
        if per and gcs[phase]["count"]:
            n = len(r[per]["samples_s"])
            text = f"{count} ({seconds * 1000:,.0f} ms, {seconds * 1000 / n:,.0f}/req)"
        return text
    rows = [
        ("(1) GET /api/v1/models", str(len(r["list"]["samples_s"])), _ms(r["list"]["p50_s"]), _ms(r["list"]["p99_s"]),
         full_gc("list"), f"{r['list']['bytes']:,} bytes ({r['list']['bytes'] / 2**20:.2f} MiB), {r['list']['items']:,} items"),
        ("(1') first list after a write", str(len(r["list_after_write"]["samples_s"])),
         _ms(r["list_after_write"]["p50_s"]), "-", "-", f"max {_ms(r['list_after_write']['max_s'])} ms (list serialised afresh)"),
        ("(2) GET /api/v1/models/{name}", str(len(r["get"]["samples_s"])), _ms(r["get"]["p50_s"]), _ms(r["get"]["p99_s"]),
         full_gc("get"), f"{r['get']['bytes']:,} bytes, random names"),
        ("(3) POST /api/v1/models", str(len(r["post"]["samples_s"])), _ms(r["post"]["median_s"]), "-",
         full_gc("post", "post"), f"max {_ms(max(r['post']['samples_s']))} ms; {r['post_ratio']:.2f}x (3b)"),
        ("(3b) bare git add+commit+push", str(len(r["bare"]["samples_s"])), _ms(r["bare"]["median_s"]), "-", "-",
         f"max {_ms(max(r['bare']['samples_s']))} ms; 3 git subprocesses, same remote"),
    ]
    if r["foreign"]["samples_s"]:
        rows.append(("(3c) POST after a foreign push", str(len(r["foreign"]["samples_s"])),
                     _ms(r["foreign"]["median_s"]), "-", full_gc("foreign", "foreign"), "push refused once, fetch, commit again"))
    rows.append((f"(4) {w['writers']} writers x {w['per_writer']} POSTs", str(w["attempted"]), _ms(w["p50_s"]),
                 _ms(w["p99_s"]), full_gc("writers"), f"total {w['total_s']:.2f} s, {w['writes_per_s']:.1f} writes/s, "
                                  f"{w['commits']} commits"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "{:<%d}  {:>%d}  {:>%d}  {:>%d}  {:>%d}  {:<%d}" % tuple(widths)
    print(f"\nAPI on {r['models']:,} models ({r['mode']}; real HTTP, keep-alive httpx.Client in the benchmark process)")
    print(line.format(*head).rstrip())
    print(line.format(*("-" * wd for wd in widths)).rstrip())
    for row in rows:
        print(line.format(*row).rstrip())
    print("\n  p50/p99: nearest rank over n requests; (3), (3b), (3c): the p50 column is the median of n rounds")
    print("  server full GCs: generation-2 collections of the server's Python process that ended during the timed"
          " requests (whole phase for (4)), and their pauses" + (" (in-process: the whole process's)"
                                                                 if r["mode"].startswith("in-process") else ""))
    rss = r["server_peak_rss_mib"]
    print(f"  set-up: generate {r['generate_s']:.1f} s; server start to every model Ready {r['settle_s']:.1f} s;"
          f" server peak RSS {'-' if rss is None else f'{rss:,.0f} MiB'}"
          f"{' (this process: server, stand-in Ollama and client)' if r['mode'].startswith('in-process') else ''}")
    print("\nBars:")
    for bar in bars:
        value = "" if bar["value"] is None else f": {bar['value']:,.2f}{bar['unit']} (limit {bar['limit']:g}{bar['unit']})"
        print(f"  {verdict(bar['ok'])}  {bar['bar']}{value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000, help="model files in the repository (default 10000)")
    parser.add_argument("--requests", type=int, default=200, help="timed GETs for (1) and for (2) (default 200)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers in (4) (default 32)")
    parser.add_argument("--per-writer", type=int, default=5, help="POSTs per writer in (4) (default 5)")
    parser.add_argument("--posts", type=int, default=7, help="rounds of (3) (default 7)")
    parser.add_argument("--foreign", type=int, default=3, help="rounds of (3c) (default 3; 0 leaves it out)")
    parser.add_argument("--in-process", action="store_true", help="serve through tests/apirig.py in this process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="100 models, 20 requests, 3 posts, 4 writers x 2")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    parser.add_argument("--profile", choices=("list", "get", "post", "writers"),
                        help="with --in-process: cProfile every server thread during that measurement, to stderr")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.requests, args.posts, args.foreign, args.writers, args.per_writer = 100, 20, 3, 1, 4, 2
    if min(args.models, args.requests, args.writers, args.per_writer, args.posts) < 1 or args.foreign < 0:
        parser.error("--models, --requests, --writers, --per-writer and --posts must be at least 1")

    result = run(args)
    bars = evaluate(result)
    print_table(result, bars)
    if args.json:
        git_version = git("--version").decode().strip()
        args.json.write_text(json.dumps({
            "benchmark": "bench_api", "python": sys.version.split()[0], "platform": platform.platform(),
            "git": git_version, "cpus": os.cpu_count(), "result": result, "bars": bars,
            "all_pass": all(b["ok"] for b in bars),
        }, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
