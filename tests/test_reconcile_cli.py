"""`ollama-gitops reconcile` as a user runs it: real processes, real Git, the stand-in Ollama."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.state import StateStore
from standins.ollama_server import OllamaStandin

COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path, ollama: OllamaStandin) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    environment.update({
        "OLLAMA_GITOPS_STATE_DIR": str(tmp_path / "state"),
        "OLLAMA_GITOPS_OLLAMA_URL": ollama.url,
        "OLLAMA_GITOPS_KUBERNETES": "off",
        "HOME": str(tmp_path / "home"),
    })
    return environment


def statuses(state_dir: Path) -> dict[str, str]:
    """The states on disk, as the next process will read them."""
    return {str(key): record.status.state for key, record in StateStore(state_dir).records().items()}


def test_first_run_with_no_settings_reconciles_the_embedded_example_repo(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    result = run(["reconcile", "--once"], env)
    assert result.returncode == 0, result.stderr
    assert "Succeeded at" in result.stdout
    assert "Ready    default/llama3.2-1b  llama3.2:1b" in result.stdout
    assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    assert statuses(tmp_path / "state") == {"default/llama3.2-1b": "Ready", "default/gemma3-1b": "Ready"}
    assert "action=pull models=default/gemma3-1b reference=gemma3:1b commit=" in result.stderr
    again = run(["reconcile", "--once"], env)
    assert again.returncode == 0 and ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1}


def test_dry_run_previews_a_branch_and_changes_nothing(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    work.model("default", "phi3", "mini")
    work.commit("add phi3")
    work.push("add-phi3")
    ollama.install("llama3.2:1b")
    result = run(["reconcile", "--once", "--dry-run", "--repo", str(remote), "--branch", "add-phi3"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [  # a table: columns aligned; finding a model is not a change to Ollama
        "ACTION  MODEL                REFERENCE    REASON",
        "ready   default/llama3.2-1b  llama3.2:1b  already in Ollama",
        "pull    default/phi3-mini    phi3:mini    new model, not in Ollama",
        f"dry run: Succeeded at {work.repo.head.commit.hexsha[:12]}: would make 1 pull, 0 deletes, 1 already in Ollama",
    ]
    assert ollama.pull_count == {} and statuses(tmp_path / "state") == {}


def test_ollama_down_exits_non_zero_naming_the_url(env: dict[str, str], ollama: OllamaStandin) -> None:
    ollama.stop()
    result = run(["reconcile", "--once"], env)
    assert result.returncode == 1
    assert f"Ollama is not reachable at {ollama.url}" in result.stdout


def test_failed_pull_exits_non_zero_with_ollamas_error(env: dict[str, str], ollama: OllamaStandin) -> None:
    ollama.fail_next_pulls("gemma3:1b", 1, "max retries exceeded: unexpected EOF")
    result = run(["reconcile", "--once"], env)
    assert result.returncode == 1
    assert "Failed   default/gemma3-1b  gemma3:1b: max retries exceeded: unexpected EOF" in result.stdout


def test_credentials_never_appear_in_output(env: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-file-secret\n")
    from_settings = run(["reconcile", "--once", "--repo", "https://127.0.0.1:9/models.git", "--git-token-file",
                         str(token_file)], {**env, "OLLAMA_GITOPS_GIT_TOKEN": "tok-env-secret"})
    from_url = run(["reconcile", "--once", "--repo", "https://alice:pw-secret@127.0.0.1:9/models.git"], env)
    for result in (from_settings, from_url):
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "could not fetch branch 'main' from https://127.0.0.1:9/models.git" in output  # no user info
        for secret in ("pw-secret", "tok-file-secret", "tok-env-secret", "alice"):
            assert secret not in output
    config = (tmp_path / "state" / "clone.git" / "config").read_text()
    assert "tok-file-secret" not in config and "pw-secret" not in config and "alice" not in config


def test_second_process_on_the_same_state_directory_is_refused(env: dict[str, str], ollama: OllamaStandin) -> None:
    with ollama.hold_pulls() as gate:
        first = subprocess.Popen([COMMAND, "reconcile"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert gate.wait_for_pulls(1, timeout=30)
            second = run(["reconcile", "--once"], env)
            assert second.returncode == 2 and "another ollama-gitops process is reconciling" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            gate.release()
            assert first.wait(timeout=30) == 0


def test_kill_9_mid_pull_then_restart_converges_without_duplicate_pulls(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    gate = ollama.hold_pulls()
    process = subprocess.Popen([COMMAND, "reconcile", "--concurrency", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert gate.wait_for_pulls(1, timeout=30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        gate.release()
    assert ollama.installed() == {}  # the killed pull installed nothing
    assert set(statuses(tmp_path / "state").values()) <= {"Pending", "Pulling"}
    result = run(["reconcile", "--once"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    pulls_after_recovery = dict(ollama.pull_count)
    again = run(["reconcile", "--once"], env)
    assert again.returncode == 0
    assert ollama.pull_count == pulls_after_recovery  # Ready models are not pulled again


def test_sigterm_stops_the_loop_cleanly(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    from waiting import eventually

    log = tmp_path / "reconcile.log"
    with open(log, "w") as stderr:  # a file, not a pipe: nobody has to keep reading it
        process = subprocess.Popen([COMMAND, "reconcile", "--interval", "3600"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        eventually(lambda: "action=cycle outcome=Succeeded" in log.read_text(), timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert json.loads((tmp_path / "state" / "sync.json").read_text())["last_cycle_outcome"] == "Succeeded"


def test_kubernetes_on_without_a_cluster_configuration_is_refused_clearly(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    result = run(["reconcile", "--once", "--kubernetes", "on"], env)
    assert result.returncode == 2 and "no usable Kubernetes configuration" in result.stderr


def test_kubernetes_mode_end_to_end_with_a_kubeconfig(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    import yaml

    from standins.kube_apiserver import KubeStandin

    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/crd/ollamamodels.ollama.smithforge.dev.yaml").read_text())
    with KubeStandin(schema=crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        env = {**env, "KUBECONFIG": str(kubeconfig), "OLLAMA_GITOPS_KUBERNETES": "auto"}
        result = run(["reconcile", "--once"], env)
        assert result.returncode == 0, result.stdout + result.stderr
        names = sorted(o["metadata"]["name"] for o in kube.objects("default"))
        assert names == ["gemma3-1b", "llama3.2-1b"]
        assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
        assert {o["status"]["state"] for o in kube.objects("default")} == {"Ready"}


def test_a_standby_replica_takes_over_when_the_leader_dies(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path) -> None:
    import yaml

    from standins.kube_apiserver import KubeStandin
    from waiting import eventually

    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/crd/ollamamodels.ollama.smithforge.dev.yaml").read_text())
    with KubeStandin(schema=crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) as kube:
        env = {**env, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")), "OLLAMA_GITOPS_KUBERNETES": "on",
               "OLLAMA_GITOPS_REPO": str(remote), "OLLAMA_GITOPS_LEASE_DURATION": "2", "OLLAMA_GITOPS_INTERVAL": "1"}
        first = subprocess.Popen([COMMAND, "reconcile", "--state-dir", str(tmp_path / "a")], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        second = None
        try:
            eventually(lambda: [o for o in kube.objects("default") if o.get("status", {}).get("state") == "Ready"], timeout=30)
            holder = eventually(lambda: kube.leases() and kube.leases()[0]["spec"].get("holderIdentity"), timeout=30)
            second = subprocess.Popen([COMMAND, "reconcile", "--state-dir", str(tmp_path / "b")], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            work.model("default", "gemma3", "1b")
            work.commit("add gemma")
            work.push()
            eventually(lambda: any(o["metadata"]["name"] == "gemma3-1b" and o.get("status", {}).get("state") == "Ready"
                                   for o in kube.objects("default")), timeout=60)
            assert kube.leases()[0]["spec"]["holderIdentity"] != holder
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
