"""A reconciler wired to real parts: a bare Git remote, a working clone that pushes to it, and the
stand-in Ollama server, with a clock the test controls."""

from __future__ import annotations

from pathlib import Path

from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.git.repo import GitRepo
from ollama_gitops.reconciler.ollama.server import OllamaServer
from ollama_gitops.reconciler.reconcile import CycleReport, Reconciler
from ollama_gitops.reconciler.state import ModelRecord, StateStore
from ollama_gitops.reconciler.models.desired import ModelKey
from standins.ollama_server import OllamaStandin

CATALOGUE = {
    "llama3.2:1b": 1815319791,
    "gemma3:1b": 815319791,
    "phi3:mini": 2176178913,
    "qwen2.5:0.5b": 397821319,
    "mistral:7b": 4113301824,
}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    def __init__(self, tmp_path: Path, ollama: OllamaStandin) -> None:
        self.tmp_path = tmp_path
        self.remote = init_bare(tmp_path / "remote.git")
        self.work = WorkRepo(tmp_path / "work", remote=self.remote)
        self.ollama = ollama
        self.state_dir = tmp_path / "state"
        self.clock = Clock()
        self.reconciler: Reconciler | None = None

    def push(self, message: str = "change") -> str:
        commit = self.work.commit(message)
        self.work.push()
        return commit

    def start(self, *, lazy: bool = False, **options: object) -> Reconciler:
        """A fresh reconciler process (the state directory survives between calls, as on disk);
        `lazy`: its records read when first used, as `serve` reads them."""
        if self.reconciler is not None:
            self.stop()
        store = StateStore(self.state_dir, lazy=lazy)
        store.acquire_process_lock()
        repo = GitRepo(str(self.remote), "main", self.state_dir / "clone.git")
        options.setdefault("resync_interval", 300.0)
        options.setdefault("clock", self.clock)  # a test that runs a real schedule passes time.time
        self.reconciler = Reconciler(repo, self.servers(), store, **options)  # type: ignore[arg-type]
        return self.reconciler

    def servers(self) -> object:
        """What the reconciler keeps in line: here the one stand-in, given the old way."""
        return OllamaServer(self.ollama.url, timeout=5)

    def stop(self) -> None:
        if self.reconciler is not None:
            self.reconciler.pulls.wait(timeout=10)
            self.reconciler.close()
            self.reconciler.store.release_process_lock()
            self.reconciler.repo.repo.close()
            self.reconciler = None

    def cycle(self, *, wait: bool = True, dry_run: bool = False) -> CycleReport:
        """One cycle; by default also waits for the pulls it started."""
        assert self.reconciler is not None
        report = self.reconciler.run_cycle(dry_run=dry_run)
        if wait:
            assert self.reconciler.pulls.wait(timeout=10)
        return report

    def record(self, namespace: str, name: str) -> ModelRecord | None:
        assert self.reconciler is not None
        return self.reconciler.store.record(ModelKey(namespace, name))

    def state(self, namespace: str, name: str) -> str | None:
        record = self.record(namespace, name)
        return record.servers["default"].state if record else None
