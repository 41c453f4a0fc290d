"""The quick commands import only what they need (issue 15): `--help`, `status`, `plan` and `validate`
answer without loading the reconciler's service, the Kubernetes or Ollama clients, Flask,
waitress, GitPython, jsonschema or prometheus_client; nor does a `reconcile --once` that has nothing
to do (issue 16). Asserted on the modules loaded, not on time (benchmarks/bench_cli.py has the times)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "models-repo"
HEAVY = ("kubernetes", "flask", "waitress", "apscheduler", "ollama", "httpx", "prometheus_client", "http.server",
         "git", "jsonschema", "ollama_gitops.reconciler.service")

# One fresh interpreter runs each command in turn and reports what each one added to sys.modules.
PROBE = """
import contextlib, io, json, sys
from ollama_gitops.api.cli import main
heavy, seen = {heavy!r}, {{}}
for argv in {commands!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    seen[" ".join(argv)] = {{"code": code, "heavy": [m for m in heavy if m in sys.modules]}}
print(json.dumps(seen))
"""


def test_help_status_and_validate_import_none_of_the_heavy_modules(tmp_path: Path) -> None:
    with socket.socket() as closed:  # bound, not listening: the API is down, connections refused
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
        commands = [["--help"], ["status", "--help"], ["validate", "--help"], ["serve", "--help"],
                    ["status", "--api-url", down], ["validate", str(EXAMPLE)], ["plan", "--help"],
                    ["plan", "--ref", "main", "--api-url", down]]
        result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, commands=commands)],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert {argv: entry["heavy"] for argv, entry in seen.items()} == {" ".join(argv): [] for argv in commands}
    assert [entry["code"] for entry in seen.values()] == [0, 0, 0, 0, 2, 0, 0, 2]  # status and plan exit 2: the API is down


# What `reconcile --once` needs only once a commit is read, a cycle applied or metrics served (issue 16):
# a run that ends after the fetch, from the recorded state, imports none of them, nor the reconciler
# itself, the model-file format (PyYAML) or the plan: it is decided before they are (`uptodate`).
DEFERRED = (*HEAVY, "yaml", "ollama_gitops.reconciler.models.desired", "ollama_gitops.reconciler.plan",
            "ollama_gitops.reconciler.reconcile", "ollama_gitops.reconciler.ollama.fleet",
            "ollama_gitops.reconciler.ollama.server", "ollama_gitops.reconciler.metrics",
            "ollama_gitops.reconciler.state",  # the records' store: the summary (`summary`) is read alone
            "difflib", "hashlib")  # for a mistake's "did you mean" and a derived server name over 63 characters
# A `git` first on PATH that notes each command it runs, then runs the real one.
GIT_SHIM = """#!/bin/sh
echo "$1 $2 $3" >> "$GIT_SHIM_LOG"
exec {git} "$@"
"""
ONCE_PROBE = """
import contextlib, io, json, sys
from ollama_gitops.api.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["reconcile", "--once"])
print(json.dumps({{"code": code, "out": out.getvalue(), "loaded": [m for m in {deferred!r} if m in sys.modules]}}))
"""


def test_reconcile_once_with_nothing_to_do_imports_none_of_the_deferred_modules(tmp_path: Path, ollama,
                                                                                 children) -> None:
    shim, log = tmp_path / "shim", tmp_path / "git.log"
    shim.mkdir()
    (shim / "git").write_text(GIT_SHIM.format(git=shutil.which("git")))
    (shim / "git").chmod(0o755)
    env = {"PATH": f"{shim}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "OLLAMA_GITOPS_STATE_DIR": str(tmp_path / "state"), "OLLAMA_GITOPS_OLLAMA_URL": ollama.url,
           "OLLAMA_GITOPS_KUBERNETES": "off", "GIT_SHIM_LOG": str(log)}
    first = children.run("first", [sys.executable, "-c", ONCE_PROBE.format(deferred=DEFERRED)], env=env)
    assert first.returncode == 0, first.stderr
    applied = json.loads(first.stdout)
    assert applied["code"] == 0 and "Succeeded at" in applied["out"], applied
    assert {"git", "ollama"} <= set(applied["loaded"])  # the probe sees what a cycle that works imports
    before, log_before = len(ollama.requests), log.read_text().splitlines()
    summary_before = json.loads((tmp_path / "state" / "sync.json").read_text())
    # The same repository named with --repo, as a path: no check of it either (the fetch is one).
    env["OLLAMA_GITOPS_REPO"] = str(tmp_path / "state" / "models.git")
    again = children.run("again", [sys.executable, "-c", ONCE_PROBE.format(deferred=DEFERRED)], env=env)
    assert again.returncode == 0, again.stderr
    noop = json.loads(again.stdout)
    assert noop["code"] == 0 and ": up to date at " in noop["out"], noop
    assert ollama.requests[before:] == []
    assert noop["loaded"] == []
    # Git: the fetch alone (by URL, so no origin to check; the head read from its FETCH_HEAD).
    ran = [line.split()[2] for line in log.read_text().splitlines()[len(log_before):]]
    assert ran == ["fetch"], ran
    summary = json.loads((tmp_path / "state" / "sync.json").read_text())  # the no-op cycle is recorded
    assert summary["last_cycle_message"].startswith("up to date at ") and summary["last_cycle_outcome"] == "Succeeded"
    assert summary["last_cycle_at"] >= summary_before["last_cycle_at"]
    assert {k: v for k, v in summary.items() if not k.startswith("last_cycle")} == \
        {k: v for k, v in summary_before.items() if not k.startswith("last_cycle")}


def test_a_command_builds_its_own_parser_alone_and_help_or_a_typo_builds_them_all(
        capsys: pytest.CaptureFixture[str]) -> None:
    from ollama_gitops.api.cli import build_parser, main

    every = ["validate", "reconcile", "serve", "api", "status", "plan"]
    for command in every:
        assert list(build_parser(command)[1].choices) == [command]
    for first in (None, "--help", "--version", "reconcil"):
        assert list(build_parser(first)[1].choices) == every
    with pytest.raises(SystemExit) as typo:
        main(["reconcil", "--once"])
    assert typo.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'reconcil'" in error and all(f"'{command}'" in error for command in every), error
