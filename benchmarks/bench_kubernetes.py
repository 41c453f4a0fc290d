"""Benchmark: Kubernetes mode (Git to OllamaModel resources, and the controller writing their status)
against the stand-in Kubernetes API server, next to the bare cost of creating the same objects.

For each size (number of model files) a child process (so that peak RSS is per size):

  - generates a models repository with `git fast-import` (`models/<ns>/model<i>-1b.yaml`, each
    `name: model<i>` / `tag: "1b"`, round-robin over the namespaces `default`, `team-a`, `team-b` and
    `team-c`, which all exist in the stand-in) and pushes it to a bare remote; a plain clone of it
    pushes the changes later;
  - starts the stand-in API server (`tests/standins/kube_apiserver.py`, with the CRD's schema) in a
    process of its own by default, as a real API server is (`--in-process`: in the benchmark process,
    as the tests' `KubeRig` does; then it shares the GIL with the product), and the stand-in Ollama with
    every model already installed, so no pull is needed but every status must be written;
  - (1) cold start, timed as one span: the product is wired as `reconciler.cluster.connect` and
    `reconciler.service.build` wire it (the list-and-watch `ResourceCache` started and synced,
    `ClusterStateStore` with the process lock taken, `ClusterSync`, `Reconciler(..., cluster=sync)` with
    `resync_interval=3600`), then cycles run as the tests' `KubeRig.settle()` runs them: a cycle, the pulls
    waited for, the status writes flushed, the watch caught up with every write, until a cycle writes
    nothing and every resource carries status Ready (at most 10 cycles); --cold-repeat runs (default 3),
    each on a fresh stand-in with a fresh state directory, the median run counts and the last one's
    product goes on to the rounds below. Afterwards (not timed) every
    object in the stand-in is checked: managed-by label, finalizer, spec, status Ready with the size and
    digest Ollama reports; and no pull was made. (1a) is the part of (1) until the first cycle's server-side
    applies were all answered: every resource created (the status writes, which need the watch to have
    brought each resource, follow);
  - then one untimed warm-up round plus --repeat timed rounds (medians reported), each:
      push:               the working clone changes `labels: {rev: "<n>"}` in one model file, commits
                          and pushes                                              -- not timed
      (3) change cycle:   `run_cycle()` of that commit, its pulls waited for and its status writes
                          flushed; the requests made in that span are counted
      follow-up:          the watch caught up, then cycles until one is a no-op   -- not timed; the
                          cycles needed and their requests are recorded (the product's own write comes
                          back through the watch as a change)
      (2) no-op cycle:    `run_cycle()` with nothing new (must be `report.noop`); requests counted
  - (4) bare cost: the stand-in is replaced by a fresh one (same namespaces), and the same objects the
    product applied (`desired_body()` of every model, built beforehand) are sent one by one by the
    `kubernetes` client's `create_namespaced_custom_object` on one `ApiClient`: timed; --bare-repeat runs
    (default 3), each on a fresh stand-in, the median run counts;
  - (5) the bar's baseline (issue 16): on a fresh stand-in each run, interleaved with the runs of (4), per
    object the create of (4), then its status as the product wrote it (read back from the cache after
    (1)) by the client's `patch_namespaced_custom_object_status` (server-side apply under the controller's
    field manager, as the product writes status): 2 requests a model, one by one; the median run counts;
  - (4') for information: on another fresh stand-in, the product's own cold-start requests sent bare, one
    by one (per model: the server-side apply the sync makes, then the status apply the controller
    makes), to tell the request mix apart from the product's own overhead.

Requests are read from the stand-in's request log and sorted into kinds: `list`, `watch`, `get`,
`apply` (server-side apply patch), `create` (an OllamaModel POST), `status` (a patch of the status
subresource), `patch` (other patches: annotations, finalizers), `update`, `delete` and `event` (a POST
of a core Event). Writes are create, apply, status, patch, update, delete and event.

Bars (printed as PASS/FAIL):
  - (2) no-op cycle: no list request and no write at every size, in every round (a new watch request
    would be shown, not counted against the bar: open watches are the point of the cache);
  - (3) one-change cycle: at most 3 writes at every size, in every round, and the same count at the
    smallest and the largest size;
  - (1a)/(4): the cold start at the largest size, everything created, at most 2x the bare creates of the
    same size (the first Kubernetes issue's bar, where a cold start is "everything created");
  - (1)/(5): the whole cold start at the largest size, every status Ready, at most 1.3x the bare creates
    plus status writes (issue 16, item 7). (1)/(4), the old ratio, is shown beside it, not held to a bar.

Each ratio is printed beside its baseline in seconds, and where the sizes vary, the growth exponent of
(1), (4) and (5) fitted over them (least squares of log time against log size).

Peak RSS is the child process's for its size, every cold start of --cold-repeat included (the
earlier ones' memory is not all given back).

CPU columns: `product CPU` is the benchmark process's CPU time (all its threads: the product, and in
`--in-process` mode the stand-in too) during the cold start; `server CPU` that of the stand-in's process
(only when it runs apart), so a reader can see which side the time goes to.

Run from the repository root:

    python benchmarks/bench_kubernetes.py                          # sizes 10, 1000, 10000; 5 repeats
    python benchmarks/bench_kubernetes.py --smoke                  # sizes 10, 100; 1 repeat, 1 run each
    python benchmarks/bench_kubernetes.py --json out.json --check
    python benchmarks/bench_kubernetes.py --sizes 10000 --repeat 1 --profile cold   # cProfile to stderr
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import gc
import importlib
import io
import json
import multiprocessing
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the stand-ins live in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, exponent, generate, git, model_text, verdict  # noqa: E402

DEFAULT_SIZES = (10, 1_000, 10_000)
SMOKE_SIZES = (10, 100)
NAMESPACES = ("default", "team-a", "team-b", "team-c")  # `default` exists in the stand-in; the rest are added
MODEL_SIZE = 1_234_567_890  # bytes the stand-in Ollama reports for every model
COLD_BAR = 2.0  # cold start (everything created) / bare creates, at the largest size
READY_BAR = 1.3  # cold start (everything Ready) / bare creates + status writes, at the largest size (issue 16)
CHANGE_WRITES_BAR = 3  # writes of a one-change cycle
MAX_COLD_CYCLES = 10
WAIT_TIMEOUT = 300.0  # seconds: a flush or the watch catching up that takes longer is a failure
CRD = ROOT / "manifests" / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"

KINDS = ("list", "watch", "get", "apply", "create", "status", "patch", "update", "delete", "event")
WRITE_KINDS = ("create", "apply", "status", "patch", "update", "delete", "event")



# ---------------------------------------------------------------------------------------------
# Repositories
# ---------------------------------------------------------------------------------------------



def model_namespace(i: int) -> str:
    return NAMESPACES[i % len(NAMESPACES)]


def model_path(i: int) -> str:
    return f"models/{model_namespace(i)}/model{i}-1b.yaml"






def crd_schema() -> dict:
    import yaml

    return yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# ---------------------------------------------------------------------------------------------
# Profiling: a cProfile per thread, switched on around one phase
# ---------------------------------------------------------------------------------------------

class ThreadProfiler:
    """While `on`, each call of a wrapped function runs under a cProfile (timed by thread CPU time) of
    its own thread (the cycle in the main thread, the write and status pools, the cache's thread). The
    wrappers are set by the benchmark on the classes; no product code changes. The profiles of all
    threads are merged."""

    def __init__(self) -> None:
        self.on = False
        self._local = threading.local()
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def wrap(self, owner: Any, name: str, skip=None) -> None:  # type: ignore[no-untyped-def]
        function = getattr(owner, name)
        profiler = self

        @functools.wraps(function)
        def profiled(*args, **kwargs):  # type: ignore[no-untyped-def]
            local = profiler._local
            if not profiler.on or getattr(local, "active", False) or (skip is not None and skip(*args)):
                return function(*args, **kwargs)
            profile = getattr(local, "profile", None)
            if profile is None:
                # Thread CPU time, not wall time: a thread waiting for the GIL, a lock or the
                # network is not charged, so the merged threads add up to CPU spent.
                profile = local.profile = cProfile.Profile(time.thread_time)
                with profiler._lock:
                    profiler._profiles.append(profile)
            local.active = True
            profile.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profile.disable()
                local.active = False

        setattr(owner, name, profiled)

    def report(self, title: str) -> str:
        merged = None
        with self._lock:
            profiles = list(self._profiles)
        out = io.StringIO()
        for profile in profiles:
            profile.create_stats()
            if not profile.stats:  # type: ignore[attr-defined]
                continue
            if merged is None:
                merged = pstats.Stats(profile, stream=out)
            else:
                merged.add(profile)
        if merged is None:
            return f"\n=== cProfile: {title}: nothing recorded ===\n"
        out.write(f"\n=== cProfile: {title}, all threads merged (by cumulative time) ===\n")
        merged.sort_stats("cumulative").print_stats(40)
        out.write(f"\n=== cProfile: {title} (by own time) ===\n")
        merged.sort_stats("tottime").print_stats(25)
        return out.getvalue()


def profile_product(profiler: ThreadProfiler) -> None:
    """Wrap the product's units of work in the benchmark process."""
    from kubernetes import watch

    from ollama_gitops.reconciler.cluster.cache import ResourceCache
    from ollama_gitops.reconciler.cluster.status import ClusterStateStore
    from ollama_gitops.reconciler.cluster.sync import ResourceSync
    from ollama_gitops.reconciler.reconcile import Reconciler

    profiler.wrap(Reconciler, "run_cycle")  # main thread: the cycle, the sync's wait on its pool included
    profiler.wrap(ResourceSync, "_write")  # kube-write pool: one resource write each
    profiler.wrap(ClusterStateStore, "_write")  # kube-status pool: one record's writes each
    profiler.wrap(ResourceCache, "_list")  # the cache thread: its list
    profiler.wrap(ResourceCache, "_handle")  # the cache thread: one watch event each
    profiler.wrap(watch.Watch, "unmarshal_event")  # the cache thread: decoding one watch line


# ---------------------------------------------------------------------------------------------
# The stand-in API server, in this process or in its own
# ---------------------------------------------------------------------------------------------

def _kind(record: Any) -> str:
    """The kind of one logged request (see the module docstring)."""
    verb = record.verb
    if verb in ("list", "watch", "get", "discovery", "unknown"):
        return verb
    if "events" in record.path.split("/"):
        return "event" if verb == "create" else f"event-{verb}"
    if record.subresource == "status":
        return "status"
    if verb == "patch":
        return "apply" if "apply-patch" in (record.content_type or "") else "patch"
    if verb == "deletecollection":
        return "delete"
    return verb


class StandinControl:
    """What the benchmark asks of the stand-in; runs where the stand-in runs."""

    def __init__(self, schema: dict, namespaces: tuple[str, ...]) -> None:
        self._schema = schema
        self._namespaces = namespaces
        self.kube = None
        self._offset = 0
        self._profiler: ThreadProfiler | None = None

    def start(self) -> str:
        """A fresh stand-in (the previous one stopped); returns its URL."""
        from standins.kube_apiserver import KubeStandin

        self.stop()
        self.kube = KubeStandin(schema=self._schema).start()
        for namespace in self._namespaces:
            self.kube.add_namespace(namespace)
        self._offset = len(self.kube.request_log)
        return self.kube.url

    def stop(self) -> None:
        if self.kube is not None:
            self.kube.stop()
            self.kube = None

    def take_log(self) -> dict:
        """The requests received since the last call: counts by kind, and the first writes in full."""
        log = self.kube.request_log
        records, self._offset = log[self._offset:], len(log)
        kinds = collections.Counter(_kind(r) for r in records)
        writes = [f"{r.method} {r.path}{'/' if r.subresource else ''}{r.subresource or ''} ({_kind(r)})"
                  for r in records if _kind(r) in WRITE_KINDS]
        return {"kinds": dict(kinds), "writes": writes[:12]}

    def cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def models_version(self) -> tuple[int, int]:
        """(number of OllamaModels, highest resourceVersion among them)."""
        from standins.kube_apiserver import OLLAMAMODELS

        store = self.kube._store
        with store.lock:
            objects = store.objects[OLLAMAMODELS.key]
            return len(objects), max((int(o["metadata"]["resourceVersion"]) for o in objects.values()), default=0)

    def check_models(self, expected: dict[tuple[str, str], dict], digests: dict[str, str]) -> list[str]:
        """Problems with the stored OllamaModels against what is expected (empty when all is well)."""
        from ollama_gitops.reconciler.cluster.resources import FINALIZER, MANAGED_BY, MANAGED_BY_VALUE

        problems = []
        stored = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self.kube.objects()}
        if stored.keys() != expected.keys():
            problems.append(f"{len(stored)} objects stored, {len(expected)} expected; "
                            f"e.g. missing {sorted(expected.keys() - stored.keys())[:3]}, "
                            f"extra {sorted(stored.keys() - expected.keys())[:3]}")
        for key, spec in expected.items():
            obj = stored.get(key)
            if obj is None:
                continue
            meta, status = obj["metadata"], obj.get("status") or {}
            reference = f"{spec['name']}:{spec['tag']}"
            wrong = []
            if obj.get("spec") != spec:
                wrong.append(f"spec {obj.get('spec')}")
            if (meta.get("labels") or {}).get(MANAGED_BY) != MANAGED_BY_VALUE:
                wrong.append("no managed-by label")
            if FINALIZER not in (meta.get("finalizers") or []):
                wrong.append("no finalizer")
            if status.get("state") != "Ready" or status.get("size") != MODEL_SIZE \
                    or status.get("digest") != digests.get(reference):
                wrong.append(f"status {status}")
            if wrong:
                problems.append(f"{key[0]}/{key[1]}: {'; '.join(wrong)}")
            if len(problems) >= 10:
                break
        return problems

    def profile(self, on: bool) -> str:
        """Start (on) or stop and report a cProfile of the stand-in's request handling (watches left out:
        their events are profiled where they are serialised, `_chunk`)."""
        from standins.kube_apiserver import _Handler

        if on:
            if self._profiler is None:
                self._profiler = ThreadProfiler()
                self._profiler.wrap(_Handler, "_dispatch", skip=lambda handler: "watch=" in handler.path)
                self._profiler.wrap(_Handler, "_chunk")
            self._profiler.on = True
            return ""
        if self._profiler is None:
            return ""
        self._profiler.on = False
        return self._profiler.report("stand-in API server")


