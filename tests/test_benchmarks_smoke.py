"""The benchmarks still run (one small repeat each); their numbers are read by people, not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_loader.py", "bench_reconcile.py", "bench_api.py", "bench_kubernetes.py",
                                    "bench_scale.py", "bench_dashboard.py", "bench_plan.py"])
def test_benchmark_smoke_run(script: str) -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "100" in result.stdout  # the second smoke size made it into the table


def test_cli_benchmark_smoke_run() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cli.py"), "--smoke"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "status (down)" in result.stdout and "x the baseline" in result.stdout


def test_once_benchmark_smoke_run() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_once.py"), "--smoke"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "with 0 Ollama requests" in result.stdout and "--once/least" in result.stdout, result.stdout
    assert "Growth exponents" in result.stdout, result.stdout


def test_webhook_benchmark_smoke_run() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_webhook.py"), "--smoke"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "webhook (2 rounds): median" in result.stdout and "polling at a 2 s interval (1 rounds)" in result.stdout


def test_fleet_benchmark_smoke_run() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fleet.py"), "--smoke"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "3 servers" in result.stdout and "Cold fill, 6 models per server" in result.stdout
    assert "PASS  one-change cycle at 3 servers asks only the server the change selects (s0)" in result.stdout, result.stdout
