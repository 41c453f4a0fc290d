"""`reconcile --health-listen`: the probes and metrics the reconciler's Deployment uses."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from ollama_gitops.reconciler.health import Health, HealthServer
from ollama_gitops.reconciler.scheduler import CycleScheduler
from processes import Children
from test_reconcile_cli import COMMAND, START, STOP, env  # noqa: F401 - the fixture
from waiting import eventually


def test_probes_follow_the_schedule() -> None:
    release = threading.Event()
    entered = threading.Event()

    def cycle() -> None:
        entered.set()
        release.wait(30)

    scheduler = CycleScheduler(cycle, interval=3600)
    leading = [True]
    health = Health(lambda: scheduler, interval=60, leading=lambda: leading[0])
    server = HealthServer(health, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert health.stall_after == 600  # never less than ten minutes
        assert httpx.get(f"{url}/readyz").status_code == 503  # no cycle has ended yet
        scheduler.start()
        assert entered.wait(10)
        assert httpx.get(f"{url}/healthz").status_code == 200  # a cycle under way is not a stall
        health.stall_after = 0.0
        eventually(lambda: httpx.get(f"{url}/healthz").status_code == 503)
        assert "has been running for over" in httpx.get(f"{url}/healthz").text
        release.set()
        eventually(lambda: httpx.get(f"{url}/readyz").status_code == 200)
        assert httpx.get(f"{url}/healthz").status_code == 200
        leading[0] = False
        assert httpx.get(f"{url}/readyz").text == "standing by for the Lease\n"
        assert httpx.get(f"{url}/nothing").status_code == 404
    finally:
        release.set()
        scheduler.shutdown()
        server.stop()


def test_reconcile_serves_probes_and_metrics_and_stops_on_sigterm(env: dict[str, str], tmp_path: Path,  # noqa: F811
                                                                 children: Children) -> None:
    process = children.start("reconcile", [COMMAND, "reconcile", "--health-listen", "127.0.0.1:0", "--interval", "3600"],
                             env=env)
    port = int(process.wait_for(r"probes and metrics on port (\d+)", timeout=START).group(1))
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=START, what="/readyz 200")
    assert httpx.get(f"{url}/healthz").text == "ok\n"
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'ollama_gitops_models{state="Ready"} 2.0' in metrics.text  # the embedded example's two models
    assert 'ollama_gitops_reconcile_cycles_total{outcome="succeeded"} 1.0' in metrics.text
    assert process.terminate(timeout=STOP) == 0


def test_a_bad_health_address_is_a_clear_error(env: dict[str, str], children: Children) -> None:  # noqa: F811
    result = children.run("reconcile", [COMMAND, "reconcile", "--health-listen", "nowhere"], env=env, timeout=START)
    assert result.returncode == 2
    assert "--health-listen must be HOST:PORT, got 'nowhere'" in result.stderr
