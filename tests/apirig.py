"""`serve` (the reconciler and the API in one process) started in-process on a free loopback port:
real waitress, real HTTP, a real bare remote and the stand-in Ollama."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx

from ollama_gitops.api import runtime
from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.settings import Settings, add_reconciler_options
from standins.ollama_server import OllamaStandin

API_KEY = "test-key-0123456789"


def settings_for(state_dir: Path, repo: str, ollama_url: str, *extra: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_reconciler_options(parser)
    args = parser.parse_args(["--repo", repo, "--state-dir", str(state_dir), "--ollama-url", ollama_url,
                              "--kubernetes", "off", "--interval", "3600", *extra])
    return Settings.from_args(args)


class ApiRig:
    def __init__(self, tmp_path: Path, ollama: OllamaStandin, *, api_key: str | None = API_KEY,
                 with_reconciler: bool = True, state_dir: Path | None = None, remote: Path | None = None,
                 webhook_secret: str | None = None, schedules: bool = False,
                 allowed_hosts: tuple[str, ...] = (), reconciler_options: tuple[str, ...] = ()) -> None:
        self.tmp_path = tmp_path
        self.ollama = ollama
        self.remote = remote or init_bare(tmp_path / "remote.git")
        self.work = WorkRepo(tmp_path / "work", remote=self.remote)
        self.api_key = api_key
        self.state_dir = state_dir or tmp_path / "state"
        self.with_reconciler = with_reconciler
        self.webhook_secret = webhook_secret
        self.schedules = schedules
        self.allowed_hosts = allowed_hosts
        self.reconciler_options = reconciler_options  # more command-line options, e.g. a servers file
        self.request_timeout = runtime.REQUEST_TIMEOUT
        self.event_heartbeat = runtime.dashboard.HEARTBEAT
        self.event_streams = runtime.dashboard.STREAMS
        self.running: runtime.RunningApi | None = None
        self.client: httpx.Client | None = None

    def seed(self, *models: tuple[str, str]) -> str:
        for name, tag in models:
            self.work.model("default", name, tag)
        commit = self.work.commit("seed")
        self.work.push()
        return commit

    def start(self) -> ApiRig:
        settings = settings_for(self.state_dir, str(self.remote), self.ollama.url, *self.reconciler_options)
        options = runtime.ApiOptions("127.0.0.1:0", self.api_key, "default", "API Test <api@example.com>", False,
                                     webhook_secret=self.webhook_secret, allowed_hosts=self.allowed_hosts,
                                     request_timeout=self.request_timeout, event_heartbeat=self.event_heartbeat,
                                     event_streams=self.event_streams)
        # By default no schedules: the test runs each fetch and cycle itself, so what it observes is
        # certain. With them, cycles run on their own (the first at once, then on request).
        self.running = runtime.start(settings, options, with_reconciler=self.with_reconciler, schedules=self.schedules)
        if not self.schedules:  # with them, the refresher's first fetch runs at once on its own
            self.running.repository.refresh()
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        self.client = httpx.Client(base_url=self.running.server.url, headers=headers, timeout=30)
        return self

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.server.url

    def settle(self) -> None:
        """Run a reconcile cycle now and wait for its pulls (what the schedule does, synchronously)."""
        assert self.running is not None and self.running.service is not None
        service = self.running.service
        service.run_cycle()
        assert service.reconciler.pulls.wait(timeout=30)
        service.run_cycle()

    def publish(self, message: str = "change") -> None:
        """Commit what the work tree holds, push it, and let the API and a reconcile cycle take it in."""
        self.work.commit(message)
        self.work.push()
        assert self.running is not None
        self.running.repository.refresh()
        self.settle()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.running is not None:
            self.running.stop()
            self.running.repository.repo.repo.close()
            if self.running.service is not None:
                self.running.service.reconciler.repo.repo.close()
            self.running = None
        self.work.close()