def _standin_process(conn, schema: dict, namespaces: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    control = StandinControl(schema, namespaces)
    try:
        while True:
            name, args = conn.recv()
            if name == "exit":
                break
            try:
                conn.send(("ok", getattr(control, name)(*args)))
            except Exception as exc:  # sent back, raised in the benchmark process
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        control.stop()
        conn.close()


class Standin:
    """The stand-in, behind the same calls whether it runs here or in its own process."""

    def __init__(self, schema: dict, namespaces: tuple[str, ...], in_process: bool) -> None:
        self.in_process = in_process
        if in_process:
            self._control = StandinControl(schema, namespaces)
            self._process = None
        else:
            context = multiprocessing.get_context("spawn")
            self._conn, child = context.Pipe()
            self._process = context.Process(target=_standin_process, args=(child, schema, namespaces),
                                            name="kube-standin", daemon=True)
            self._process.start()
            child.close()

    def call(self, name: str, *args: Any) -> Any:
        if self._process is None:
            return getattr(self._control, name)(*args)
        self._conn.send((name, args))
        outcome, value = self._conn.recv()
        if outcome == "error":
            raise RuntimeError(f"stand-in: {name} failed: {value}")
        return value

    def close(self) -> None:
        if self._process is None:
            self._control.stop()
            return
        try:
            self._conn.send(("exit", ()))
        except OSError:
            pass
        self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


# ---------------------------------------------------------------------------------------------
# The product, wired as in Kubernetes mode
# ---------------------------------------------------------------------------------------------

class Product:
    """`reconciler.cluster.connect.connect` + `reconciler.service.build`, on the stand-ins."""

    def __init__(self, url: str, remote: Path, state: Path, ollama_url: str) -> None:
        from kubernetes import client

        from ollama_gitops.reconciler.cluster.cache import ResourceCache
        from ollama_gitops.reconciler.cluster.client import ClusterClient
        from ollama_gitops.reconciler.cluster.status import ClusterStateStore
        from ollama_gitops.reconciler.cluster.sync import ClusterSync, ResourceSync
        from ollama_gitops.reconciler.git.repo import GitRepo
        from ollama_gitops.reconciler.ollama.server import OllamaServer
        from ollama_gitops.reconciler.reconcile import Reconciler

        state.mkdir(parents=True, exist_ok=True)
        self.api = client.ApiClient(client.Configuration(host=url))
        # What the cache reports as changed, each a cycle requested in `serve` (service.build wires
        # on_change to request_cycle): after the first list, only others' changes should be here.
        self.wakeups: list[set] = []
        self.cache = ResourceCache(client.CustomObjectsApi(self.api), on_change=self.wakeups.append).start()
        if not self.cache.wait_synced(60):
            raise RuntimeError("the resource cache did not sync within 60 s")
        kube = ClusterClient(self.api, self.cache)  # as connect() wires it
        self.store = ClusterStateStore(state, kube, self.cache)
        self.sync = ClusterSync(kube, self.cache, self.store)
        self.applies_done: list[float] = []  # perf_counter() each time a cycle's resource writes were all answered
        ResourceSync.run = _noting_end(ResourceSync.run, self.applies_done)  # type: ignore[method-assign]
        self.store.acquire_process_lock()
        self.reconciler = Reconciler(GitRepo(str(remote), "main", state / "clone.git"), OllamaServer(ollama_url),
                                     self.store, resync_interval=3600, cluster=self.sync)

    def cycle(self):  # type: ignore[no-untyped-def]
        """A cycle, its pulls, and the status writes that follow."""
        report = self.reconciler.run_cycle()
        if not self.reconciler.pulls.wait(timeout=WAIT_TIMEOUT):
            raise RuntimeError("pulls did not end")
        if not self.store.flush(WAIT_TIMEOUT):
            raise RuntimeError("status writes did not end")
        return report

    def catch_up(self, standin: Standin) -> None:
        """Wait until the watch has brought every OllamaModel write into the cache."""
        count, version = standin.call("models_version")
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            snapshot = self.cache.snapshot()
            seen = max((int(r.resource_version) for r in snapshot.values()), default=0)
            if len(snapshot) == count and seen >= version:
                return
            time.sleep(0.01)
        raise RuntimeError(f"the cache did not catch up with the stand-in ({count} objects, version {version})")

    def all_ready(self, size: int) -> bool:
        snapshot = self.cache.snapshot()
        return len(snapshot) == size and all(r.status.get("state") == "Ready" for r in snapshot.values())

    def close(self) -> None:
        self.reconciler.close()
        self.sync.close()
        self.store.close()
        self.store.release_process_lock()
        self.cache.stop()
        self.api.close()


def _noting_end(run, ends: list[float]):  # type: ignore[no-untyped-def]
    """`ResourceSync.run`, noting when it returned (every apply of the cycle answered)."""
    original = getattr(run, "__wrapped__", run)

    @functools.wraps(original)
    def noted(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(*args, **kwargs)
        ends.append(time.perf_counter())
        return result

    return noted


def status_apply_body(body: dict, status: dict) -> dict:
    """The status subresource's server-side apply of `status` onto the object `body` (as the controller sends it)."""
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": status}


def _writes(kinds: dict[str, int]) -> int:
    return sum(n for kind, n in kinds.items() if kind in WRITE_KINDS)


def _merge(into: dict[str, int], kinds: dict[str, int]) -> None:
    for kind, n in kinds.items():
        into[kind] = into.get(kind, 0) + n


# ---------------------------------------------------------------------------------------------
# One size, in its own process
# ---------------------------------------------------------------------------------------------

def bench_size(size: int, repeat: int, profile: str | None, in_process: bool, bare_repeat: int = 3,
               cold_repeat: int = 1) -> dict:
    os.environ.update(GIT_ENV)
    from kubernetes import client

    from ollama_gitops.reconciler.cluster.client import APPLY, CONTROLLER_MANAGER
    from ollama_gitops.reconciler.cluster.resources import FIELD_MANAGER, GROUP, PLURAL, VERSION, desired_body
    from standins.ollama_server import OllamaStandin

    # Imports are not timed. The client imports its API classes and models lazily, CoreV1Api alone in
    # ~0.7 s: once per process, and not what is measured here, so that too is done before any timing.
    for module in ("ollama_gitops.reconciler.cluster.cache", "ollama_gitops.reconciler.cluster.status",
                   "ollama_gitops.reconciler.cluster.sync",
                   "ollama_gitops.reconciler.git.repo", "ollama_gitops.reconciler.ollama.server",
                   "ollama_gitops.reconciler.reconcile"):
        importlib.import_module(module)
    for name in ("CoreV1Api", "CustomObjectsApi", "CoreV1Event", "V1ObjectMeta", "V1ObjectReference", "V1EventSource"):
        getattr(client, name)

    profiler = ThreadProfiler() if profile else None
    if profiler is not None:
        profile_product(profiler)
    profiles: list[str] = []

    def profiling(phase: str, on: bool) -> None:
        if profiler is None or profile != phase:
            return
        profiler.on = on
        text = standin.call("profile", on)
        if not on:
            profiles.append(profiler.report(f"{phase} at {size:,} models, benchmark process") + text)

    machine_before, ours_before, wall_before = _machine_busy(), _own_cpu(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-kubernetes-{size}-") as tmp:
        parent = Path(tmp)
        remote, generate_s = generate(parent, size, model_path)
        work = parent / "work"
        git("clone", "-q", str(remote), str(work))

        ollama = OllamaStandin().start()
        for i in range(size):
            ollama.add_to_catalogue(f"model{i}:1b", MODEL_SIZE)
            ollama.install(f"model{i}:1b", MODEL_SIZE)
        digests = {f"model{i}:1b": ollama.digest_of(f"model{i}:1b") for i in range(size)}
        expected = {(model_namespace(i), f"model{i}-1b"): {"name": f"model{i}", "tag": "1b"} for i in range(size)}

        standin = Standin(crd_schema(), NAMESPACES, in_process)
        product = None
        try:
            url = standin.call("start")
            standin.call("take_log")

            # -- (1) cold start: wiring, then cycles until settled; --cold-repeat runs, each on a fresh
            # stand-in and state, the median counts and the last one's product goes on to the rounds ----
            def cold_start(state: Path, profiled: bool) -> tuple[Product, dict]:
                nonlocal product  # closed by the `finally` below if this raises
                cycles: list[dict] = []
                cold_kinds: dict[str, int] = {}
                gc.collect()
                cpu_server = standin.call("cpu") if not in_process else 0.0
                cpu_self = time.process_time()
                if profiled:
                    profiling("cold", True)
                started = time.perf_counter()
                product = Product(url, remote, state, ollama.url)
                wired_s = time.perf_counter() - started
                ready_s = None
                settled = False
                for _ in range(MAX_COLD_CYCLES):
                    began = time.perf_counter()
                    report = product.cycle()
                    cycle_s = time.perf_counter() - began
                    product.catch_up(standin)
                    kinds = standin.call("take_log")["kinds"]
                    _merge(cold_kinds, kinds)
                    cycles.append({"report": report.message[:200], "ok": report.ok, "full": report.full,
                                   "noop": report.noop, "cycle_s": cycle_s,
                                   "with_catch_up_s": time.perf_counter() - began, "requests": kinds})
                    ready = product.all_ready(size)
                    if ready and ready_s is None:
                        ready_s = time.perf_counter() - started
                    if report.ok and ready and _writes(kinds) == 0:
                        settled = True
                        break
                cold_s = time.perf_counter() - started
                created_s = product.applies_done[0] - started  # the first cycle applied every resource
                if profiled:
                    profiling("cold", False)
                cold_cpu_self = time.process_time() - cpu_self
                cold_cpu_server = standin.call("cpu") - cpu_server if not in_process else None
                if not settled:
                    snapshot = product.cache.snapshot()
                    not_ready = sorted(str(k) for k, r in snapshot.items() if r.status.get("state") != "Ready")
                    raise RuntimeError(
                        f"the cold start did not settle in {MAX_COLD_CYCLES} cycles ({len(snapshot)} resources, "
                        f"{len(not_ready)} without status Ready, e.g. {not_ready[:3]}; the last cycles: "
                        f"{[(c['report'], c['requests']) for c in cycles[-3:]]})")
                problems = standin.call("check_models", expected, digests)
                if problems:
                    raise RuntimeError("after the cold start: " + "; ".join(problems))
                if sum(ollama.pull_count.values()):
                    raise RuntimeError(f"the cold start pulled: {dict(ollama.pull_count)}")
                cache_stats = dict(vars(product.cache.stats))
                wakeups = product.wakeups[1:]  # the first is the first list's (always made, even when empty)
                return product, {"cold_s": cold_s, "cold_wiring_s": wired_s, "cold_ready_s": ready_s,
                                 "cold_created_s": created_s, "cold_cycles": cycles, "cold_requests": cold_kinds,
                                 "cold_cpu_self_s": cold_cpu_self, "cold_cpu_server_s": cold_cpu_server,
                                 "cache_stats_after_cold": cache_stats, "cold_wakeups": len(wakeups),
                                 "cold_wakeup_keys": sum(len(w) for w in wakeups)}

            cold_runs: list[dict] = []
            for run in range(cold_repeat):
                if run:
                    url = standin.call("start")
                    standin.call("take_log")
                product, cold = cold_start(parent / f"state-{run}", profiled=run == cold_repeat - 1)
                cold_runs.append(cold)
                if run < cold_repeat - 1:
                    product.close()
                    product = None

            # -- rounds: warm-up (round 0, discarded) + `repeat` timed ones -----------------------
            changed = model_path(0)
            rounds: list[dict] = []
            for round_ in range(repeat + 1):
                last = round_ == repeat
                (work / changed).write_text(model_text(0, rev=round_ + 1))
                git("commit", "-q", "-a", "-m", f"rev {round_ + 1}", cwd=work)
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                head = git("rev-parse", "HEAD", cwd=work).decode().strip()
                standin.call("take_log")

                # (3) the cycle of a one-file change, with the status writes that follow
                gc.collect()
                if last:
                    profiling("change", True)
                began = time.perf_counter()
                report = product.cycle()
                change_s = time.perf_counter() - began
                if last:
                    profiling("change", False)
                change_log = standin.call("take_log")
                if not report.ok or report.noop or report.full or report.commit != head:
                    raise RuntimeError(f"the change cycle was not a partial cycle of {head[:12]}: {report.message}")

                # follow-up (not timed): the watch brings the write back; cycles until a no-op
                followups: list[dict] = []
                for _ in range(MAX_COLD_CYCLES):
                    product.catch_up(standin)
                    report = product.cycle()
                    kinds = standin.call("take_log")["kinds"]
                    if report.noop and not kinds:
                        break
                    followups.append({"report": report.message[:200], "noop": report.noop, "requests": kinds})
                else:
                    raise RuntimeError(f"no no-op cycle after the change: {followups}")
                product.catch_up(standin)
                standin.call("take_log")

                # (2) the no-op cycle
                gc.collect()
                if last:
                    profiling("noop", True)
                began = time.perf_counter()
                report = product.cycle()
                noop_s = time.perf_counter() - began
                if last:
                    profiling("noop", False)
                noop_log = standin.call("take_log")
                if round_ > 0:
                    rounds.append({"change_s": change_s, "change_requests": change_log["kinds"],
                                   "change_writes": change_log["writes"], "followups": followups,
                                   "noop_s": noop_s, "noop_is_noop": report.noop,
                                   "noop_requests": noop_log["kinds"], "noop_writes": noop_log["writes"]})
            if sum(ollama.pull_count.values()):
                raise RuntimeError(f"a cycle pulled: {dict(ollama.pull_count)}")
            bodies = [desired_body(m, product.reconciler.desired.commit)
                      for _, m in sorted(product.reconciler.desired.models.items())]
            statuses = {key: dict(r.status) for key, r in product.cache.snapshot().items()}
            product.close()
            product = None

            # -- (4) bare cost: the same objects created one by one on a fresh stand-in ------------
            # Interleaved, so that a load that comes and goes weighs on (4) and (5) alike.
            bare: dict[str, list[dict]] = {"creates": [], "create_status": [], "apply_status": []}
            for phase in ("creates", "create_status") * bare_repeat + ("apply_status",):
                url = standin.call("start")
                with client.ApiClient(client.Configuration(host=url)) as api:
                    custom = client.CustomObjectsApi(api)
                    custom.get_api_resources(GROUP, VERSION)  # the connection made, not timed
                    standin.call("take_log")
                    gc.collect()
                    cpu_server = standin.call("cpu") if not in_process else 0.0
                    cpu_self = time.process_time()
                    began = time.perf_counter()
                    if phase == "creates":
                        for body in bodies:
                            meta = body["metadata"]
                            custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, body)
                    elif phase == "create_status":
                        for body in bodies:
                            meta = body["metadata"]
                            custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, body)
                            custom.patch_namespaced_custom_object_status(
                                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                status_apply_body(body, statuses[(meta["namespace"], meta["name"])]),
                                field_manager=CONTROLLER_MANAGER, force=True, _content_type=APPLY)
                    else:
                        for body in bodies:
                            meta = body["metadata"]
                            custom.patch_namespaced_custom_object(
                                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body,
                                field_manager=FIELD_MANAGER, force=True, _content_type=APPLY)
                            custom.patch_namespaced_custom_object_status(
                                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                status_apply_body(body, statuses[(meta["namespace"], meta["name"])]),
                                field_manager=CONTROLLER_MANAGER, force=True, _content_type=APPLY)
                    seconds = time.perf_counter() - began
                    bare[phase].append({
                        "s": seconds, "cpu_self_s": time.process_time() - cpu_self,
                        "cpu_server_s": standin.call("cpu") - cpu_server if not in_process else None,
                        "requests": standin.call("take_log")["kinds"],
                    })
                count, _ = standin.call("models_version")
                if count != size:
                    raise RuntimeError(f"the bare {phase} stored {count} objects, not {size}")
        finally:
            if product is not None:
                product.close()
            standin.close()
            ollama.stop()

    for text in profiles:
        print(text, file=sys.stderr)

    def median(name: str) -> float:
        return statistics.median(r[name] for r in rounds)

    # The median run of the bare creates (by time), with its CPU and requests.
    def median_run(runs: list[dict], key: str = "s") -> dict:
        return sorted(runs, key=lambda b: b[key])[(len(runs) - 1) // 2]

    cold = median_run(cold_runs, "cold_s")
    bare_creates = median_run(bare["creates"])
    bare_create_status = median_run(bare["create_status"])

    return {
        "size": size,
        "namespaces": len(NAMESPACES),
        "repeat": repeat,
        "standin": "in-process" if in_process else "own process",
        "generate_s": generate_s,
        **cold,
        "cold_samples_s": [c["cold_s"] for c in cold_runs],
        "created_ratio": cold["cold_created_s"] / bare_creates["s"],
        "rounds": rounds,
        "noop_median_s": median("noop_s"),
        "change_median_s": median("change_s"),
        "bare_creates": bare_creates,
        "bare_creates_samples_s": [b["s"] for b in bare["creates"]],
        "bare_apply_status": bare["apply_status"][0],
        "bare_create_status": bare_create_status,
        "bare_create_status_samples_s": [b["s"] for b in bare["create_status"]],
        "cold_ratio": cold["cold_s"] / bare_creates["s"],
        "ready_ratio": cold["cold_s"] / bare_create_status["s"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "other_cpu_s": _other_cpu(machine_before, ours_before),  # CPU time other processes used meanwhile
        "wall_s": time.perf_counter() - wall_before,
    }


def _machine_busy() -> float | None:
    """Seconds of CPU the whole machine has been busy (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have ended (git, the stand-in's process)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _other_cpu(machine_before: float | None, ours_before: float) -> float | None:
    machine = _machine_busy()
    if machine is None or machine_before is None:
        return None
    return max(0.0, (machine - machine_before) - (_own_cpu() - ours_before))


def run_child(size: int, repeat: int, profile: str | None, in_process: bool, bare_repeat: int,
              cold_repeat: int) -> dict:
    """Run one size in a fresh interpreter so that its peak RSS is its own."""
    with tempfile.NamedTemporaryFile(prefix="bench-kubernetes-", suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    try:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(size), "--repeat", str(repeat),
                   "--bare-repeat", str(bare_repeat), "--cold-repeat", str(cold_repeat), "--child-out", str(out_path)]
        if profile:
            command += ["--profile", profile]
        if in_process:
            command.append("--in-process")
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"bench_kubernetes: size {size:,} failed (see the error above)")
        return json.loads(out_path.read_text())
    finally:
        out_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"




def _kinds_text(kinds: dict[str, int]) -> str:
    shown = [f"{kind} {kinds[kind]:,}" for kind in KINDS if kinds.get(kind)]
    shown += [f"{kind} {n:,}" for kind, n in sorted(kinds.items()) if kind not in KINDS and n]
    return ", ".join(shown) or "none"


def _noop_bad(kinds: dict[str, int]) -> int:
    return kinds.get("list", 0) + _writes(kinds)


def evaluate(results: list[dict]) -> list[dict]:
    bars = []
    for r in results:
        worst = max(_noop_bad(x["noop_requests"]) for x in r["rounds"])
        all_noop = all(x["noop_is_noop"] for x in r["rounds"])
        bars.append({"bar": f"(2) no-op cycle at {r['size']:,}: no list, no write (every round)",
                     "value": worst, "limit": 0, "ok": worst == 0 and all_noop,
                     "shown": f"{worst} list+write requests at most"
                              + ("" if all_noop else "; a cycle was NOT a no-op")})
    for r in results:
        worst = max(_writes(x["change_requests"]) for x in r["rounds"])
        bars.append({"bar": f"(3) one-change cycle at {r['size']:,}: at most {CHANGE_WRITES_BAR} writes (every round)",
                     "value": worst, "limit": CHANGE_WRITES_BAR, "ok": worst <= CHANGE_WRITES_BAR,
                     "shown": f"{worst} writes at most"})
    if len(results) >= 2:
        small, large = min(results, key=lambda r: r["size"]), max(results, key=lambda r: r["size"])
        counts = {r["size"]: sorted({_writes(x["change_requests"]) for x in r["rounds"]}) for r in (small, large)}
        bars.append({"bar": f"(3) one-change cycle: same writes at {small['size']:,} and {large['size']:,}",
                     "value": counts[large["size"]], "limit": counts[small["size"]],
                     "ok": counts[small["size"]] == counts[large["size"]] and len(counts[large["size"]]) == 1,
                     "shown": f"{'/'.join(map(str, counts[small['size']]))} vs "
                              f"{'/'.join(map(str, counts[large['size']]))}"})
    large = max(results, key=lambda r: r["size"])
    bars.append({"bar": f"(1a)/(4) cold start at {large['size']:,}, every resource created, <= {COLD_BAR:g}x "
                        "bare creates",
                 "value": large["created_ratio"], "limit": COLD_BAR, "ok": large["created_ratio"] <= COLD_BAR,
                 "shown": f"{large['created_ratio']:.2f}x (limit {COLD_BAR:g}x)"})
    bars.append({"bar": f"(1)/(5) cold start at {large['size']:,}, every status Ready, <= {READY_BAR:g}x "
                        "bare creates + status writes",
                 "value": large["ready_ratio"], "limit": READY_BAR, "ok": large["ready_ratio"] <= READY_BAR,
                 "shown": f"{large['ready_ratio']:.2f}x of {large['bare_create_status']['s']:,.2f} s "
                          f"(limit {READY_BAR:g}x)"})
    return bars


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 0) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(("{:<%d}" if i < left else "{:>%d}") % w for i, w in enumerate(widths))
    return [line.format(*head), line.format(*("-" * w for w in widths)), *(line.format(*row) for row in rows)]


def print_table(results: list[dict], bars: list[dict], repeat: int) -> None:
    standin = results[0]["standin"]
    head = ("models", "(1a) created", "(1) cold start", "cycles", "Ready at", "cold writes", "product CPU", "server CPU",
            "(2) no-op", "no-op req", "(3) change", "change writes", "(4) bare creates", "(1a)/(4)", "(1)/(4)",
            "(5) bare create+status", "(1)/(5)", "(4') bare apply+status", "peak RSS")
    rows = []
    for r in results:
        noop_requests = sorted({sum(x["noop_requests"].values()) for x in r["rounds"]})
        change_writes = sorted({_writes(x["change_requests"]) for x in r["rounds"]})
        server_cpu = r["cold_cpu_server_s"]
        rows.append((
            f"{r['size']:,}", f"{r['cold_created_s']:,.2f} s", f"{r['cold_s']:,.2f} s", str(len(r["cold_cycles"])),
            f"{r['cold_ready_s']:,.2f} s", f"{_writes(r['cold_requests']):,}", f"{r['cold_cpu_self_s']:,.2f} s",
            "-" if server_cpu is None else f"{server_cpu:,.2f} s",
            f"{_ms(r['noop_median_s'])} ms", "/".join(map(str, noop_requests)),
            f"{_ms(r['change_median_s'])} ms", "/".join(map(str, change_writes)),
            f"{r['bare_creates']['s']:,.2f} s", f"{r['created_ratio']:.2f}x", f"{r['cold_ratio']:.2f}x",
            f"{r['bare_create_status']['s']:,.2f} s", f"{r['ready_ratio']:.2f}x",
            f"{r['bare_apply_status']['s']:,.2f} s", f"{r['peak_rss_mib']:,.1f} MiB",
        ))
    bare_runs = len(results[0]["bare_creates_samples_s"])
    print(f"\nKubernetes mode against the stand-in API server ({standin}); (2), (3): median of {repeat} rounds; "
          f"(1): median of {len(results[0]['cold_samples_s'])} runs; (4), (5): median of {bare_runs} runs")
    for line in _table(head, rows):
        print(line)

    head2 = ("models", "phase", "requests by kind")
    rows2 = []
    for r in results:
        rows2.append((f"{r['size']:,}", "(1) cold start", _kinds_text(r["cold_requests"])
                      + f"; wakeups (changes the cache reported after its first list): {r['cold_wakeups']:,}"))
        for i, c in enumerate(r["cold_cycles"], 1):
            rows2.append(("", f"    cycle {i} ({c['cycle_s']:,.2f} s)", _kinds_text(c["requests"])))
        kinds = collections.Counter()
        for x in r["rounds"]:
            kinds.update(x["noop_requests"])
        rows2.append(("", f"(2) no-op, {len(r['rounds'])} rounds", _kinds_text(dict(kinds))))
        kinds = collections.Counter()
        for x in r["rounds"]:
            kinds.update(x["change_requests"])
        rows2.append(("", f"(3) change, {len(r['rounds'])} rounds", _kinds_text(dict(kinds))))
        follow = [len(x["followups"]) for x in r["rounds"]]
        kinds = collections.Counter()
        for x in r["rounds"]:
            for f in x["followups"]:
                kinds.update(f["requests"])
        rows2.append(("", f"    then {'/'.join(map(str, sorted(set(follow))))} cycle(s) before a no-op",
                      _kinds_text(dict(kinds))))
        rows2.append(("", "(4) bare creates", _kinds_text(r["bare_creates"]["requests"])))
        rows2.append(("", "(5) bare create+status", _kinds_text(r["bare_create_status"]["requests"])))
        rows2.append(("", "(4') bare apply+status", _kinds_text(r["bare_apply_status"]["requests"])))
    print("\nRequests the stand-in received, by kind (rounds summed)")
    for line in _table(head2, rows2, left=3):
        print(line)

    print("\n  (1a) created: from the start of (1) until the first cycle's applies were all answered (every resource")
    print("      created, the issue's 'cold start (everything created)'); the status writes follow it")
    print("  (1) cold start: wiring (cache list+watch, store, sync, reconciler) + cycles until one writes nothing and")
    print("      every resource is Ready as the watch shows it; 'Ready at': when the cache first saw all Ready;")
    print("      product CPU: this process during (1); server CPU: the stand-in's process during (1)")
    print("  (2) no-op: run_cycle() with nothing new; 'no-op req': requests it made (open watches not counted)")
    print("  (3) change: run_cycle() of a commit changing one file's labels + its status writes; writes counted")
    print("  (4) bare creates: the same objects, create_namespaced_custom_object one by one, fresh stand-in each run")
    print("  (5) bare create+status: per object the create of (4), then its status (as the product wrote it) by the")
    print("      client's patch_namespaced_custom_object_status (server-side apply), one by one; the bar's baseline")
    print("  (4') for information: the product's cold requests (apply, then status apply) sent one by one")
    for r in results:
        b, c = r["bare_creates"], r["bare_create_status"]
        if b["cpu_server_s"] is not None:
            a = r["bare_apply_status"]
            print(f"  at {r['size']:,}: (1) runs {', '.join(f'{x:,.2f}' for x in r['cold_samples_s'])} s, "
                  f"(4) runs {', '.join(f'{x:,.2f}' for x in r['bare_creates_samples_s'])} s, "
                  f"(5) runs {', '.join(f'{x:,.2f}' for x in r['bare_create_status_samples_s'])} s; CPU of the median "
                  f"runs (this process / server): (4) {b['cpu_self_s']:,.2f} / {b['cpu_server_s']:,.2f} s, "
                  f"(5) {c['cpu_self_s']:,.2f} / {c['cpu_server_s']:,.2f} s, "
                  f"(4') {a['cpu_self_s']:,.2f} / {a['cpu_server_s']:,.2f} s")
    if len({r["size"] for r in results}) >= 2:
        fits = {label: exponent([(r["size"], r[key]["s"] if isinstance(r[key], dict) else r[key]) for r in results])
                for label, key in (("(1) cold start", "cold_s"), ("(4) bare creates", "bare_creates"),
                                   ("(5) bare create+status", "bare_create_status"))}
        print("  growth exponents (time ~ models^k, least squares over the sizes): "
              + ", ".join(f"{label} {k:.2f}" for label, k in fits.items() if k is not None))
    for r in results:
        if r["other_cpu_s"] is None:
            continue
        share = r["other_cpu_s"] / r["wall_s"] if r["wall_s"] else 0.0
        print(f"  at {r['size']:,}: other processes used {r['other_cpu_s']:,.1f} s of CPU during its "
              f"{r['wall_s']:,.1f} s ({share:.1f} of {os.cpu_count()} CPUs)"
              + ("  BUSY MACHINE: timings inflated, run again when it is quiet" if share > 0.25 else ""))
    print("\nBars:")
    for bar in bars:
        print(f"  {verdict(bar['ok'])}  {bar['bar']}: {bar['shown']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated model counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds of (3) and (2) per size (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, one repeat")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    parser.add_argument("--bare-repeat", type=int, default=3,
                        help="runs of (4) per size, each on a fresh stand-in (the median counts)")
    parser.add_argument("--cold-repeat", type=int, default=3,
                        help="runs of (1) per size, each on a fresh stand-in and state (the median counts)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the stand-in API server in the benchmark process (as the tests do)")
    parser.add_argument("--profile", choices=("cold", "change", "noop"),
                        help="cProfile that phase (last round), product threads and stand-in, to stderr")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.bare_repeat < 1 or args.cold_repeat < 1:
        parser.error("--repeat, --bare-repeat and --cold-repeat must be at least 1")
    try:
        sizes = SMOKE_SIZES if args.smoke else tuple(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        parser.error(f"--sizes must be comma-separated whole numbers, not {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs at least one size, each at least 1")

    if args.child is not None:
        result = bench_size(args.child, args.repeat, args.profile, args.in_process, args.bare_repeat,
                            args.cold_repeat)
        args.child_out.write_text(json.dumps(result))
        return 0

    repeat = 1 if args.smoke else args.repeat
    bare_repeat = 1 if args.smoke else args.bare_repeat
    results = []
    for size in sizes:
        print(f"size {size:,}: generating, cold start, 1 warm-up + {repeat} rounds, bare creates...",
              file=sys.stderr, flush=True)
        results.append(run_child(size, repeat, args.profile, args.in_process, bare_repeat,
                                 1 if args.smoke else args.cold_repeat))
    bars = evaluate(results)
    print_table(results, bars, repeat)
    if args.json:
        git_version = git("--version").decode().strip()
        args.json.write_text(json.dumps({
            "benchmark": "bench_kubernetes", "repeat": repeat, "sizes": list(sizes),
            "python": sys.version.split()[0], "platform": platform.platform(), "git": git_version,
            "cpus": os.cpu_count(), "standin": "in-process" if args.in_process else "own process",
            "results": results, "bars": bars, "all_pass": all(b["ok"] for b in bars),
        }, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not all(b["ok"] for b in bars) else 0


if __name__ == "__main__":
    sys.exit(main())
