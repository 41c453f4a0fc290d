"""Benchmark: time from a push to the model's OllamaModel being applied, with a webhook and with
polling, as ollama-gitops runs in a cluster.

Set-up (not timed): a models repository of --size model files (default 1,000; `models/default/
model<i>-1b.yaml`) in a bare remote; the stand-in Kubernetes API server (CRD schema) and the stand-in
Ollama, with every model installed, in this process; then, each in its own process as the manifests
run them, `ollama-gitops reconcile --kubernetes on` (default `--interval`, 60 s, unless told) and
`ollama-gitops api --kubernetes on` with the webhook secret. The cold start is waited for: every
resource Ready.

Each round, a working clone changes one model file's labels (`rev: "<n>"`), commits and pushes with
`git push`; the clock starts when the push has returned (the moment the Git host has the commit and
would send its webhook), and stops when the stand-in API server holds that model's resource with the
new label (polled every millisecond from its store):

  - webhook: right after the push, a GitHub push event signed with `X-Hub-Signature-256` is posted
    to the API's `/api/v1/webhook`; the API annotates the ConfigMap `ollama-gitops-sync`, the leading
    reconciler (watching it) runs a cycle, which fetches and applies;
  - polling: no webhook; the next scheduled cycle finds the commit. Each round's push comes right after
    the previous round's cycle, so these rounds show the worst case, the whole interval (a push at a
    random moment waits half of it on average).

Bar: with a webhook, under 1 second at 1,000 models (the median of the rounds, and every round).

Run from the repository root:

    python benchmarks/bench_webhook.py                         # 1,000 models; 10 webhook rounds, 3 polling rounds
    python benchmarks/bench_webhook.py --smoke                 # 50 models; 2 webhook rounds, 1 polling round, 2 s interval
    python benchmarks/bench_webhook.py --json out.json --check
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the stand-ins live in tests/
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchrepos import GIT_ENV, generate, git, model_text, verdict, wait_for  # noqa: E402

BAR_SECONDS = 1.0
NAMESPACE = "ollama-gitops"  # where the Lease and the ConfigMap live, as in the manifests
SECRET = "bench-webhook-secret"
CRD = ROOT / "manifests" / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"
COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
READY_TIMEOUT = 600.0
APPLY_TIMEOUT = 300.0


def model_path(i: int) -> str:
    return f"models/default/model{i}-1b.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def github_push(remote: Path, commit: str) -> tuple[bytes, dict[str, str]]:
    """A GitHub push event for `commit` on main of the local repository `remote`, signed."""
    body = json.dumps({"ref": "refs/heads/main", "after": commit,
                       "repository": {"clone_url": f"file://{remote}", "html_url": str(remote)}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                  "X-GitHub-Delivery": f"bench-{commit[:12]}", "X-Hub-Signature-256": signature}


class Fleet:
    """The stand-ins in this process, and the reconciler and the API in theirs."""

    def __init__(self, stack: ExitStack, parent: Path, size: int, interval: float | None) -> None:
        import yaml

        from standins.kube_apiserver import OLLAMAMODELS, KubeStandin
        from standins.ollama_server import OllamaStandin

        self.size = size
        self.remote, self.generate_s = generate(parent, size, model_path)
        self.work = parent / "work"
        git("clone", "-q", str(self.remote), str(self.work))
        schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self.kube = stack.enter_context(KubeStandin(schema=schema))
        self.kube.add_namespace(NAMESPACE)
        self._objects = self.kube._store.objects[OLLAMAMODELS.key]  # read in place: polled every millisecond
        self._lock = self.kube._store.lock
        self.ollama = OllamaStandin().start()
        stack.callback(self.ollama.stop)
        for i in range(size):
            self.ollama.install(f"model{i}:1b", 1_234_567_890)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
        env.update(GIT_ENV)
        env.update({"HOME": str(parent / "home"), "KUBECONFIG": str(self.kube.write_kubeconfig(parent / "kubeconfig")),
                    "OLLAMA_GITOPS_KUBERNETES": "on", "OLLAMA_GITOPS_REPO": str(self.remote),
                    "OLLAMA_GITOPS_OLLAMA_URL": self.ollama.url, "OLLAMA_GITOPS_LEADER_ELECTION_NAMESPACE": NAMESPACE,
                    "OLLAMA_GITOPS_LOG_LEVEL": "WARNING"})
        if interval is not None:
            env["OLLAMA_GITOPS_INTERVAL"] = str(interval)
        self.interval = interval if interval is not None else 60.0
        self._processes: list[subprocess.Popen] = []
        stack.callback(self._stop)
        self._start(["reconcile", "--state-dir", str(parent / "reconciler")], env, parent / "reconcile.log")
        wait_for(self.all_ready, READY_TIMEOUT, f"{size} resources Ready (the cold start)", interval=0.05)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self._start(["api", "--state-dir", str(parent / "api"), "--listen", f"127.0.0.1:{port}",
                     "--insecure-no-auth"], {**env, "OLLAMA_GITOPS_WEBHOOK_SECRET": SECRET}, parent / "api.log")
        import httpx

        wait_for(lambda: _answers(httpx, f"{self.api_url}/readiness"), 60, "the API", interval=0.05)
        self.rev = 0

    def _start(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "w") as stderr:
            self._processes.append(subprocess.Popen([COMMAND, *args], env=env, stdout=subprocess.DEVNULL,
                                                    stderr=stderr))

    def _stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def all_ready(self) -> bool:
        with self._lock:
            objects = list(self._objects.values())
        return len(objects) == self.size and all((o.get("status") or {}).get("state") == "Ready" for o in objects)

    def labelled(self, i: int, rev: int) -> bool:
        with self._lock:
            obj = self._objects.get(("default", f"model{i}-1b"))
        return obj is not None and (obj["metadata"].get("labels") or {}).get("rev") == str(rev)

    def push_change(self, i: int) -> tuple[str, int, float]:
        """Change model `i`, commit and push; (commit, rev, seconds the push took)."""
        self.rev += 1
        (self.work / model_path(i)).write_text(model_text(i, self.rev))
        git("commit", "-q", "-am", f"model{i}: rev {self.rev}", cwd=self.work)
        began = time.perf_counter()
        git("push", "-q", "origin", "main", cwd=self.work)
        pushed = time.perf_counter() - began
        return git("rev-parse", "HEAD", cwd=self.work).decode().strip(), self.rev, pushed

    def round(self, i: int, webhook: bool) -> dict:
        import httpx

        commit, rev, push_s = self.push_change(i)
        started = time.perf_counter()
        answer = None
        if webhook:
            body, headers = github_push(self.remote, commit)
            response = httpx.post(f"{self.api_url}/api/v1/webhook", content=body, headers=headers, timeout=30)
            answer = time.perf_counter() - started
            if response.status_code != 202:
                raise RuntimeError(f"the webhook was answered {response.status_code}: {response.text}")
        timeout = APPLY_TIMEOUT if webhook else self.interval * 2 + APPLY_TIMEOUT
        wait_for(lambda: self.labelled(i, rev), timeout, f"model{i} applied at rev {rev}")
        return {"applied_s": time.perf_counter() - started, "webhook_answer_s": answer, "push_s": push_s}


def _answers(httpx, url: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000, help="model files (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="webhook rounds (default 10)")
    parser.add_argument("--poll-rounds", type=int, default=3, help="polling rounds (default 3)")
    parser.add_argument("--interval", type=float, help="the reconciler's --interval (default: its own, 60 s)")
    parser.add_argument("--smoke", action="store_true", help="50 models, 2 + 1 rounds, a 2 s interval")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when the bar fails")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.poll_rounds, args.interval = 50, 2, 1, 2.0
    if args.size < 1 or args.rounds < 1 or args.poll_rounds < 0:
        parser.error("--size and --rounds must be at least 1, --poll-rounds at least 0")
    os.environ.update(GIT_ENV)

    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp, ExitStack() as stack:
        print(f"{args.size:,} models: generating, cold start in Kubernetes mode...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        fleet = Fleet(stack, Path(tmp), args.size, args.interval)
        cold_s = time.perf_counter() - began
        fleet.round(0, webhook=True)  # warm-up, not counted
        webhook = [fleet.round(1 + r % (args.size - 1 or 1), webhook=True) for r in range(args.rounds)]
        print(f"polling rounds at a {fleet.interval:g} s interval...", file=sys.stderr, flush=True)
        polling = [fleet.round(r % args.size, webhook=False) for r in range(args.poll_rounds)]

    applied = [r["applied_s"] for r in webhook]
    median = statistics.median(applied)
    ok = median < BAR_SECONDS and max(applied) < BAR_SECONDS
    print(f"\nPush to applied OllamaModel, {args.size:,} models, Kubernetes mode (stand-in API server), "
          f"`reconcile` and `api` in their own processes; setup and cold start {cold_s:,.1f} s")
    print(f"  webhook ({len(webhook)} rounds): median {median * 1000:,.0f} ms, min {min(applied) * 1000:,.0f} ms, "
          f"max {max(applied) * 1000:,.0f} ms; the webhook's answer (202) median "
          f"{statistics.median(r['webhook_answer_s'] for r in webhook) * 1000:,.1f} ms; git push itself median "
          f"{statistics.median(r['push_s'] for r in webhook) * 1000:,.0f} ms")
    if polling:
        p = [r["applied_s"] for r in polling]
        print(f"  polling at a {fleet.interval:g} s interval ({len(polling)} rounds): "
              + ", ".join(f"{x:,.1f} s" for x in p) + f"; median {statistics.median(p):,.1f} s")
    print(f"\nBar:\n  {verdict(ok)}  with a webhook, under {BAR_SECONDS:g} s at {args.size:,} models "
          f"(median and every round): median {median * 1000:,.0f} ms, worst {max(applied) * 1000:,.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "bench_webhook", "size": args.size, "interval_s": fleet.interval, "cold_s": cold_s,
            "webhook": webhook, "polling": polling, "bar_ok": ok, "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count()}, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
