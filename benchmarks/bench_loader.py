"""Benchmark: loading desired state from a Git models repository (`ollama_gitops.reconciler.models.desired.GitLoader`).

For each size (number of model files) it generates a models repository in a temporary directory
with `git fast-import` (two commits: the second changes exactly one file), then measures, as the
median of --repeat runs with a warm OS page cache:

  (a) full load:   a fresh `git.Repo` + `GitLoader` loading the first commit (includes starting
                   GitPython's `git cat-file` processes, as (c) includes starting its own);
  (a') for information: a fresh `GitLoader` on a `git.Repo` already in use (no process start);
  (b) next commit: a loader that already loaded the first commit loading the second one;
  (c) baseline:    one `git cat-file --batch` subprocess fed every blob SHA of the first commit,
                   all output read, each blob decoded and parsed with
                   `yaml.load(text, Loader=yaml.CSafeLoader)`. The blob list comes from
                   `git ls-tree -r`, timed separately and not part of (c).

(c) reads each distinct blob once, as the loader does. (a), (a'), (b) and (c) are interleaved in each repeat so that machine noise hits them alike.

Bars: (a)/(c) <= 2.0 at every size; (b)/(a) < 5% at 10,000 files and above.

Run from the repository root:

    python benchmarks/bench_loader.py                       # 10, 1000, 10000
    python benchmarks/bench_loader.py --sizes 1000 --repeat 9
    python benchmarks/bench_loader.py --smoke               # 10 and 100, 1 repeat
    python benchmarks/bench_loader.py --json results.json --check
    python benchmarks/bench_loader.py --sizes 10000 --repeat 1 --profile a
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

import git  # noqa: E402
import yaml  # noqa: E402

from ollama_gitops.reconciler.models import naming
from ollama_gitops.reconciler.models.desired import GitLoader
from ollama_gitops.reconciler.models.modelfile import MODELINE

DEFAULT_SIZES = (10, 1_000, 10_000)
SMOKE_SIZES = (10, 100)
RATIO_AC_BAR = 2.0
RATIO_BA_BAR = 0.05
RATIO_BA_MIN_SIZE = 10_000

# Git must not read the user's or the system's configuration (hooks, gpg signing, fsmonitor...).
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}

# ---------------------------------------------------------------------------------------------
# Repository generation
# ---------------------------------------------------------------------------------------------

NAMESPACES = (
    "default", "search", "assistants", "ml-platform", "support-bots",
    "research", "code-review", "embeddings", "batch-eval", "sandbox",
)
# Rough Zipf weights: a few busy namespaces and a long tail, as in a real fleet.
NAMESPACE_WEIGHTS = tuple(1.0 / (i + 1) for i in range(len(NAMESPACES)))

FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llama3.2", ("1b", "3b", "1b-instruct-q4_K_M", "3b-instruct-q8_0", "latest")),
    ("llama3.1", ("8b", "70b", "8b-instruct-q4_K_M", "8b-instruct-fp16")),
    ("gemma3", ("1b", "4b", "12b", "27b", "4b-it-qat")),
    ("qwen2.5", ("0.5b", "1.5b", "7b", "14b", "32b", "7b-instruct")),
    ("qwen2.5-coder", ("1.5b", "7b", "14b", "32b-instruct-q4_K_M")),
    ("mistral", ("7b", "latest", "7b-instruct-v0.3-q4_0")),
    ("mistral-nemo", ("12b", "latest")),
    ("phi3", ("mini", "medium", "3.8b")),
    ("phi4", ("14b", "latest")),
    ("deepseek-r1", ("1.5b", "7b", "8b", "14b", "32b")),
    ("nomic-embed-text", ("latest", "v1.5")),
    ("mxbai-embed-large", ("latest", "335m")),
    ("codellama", ("7b", "13b", "7b-instruct")),
    ("tinyllama", ("1.1b", "latest")),
    ("smollm2", ("135m", "360m", "1.7b")),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", ("Q4_K_M", "Q8_0", "IQ3_M")),
    ("hf.co/unsloth/gemma-3-4b-it-GGUF", ("Q4_K_M", "Q6_K")),
    ("library/llama3.2", ("1b", "3b")),
)
FINE_TUNE_ORGS = ("acme", "search-team", "ml-platform", "contoso", "labs")
FINE_TUNE_PURPOSES = ("support", "summarize", "classify", "rag", "sql", "triage", "translate", "chat")
TEAMS = ("search", "support", "platform", "research", "growth", "data")
TIERS = ("production", "staging", "experimental")


@dataclasses.dataclass(frozen=True)
class GeneratedRepo:
    path: Path
    files: int
    namespaces: int
    first: str  # commit SHA with every file
    second: str  # commit SHA with exactly one file changed
    changed_path: str
    seconds: float  # time to generate (fast-import + rev-parse)


def _namespace_count(files: int) -> int:
    """1 namespace for tiny repositories, up to 10 for large ones (about 100+ files each)."""
    return max(1, min(len(NAMESPACES), files // 100))


def _spread(files: int, namespaces: int) -> list[int]:
    """How many files each namespace gets: proportional to NAMESPACE_WEIGHTS, every one >= 1."""
    weights = NAMESPACE_WEIGHTS[:namespaces]
    total = sum(weights)
    counts = [max(1, int(files * w / total)) for w in weights]
    counts[0] += files - sum(counts)  # rounding remainder goes to the busiest namespace
    return counts


def _models(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` (name, tag) pairs whose resource names are unique: stock models, then fine-tunes."""
    stock = [(name, tag) for name, tags in FAMILIES for tag in tags]
    rng.shuffle(stock)
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, tag in stock[: min(count, rng.randint(len(stock) // 2, len(stock)))]:
        seen.add(naming.resource_name(name, tag))
        chosen.append((name, tag))
    version = 0
    while len(chosen) < count:
        version += 1
        family, tags = rng.choice(FAMILIES[:15])  # fine-tunes of library models
        name = f"{rng.choice(FINE_TUNE_ORGS)}/{family}-{rng.choice(FINE_TUNE_PURPOSES)}-v{version}"
        tag = rng.choice(tags)
        resource = naming.resource_name(name, tag)
        if resource not in seen:
            seen.add(resource)
            chosen.append((name, tag))
    rng.shuffle(chosen)
    return chosen


def _content(rng: random.Random, name: str, tag: str) -> str:
    """A valid model file, sometimes with the modeline, labels, annotations or flags."""
    lines = []
    if rng.random() < 0.5:
        lines.append(MODELINE)
    lines += [f"name: {name}", f'tag: "{tag}"']
    if rng.random() < 0.3:
        lines += ["labels:", f"  team: {rng.choice(TEAMS)}", f"  tier: {rng.choice(TIERS)}"]
        if rng.random() < 0.3:
            lines.append(f"  app.kubernetes.io/part-of: {rng.choice(FINE_TUNE_PURPOSES)}")
    if rng.random() < 0.1:
        lines += ["annotations:", f'  owner: "{rng.choice(TEAMS)}@example.com"']
    if rng.random() < 0.05:
        lines.append("prune: false")
    if rng.random() < 0.02:
        lines.append("suspend: true")
    if rng.random() < 0.05:
        lines.append(f"refreshRequestedAt: \"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T14:00:00Z\"")
    return "\n".join(lines) + "\n"


def _git(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, input=input, env=GIT_ENV, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"git {args[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def generate_repo(parent: Path, files: int, seed: int = 1) -> GeneratedRepo:
    """A bare models repository with `files` model files in one commit, and a next commit changing one."""
    started = time.perf_counter()
    rng = random.Random(seed * 1_000_003 + files)
    path = parent / f"models-{files}.git"
    _git("init", "-q", "--bare", "-b", "main", str(path), cwd=parent)
    namespaces = _namespace_count(files)
    tree: dict[str, str] = {}
    for namespace, count in zip(NAMESPACES, _spread(files, namespaces)):
        for name, tag in _models(rng, count):
            tree[f"models/{namespace}/{naming.resource_name(name, tag)}.yaml"] = _content(rng, name, tag)
    assert len(tree) == files, (len(tree), files)

    # The one change: a refresh request on a file of a mid-sized namespace, as the API's refresh does.
    changed_path = sorted(p for p in tree if p.startswith(f"models/{NAMESPACES[namespaces // 2]}/"))[0]
    changed = tree[changed_path].replace("refreshRequestedAt:", "# was refreshRequestedAt:")
    changed += 'refreshRequestedAt: "2026-11-25T14:00:00Z"\n'

    stream: list[bytes] = []

    def blob(mark: int, text: str) -> None:
        data = text.encode("utf-8")
        stream.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))

    def commit(message: str, when: int, entries: list[tuple[int, str]]) -> None:
        # A second commit to the same branch in one stream has the first one as its parent.
        msg = message.encode()
        stream.append(b"commit refs/heads/main\n")
        stream.append(b"committer Bench <bench@example.com> %d +0000\n" % when)
        stream.append(b"data %d\n%s\n" % (len(msg), msg))
        for mark, file_path in entries:
            stream.append(b"M 100644 :%d %s\n" % (mark, file_path.encode("utf-8")))
        stream.append(b"\n")

    paths = sorted(tree)
    for mark, file_path in enumerate(paths, start=1):
        blob(mark, tree[file_path])
    commit(f"{files} models", 1_764_079_200, list(enumerate(paths, start=1)))
    changed_mark = len(paths) + 1
    blob(changed_mark, changed)
    commit(f"refresh {changed_path}", 1_764_082_800, [(changed_mark, changed_path)])
    _git("fast-import", "--quiet", "--done", cwd=path, input=b"".join(stream) + b"done\n")
    first, second = _git("rev-parse", "main~1", "main", cwd=path).decode().split()
    diff = _git("diff-tree", "-r", "--name-only", first, second, cwd=path).decode().split()
    assert diff == [changed_path], diff
    return GeneratedRepo(path, files, namespaces, first, second, changed_path, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def list_blobs(repo: GeneratedRepo) -> list[str]:
    """The distinct blob SHAs of the model files of the first commit (`git ls-tree -r`).

    Files with identical content (the same model in two namespaces) share a blob, which the loader
    reads and parses once; the baseline does the same, so both handle the same set of blobs.
    """
    out = _git("ls-tree", "-r", "-z", repo.first, "models/", cwd=repo.path)
    shas = []
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, _, file_path = entry.partition(b"\t")
        _mode, kind, sha = meta.split()
        if kind == b"blob" and file_path.endswith((b".yaml", b".yml")):
            shas.append(sha.decode())
    return list(dict.fromkeys(shas))


def baseline(repo: GeneratedRepo, shas: list[str]) -> tuple[float, int]:
    """(c): one `git cat-file --batch` for every SHA, then `yaml.load(..., CSafeLoader)` of each."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=repo.path, env=GIT_ENV,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(("\n".join(shas) + "\n").encode())  # writes and reads concurrently
    if proc.returncode:
        raise RuntimeError(f"git cat-file --batch exited {proc.returncode}")
    parsed = 0
    pos = 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        _sha, kind, size = out[pos:header_end].split()
        start = header_end + 1
        end = start + int(size)
        document = yaml.load(out[start:end].decode("utf-8"), Loader=yaml.CSafeLoader)
        if kind != b"blob" or not isinstance(document, dict):
            raise RuntimeError("unexpected cat-file output")
        parsed += 1
        pos = end + 1  # the newline after each object's content
    elapsed = time.perf_counter() - started
    if parsed != len(shas):
        raise RuntimeError(f"parsed {parsed} blobs of {len(shas)}")
    return elapsed, parsed


def _counters(loader: GitLoader) -> dict[str, int]:
    """A snapshot of `loader.stats` (parsed, namespaces_listed, loads, and any counter added later)."""
    return {k: v for k, v in vars(loader.stats).items() if isinstance(v, int)}


def full_load(repo: GeneratedRepo) -> tuple[float, dict[str, int], object]:
    """(a): fresh `git.Repo` and `GitLoader`, load the first commit."""
    started = time.perf_counter()
    git_repo = git.Repo(repo.path)
    loader = GitLoader(git_repo)
    state = loader.load(repo.first)
    elapsed = time.perf_counter() - started
    git_repo.close()
    return elapsed, _counters(loader), state


def warm_repo_load(repo: GeneratedRepo, git_repo: git.Repo) -> float:
    """(a'): a fresh `GitLoader` on a `git.Repo` whose `git cat-file` processes already run."""
    started = time.perf_counter()
    GitLoader(git_repo).load(repo.first)
    return time.perf_counter() - started


def next_load(repo: GeneratedRepo) -> tuple[float, dict[str, int], object]:
    """(b): a loader that already loaded the first commit loads the second; stats are the difference."""
    git_repo = git.Repo(repo.path)
    loader = GitLoader(git_repo)
    loader.load(repo.first)
    before = _counters(loader)
    gc.collect()
    started = time.perf_counter()
    state = loader.load(repo.second)
    elapsed = time.perf_counter() - started
    git_repo.close()
    after = _counters(loader)
    return elapsed, {k: v - before.get(k, 0) for k, v in after.items()}, state


def check_states(repo: GeneratedRepo, first_state, second_state) -> None:
    """The loads must be right, or their timings mean nothing."""
    for state in (first_state, second_state):
        if state.problems or state.unreadable or len(state.models) != repo.files:
            raise RuntimeError(f"bad load: {len(state.models)} models, problems {state.problems[:3]}")
    differing = [k for k, m in second_state.models.items() if first_state.models[k].blob != m.blob]
    if [second_state.models[k].path for k in differing] != [repo.changed_path]:
        raise RuntimeError(f"the second commit should differ in {repo.changed_path} only, not {differing}")
    if second_state.models[differing[0]].fields.refresh_requested_at != "2026-11-25T14:00:00Z":
        raise RuntimeError("the changed file was not re-read")


def bench_size(parent: Path, files: int, repeat: int, profile: str | None = None) -> dict:
    repo = generate_repo(parent, files)
    started = time.perf_counter()
    shas = list_blobs(repo)
    ls_tree_seconds = time.perf_counter() - started

    # Warm-up, untimed: the OS page cache, Python's imports and the schema validator's compilation.
    baseline(repo, shas)
    _, _, first_state = full_load(repo)
    _, _, second_state = next_load(repo)
    check_states(repo, first_state, second_state)
    del first_state, second_state

    warm_repo = git.Repo(repo.path)
    warm_repo_load(repo, warm_repo)  # starts its cat-file processes
    times_a: list[float] = []
    times_a_warm: list[float] = []
    times_b: list[float] = []
    times_c: list[float] = []
    stats_a = stats_b = None
    for _ in range(repeat):
        gc.collect()
        times_c.append(baseline(repo, shas)[0])
        gc.collect()
        elapsed, stats_a, _state = full_load(repo)
        times_a.append(elapsed)
        del _state
        gc.collect()
        times_a_warm.append(warm_repo_load(repo, warm_repo))
        gc.collect()
        elapsed, stats_b, _state = next_load(repo)
        times_b.append(elapsed)
        del _state

    warm_repo.close()
    if stats_a["parsed"] != len(shas) or stats_b["parsed"] != 1:
        raise RuntimeError(f"parsed {stats_a['parsed']} of {len(shas)} blobs in (a), {stats_b['parsed']} in (b)")
    if profile:
        profile_loads(repo, profile)
    a, b, c = (statistics.median(t) for t in (times_a, times_b, times_c))
    return {
        "files": files,
        "namespaces": repo.namespaces,
        "distinct_blobs": len(shas),
        "repeat": repeat,
        "generate_seconds": repo.seconds,
        "ls_tree_seconds": ls_tree_seconds,
        "a_full_load_seconds": a,
        "a_warm_repo_seconds": statistics.median(times_a_warm),
        "b_next_commit_seconds": b,
        "c_baseline_seconds": c,
        "ratio_a_c": a / c,
        "ratio_b_a": b / a,
        "bar_a_c_ok": a / c <= RATIO_AC_BAR,
        "bar_b_a_ok": (b / a < RATIO_BA_BAR) if files >= RATIO_BA_MIN_SIZE else None,
        "a_stats": stats_a,
        "b_stats": stats_b,
        "runs": {"a": times_a, "a_warm_repo": times_a_warm, "b": times_b, "c": times_c},
    }


def profile_loads(repo: GeneratedRepo, which: str) -> None:
    """Run (a) or (b) once more under cProfile and print where the time goes (to stderr)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    if which == "a":
        profiler.runcall(full_load, repo)
    else:  # only the load of the second commit, by a loader that loaded the first
        git_repo = git.Repo(repo.path)
        loader = GitLoader(git_repo)
        loader.load(repo.first)
        profiler.runcall(loader.load, repo.second)
        git_repo.close()
    print(f"\n=== cProfile of ({which}) at {repo.files} files ===", file=sys.stderr)
    stats = pstats.Stats(profiler, stream=sys.stderr).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(35)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _bar(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISS")


WARM_MS, WARM_RATIO = "(a') ms", "(a')/(c)"


def print_table(results: list[dict]) -> None:
    header = (
        f"{'files':>6} {'blobs':>6} {'ns':>3} {'(a) full ms':>12} {'(b) next ms':>12} {'(c) base ms':>12} "
        f"{'(a)/(c)':>8} {'bar':>4} {'(b)/(a)':>8} {'bar':>4} {WARM_MS:>9} {WARM_RATIO:>8}  "
        f"{'(a) parsed/ns/loads':>20}  {'(b) parsed/ns/loads':>20}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        sa, sb = r["a_stats"], r["b_stats"]
        print(
            f"{r['files']:>6} {r['distinct_blobs']:>6} {r['namespaces']:>3} {_ms(r['a_full_load_seconds']):>12} "
            f"{_ms(r['b_next_commit_seconds']):>12} {_ms(r['c_baseline_seconds']):>12} "
            f"{r['ratio_a_c']:>8.2f} {_bar(r['bar_a_c_ok']):>4} {r['ratio_b_a']:>7.2%} {_bar(r['bar_b_a_ok']):>4} "
            f"{_ms(r['a_warm_repo_seconds']):>9} {r['a_warm_repo_seconds'] / r['c_baseline_seconds']:>8.2f}  "
            f"{'%d/%d/%d' % (sa['parsed'], sa['namespaces_listed'], sa['loads']):>20}  "
            f"{'%d/%d/%d' % (sb['parsed'], sb['namespaces_listed'], sb['loads']):>20}"
        )
    print()
    print("(a) fresh git.Repo + GitLoader (starts GitPython's cat-file processes); (a') fresh GitLoader on a "
          "git.Repo already in use (no process start), for information")
    print("stats: GitLoader.stats of the run: parsed/namespaces_listed/loads; for (b) the increase over loading the first commit")
    print("blobs: distinct blob SHAs (files with identical content share one; (a) and (c) read each once)")
    print(f"bars: (a)/(c) <= {RATIO_AC_BAR}; (b)/(a) < {RATIO_BA_BAR:.0%} at >= {RATIO_BA_MIN_SIZE} files")
    print("not timed: " + "; ".join(
        f"{r['files']} files: generate {_ms(r['generate_seconds'])} ms, ls-tree {_ms(r['ls_tree_seconds'])} ms"
        for r in results
    ))


LOADER_SOURCES = ("reconciler/desired.py", "reconciler/modelfile.py", "reconciler/schema.py", "reconciler/naming.py",
                  "schemas/model.schema.json")


def sources_digest() -> str:
    """A short hash of the loader's sources, to tell which version of the code was measured."""
    digest = hashlib.sha256()
    for name in LOADER_SOURCES:
        file = ROOT / name
        digest.update(name.encode() + b"\0" + (file.read_bytes() if file.exists() else b"-"))
    return digest.hexdigest()[:12]


def peak_rss() -> dict:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    # Only this process: GitPython's `git cat-file` children are not all waited for, and Linux
    # reports a child's peak as at least this process's size at fork, so theirs would mislead.
    return {"self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated file counts (default 10,1000,10000)")
    parser.add_argument("--repeat", type=int, help="timed runs per measurement; the median is reported (default 5)")
    parser.add_argument("--smoke", action="store_true", help="quick run: sizes 10,100 and one repeat")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a bar is missed")
    parser.add_argument("--profile", choices=("a", "b"), help="also cProfile one run of (a) or (b) per size (stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the generated repositories and print where")
    args = parser.parse_args(argv)

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")] if args.sizes else list(
        SMOKE_SIZES if args.smoke else DEFAULT_SIZES
    )
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 5)
    if repeat < 1 or any(s < 1 for s in sizes):
        parser.error("sizes and --repeat must be positive")

    digest = sources_digest()
    tmp = tempfile.mkdtemp(prefix="bench-loader-")
    try:
        results = []
        for files in sizes:
            results.append(bench_size(Path(tmp), files, repeat, args.profile))
            print(f"  done {files} files", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"repositories kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"bench_loader: repeat={repeat} (median), Python {platform.python_version()}, "
          f"PyYAML {yaml.__version__} (libyaml {yaml.__with_libyaml__}), GitPython {git.__version__}, "
          f"{_git('--version', cwd=ROOT).decode().strip()}, loader sources sha256 {digest}")
    if sources_digest() != digest:
        print("WARNING: the loader's sources changed during the run; the numbers may mix two versions")
    print_table(results)
    rss = peak_rss()
    print(f"peak RSS: {rss['self_mib']:.1f} MiB (this Python process, resource.getrusage)")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "benchmark": "bench_loader",
            "python": platform.python_version(),
            "pyyaml": yaml.__version__,
            "libyaml": yaml.__with_libyaml__,
            "gitpython": git.__version__,
            "loader_sources": list(LOADER_SOURCES),
            "loader_sources_sha256": digest,
            "peak_rss": rss,
            "results": results,
        }, indent=2) + "\n")

    missed = [r for r in results if r["bar_a_c_ok"] is False or r["bar_b_a_ok"] is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
