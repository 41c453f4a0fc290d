"""`ollama-gitops reconcile` as a user runs it: real processes, real Git, the stand-in Ollama."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.state import StateStore
from processes import Child, Children
from standins.ollama_server import OllamaStandin
from waiting import eventually

COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
# Ceilings for waits on a loaded 2-core machine, never sleeps: a process's start (Python, the
# kubernetes import, the first clone) and first cycle; a leader's handover; a clean stop.
START = 90.0
TAKEOVER = 120.0
STOP = 60.0


def run(children: Children, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ollama-gitops ARGS` to its end; its output is in the report if the test fails."""
    return children.run(f"run-{len(children.started) + 1}", [COMMAND, *args], env=env, timeout=START)


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
    return {str(key): record.servers["default"].state for key, record in StateStore(state_dir).records().items()}


def test_first_run_with_no_settings_reconciles_the_embedded_example_repo(env: dict[str, str], ollama: OllamaStandin,
                                                                         tmp_path: Path, children: Children) -> None:
    result = run(children, ["reconcile", "--once"], env)
    assert result.returncode == 0, result.stderr
    assert "Succeeded at" in result.stdout
    assert "Ready    default/llama3.2-1b  llama3.2:1b" in result.stdout
    assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    assert statuses(tmp_path / "state") == {"default/llama3.2-1b": "Ready", "default/gemma3-1b": "Ready"}
    assert "action=pull models=default/gemma3-1b reference=gemma3:1b commit=" in result.stderr
    # Nothing changed: the next run ends after the fetch, from the recorded state (issue 16)
    before = len(ollama.requests)
    again = run(children, ["reconcile", "--once"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Succeeded at ") and ": up to date at " in again.stdout
    assert ollama.requests[before:] == [] and "action=cycle" not in again.stderr  # no request, no cycle's work
    full = run(children, ["reconcile", "--once", "--full"], env)
    assert full.returncode == 0, full.stderr
    assert ("GET", "/api/tags") in ollama.requests[before:] and "full=True" in full.stderr
    assert ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1}  # nothing pulled again
    again = run(children, ["reconcile", "--once"], env)
    assert again.returncode == 0 and ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1}


def test_once_after_a_no_op_once_applies_what_was_pushed_since(env: dict[str, str], ollama: OllamaStandin,
                                                                tmp_path: Path, children: Children) -> None:
    # A no-op run's fetch (by URL, before the reconciler is imported) moves the clone's tracking ref:
    # the next run that finds a change there still applies it, and then ends after the fetch again.
    assert run(children, ["reconcile", "--once"], env).returncode == 0
    assert ": up to date at " in run(children, ["reconcile", "--once"], env).stdout
    work = WorkRepo(tmp_path / "work", remote=tmp_path / "state" / "models.git")  # the embedded repository
    work.model("default", "phi3", "mini")
    head = work.commit("add phi3")
    work.push()
    work.close()
    changed = run(children, ["reconcile", "--once"], env)
    assert changed.returncode == 0, changed.stderr
    assert f"Succeeded at {head[:12]}: applied {head[:12]}: 1 pull, 0 deletes" in changed.stdout
    assert ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1, "phi3:mini": 1}
    again = run(children, ["reconcile", "--once"], env)
    assert again.stdout == f"Succeeded at {head[:12]}: up to date at {head[:12]}\n", again.stdout + again.stderr


def test_dry_run_previews_a_branch_and_changes_nothing(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path,
                                                       children: Children) -> None:
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    work.model("default", "phi3", "mini")
    work.commit("add phi3")
    work.push("add-phi3")
    ollama.install("llama3.2:1b")
    result = run(children, ["reconcile", "--once", "--dry-run", "--repo", str(remote), "--branch", "add-phi3"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [  # a table: columns aligned; finding a model is not a change to Ollama
        "ACTION  MODEL                REFERENCE    REASON",
        "ready   default/llama3.2-1b  llama3.2:1b  already in Ollama",
        "pull    default/phi3-mini    phi3:mini    new model, not in Ollama",
        f"dry run: Succeeded at {work.repo.head.commit.hexsha[:12]}: would make 1 pull, 0 deletes, 1 already in Ollama",
    ]
    # A state directory no reconciler has used: a deletion could not show, and the dry run says so.
    assert (f"warning: {tmp_path / 'state'} has no records (no reconciler has applied anything with it): nothing is "
            "known to have been pulled by ollama-gitops, so no deletion can be planned") in result.stderr
    assert ollama.pull_count == {} and statuses(tmp_path / "state") == {}


def test_ollama_down_exits_non_zero_naming_the_url(env: dict[str, str], ollama: OllamaStandin,
                                                   children: Children) -> None:
    ollama.stop()
    result = run(children, ["reconcile", "--once"], env)
    assert result.returncode == 1
    assert f"Ollama is not reachable at {ollama.url}" in result.stdout


def test_failed_pull_exits_non_zero_with_ollamas_error(env: dict[str, str], ollama: OllamaStandin,
                                                       children: Children) -> None:
    ollama.fail_next_pulls("gemma3:1b", 1, "max retries exceeded: unexpected EOF")
    result = run(children, ["reconcile", "--once"], env)
    assert result.returncode == 1
    assert "Failed   default/gemma3-1b  gemma3:1b: max retries exceeded: unexpected EOF" in result.stdout


def test_credentials_never_appear_in_output(env: dict[str, str], tmp_path: Path, children: Children) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-file-secret\n")
    from_settings = run(children, ["reconcile", "--once", "--repo", "https://127.0.0.1:9/models.git", "--git-token-file",
                                   str(token_file)], {**env, "OLLAMA_GITOPS_GIT_TOKEN": "tok-env-secret"})
    from_url = run(children, ["reconcile", "--once", "--repo", "https://alice:pw-secret@127.0.0.1:9/models.git"], env)
    for result in (from_settings, from_url):
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "could not fetch branch 'main' from https://127.0.0.1:9/models.git" in output  # no user info
        for secret in ("pw-secret", "tok-file-secret", "tok-env-secret", "alice"):
            assert secret not in output
    config = (tmp_path / "state" / "clone.git" / "config").read_text()
    assert "tok-file-secret" not in config and "pw-secret" not in config and "alice" not in config


def test_second_process_on_the_same_state_directory_is_refused(env: dict[str, str], ollama: OllamaStandin,
                                                               children: Children) -> None:
    with ollama.hold_pulls() as gate:
        first = children.start("first", [COMMAND, "reconcile"], env=env)
        try:
            assert gate.wait_for_pulls(1, timeout=START), "the first process never started a pull"
            second = children.run("second", [COMMAND, "reconcile", "--once"], env=env)
            assert second.returncode == 2 and "another ollama-gitops process is reconciling" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            gate.release()
        assert first.wait(timeout=STOP) == 0


def test_kill_9_mid_pull_then_restart_converges_without_duplicate_pulls(env: dict[str, str], ollama: OllamaStandin,
                                                                         tmp_path: Path, children: Children) -> None:
    gate = ollama.hold_pulls()
    process = children.start("killed", [COMMAND, "reconcile", "--concurrency", "1"], env=env)
    try:
        assert gate.wait_for_pulls(1, timeout=START), "the process never started a pull"
        process.kill()
    finally:
        gate.release()
    assert ollama.installed() == {}  # the killed pull installed nothing
    assert set(statuses(tmp_path / "state").values()) <= {"Pending", "Pulling"}
    result = run(children, ["reconcile", "--once"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
    pulls_after_recovery = dict(ollama.pull_count)
    again = run(children, ["reconcile", "--once"], env)
    assert again.returncode == 0
    assert ollama.pull_count == pulls_after_recovery  # Ready models are not pulled again


def test_sigterm_stops_the_loop_cleanly(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path,
                                        children: Children) -> None:
    process = children.start("reconcile", [COMMAND, "reconcile", "--interval", "3600"], env=env)
    process.wait_for("action=cycle outcome=Succeeded", timeout=START)
    assert process.terminate(timeout=STOP) == 0
    assert json.loads((tmp_path / "state" / "sync.json").read_text())["last_cycle_outcome"] == "Succeeded"


def test_kubernetes_on_without_a_cluster_configuration_is_refused_clearly(env: dict[str, str], tmp_path: Path,
                                                                          children: Children) -> None:
    env = {**env, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    result = run(children, ["reconcile", "--once", "--kubernetes", "on"], env)
    assert result.returncode == 2 and "no usable Kubernetes configuration" in result.stderr


def test_kubernetes_mode_end_to_end_with_a_kubeconfig(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path,
                                                      children: Children) -> None:
    import yaml

    from standins.kube_apiserver import KubeStandin

    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/crd/ollamamodels.ollama.smithforge.dev.yaml").read_text())
    with KubeStandin(schema=crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        env = {**env, "KUBECONFIG": str(kubeconfig), "OLLAMA_GITOPS_KUBERNETES": "auto"}
        result = run(children, ["reconcile", "--once"], env)
        assert result.returncode == 0, result.stdout + result.stderr
        names = sorted(o["metadata"]["name"] for o in kube.objects("default"))
        assert names == ["gemma3-1b", "llama3.2-1b"]
        assert set(ollama.installed()) == {"llama3.2:1b", "gemma3:1b"}
        assert {o["status"]["state"] for o in kube.objects("default")} == {"Ready"}


def test_a_standby_replica_takes_over_when_the_leader_dies(env: dict[str, str], ollama: OllamaStandin, tmp_path: Path,
                                                         children: Children) -> None:
    """Each step is awaited on its own event, so that a slow one is named: a process's start (on a
    loaded machine most of the time goes to Python's start and imports, seconds of CPU each), its
    Lease, a cycle's status. The standby is up and following before the leader dies, so that the
    handover is what the last waits measure: the Lease expiring (2 s after the standby last saw it
    renewed) and a cycle."""
    import yaml

    from standins.kube_apiserver import KubeStandin

    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.model("default", "llama3.2", "1b")
    work.commit()
    work.push()
    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/crd/ollamamodels.ollama.smithforge.dev.yaml").read_text())
    with KubeStandin(schema=crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) as kube:
        env = {**env, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")), "OLLAMA_GITOPS_KUBERNETES": "on",
               "OLLAMA_GITOPS_REPO": str(remote), "OLLAMA_GITOPS_LEASE_DURATION": "2", "OLLAMA_GITOPS_INTERVAL": "1"}

        def holder() -> str | None:
            leases = kube.leases()
            return leases[0]["spec"].get("holderIdentity") if leases else None

        def state(name: str) -> str | None:
            found = [o for o in kube.objects("default") if o["metadata"]["name"] == name]
            return (found[0].get("status") or {}).get("state") if found else None

        def identity(replica: Child) -> str:  # how a replica names itself in the Lease
            return f"{socket.gethostname()}-{replica.pid}"

        first = children.start("replica-a", [COMMAND, "reconcile", "--state-dir", str(tmp_path / "a")], env=env)
        first.wait_for("started leading", timeout=START)
        assert holder() == identity(first)
        eventually(lambda: state("llama3.2-1b") == "Ready", timeout=START, what="llama3.2-1b Ready, by replica-a")
        second = children.start("replica-b", [COMMAND, "reconcile", "--state-dir", str(tmp_path / "b")], env=env)
        second.wait_for("reconciling .* every", timeout=START)  # its elector is running: it follows
        first.kill()
        work.model("default", "gemma3", "1b")
        work.commit("add gemma")
        work.push()
        second.wait_for("started leading", timeout=TAKEOVER)
        assert holder() == identity(second)
        eventually(lambda: state("gemma3-1b") == "Ready", timeout=TAKEOVER, what="gemma3-1b Ready, by replica-b")
        assert second.terminate(timeout=STOP) == 0  # before the API server goes


WAIT_FOR_SIGNAL_SCRIPT = '''
import signal, sys, threading, time
from ollama_gitops.reconciler.service import stop_signals

main = threading.main_thread().ident
stop = stop_signals()

def deliver():
    # Once the main thread is blocked waiting for the signal, SIGTERM to this thread: Python runs the
    # handler in the main thread only when that thread runs Python code again.
    while not (signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
               and sys._current_frames()[main].f_code.co_name == "wait"):
        time.sleep(0.01)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=deliver, daemon=True).start()
stop.wait()
print("stopped", flush=True)
'''


def test_sigterm_stops_the_process_whichever_thread_receives_it(children: Children) -> None:
    """Found under load: `reconcile` blocked waiting for the signal never handled a SIGTERM (its stacks
    showed the main thread waiting and every other thread idle). The kernel gives a process's
    signal to any thread; CPython then runs the handler only when the main thread runs Python code,
    which a main thread blocked on a lock without a timeout never does."""
    result = children.run("wait-for-signal", [sys.executable, "-c", WAIT_FOR_SIGNAL_SCRIPT], timeout=60)
    assert result.returncode == 0 and result.stdout == "stopped\n", result.stderr


def test_a_garbage_sync_json_is_reported_by_name_and_start_up_goes_on(env: dict[str, str], ollama: OllamaStandin,
                                                                     tmp_path: Path, children: Children) -> None:
    assert run(children, ["reconcile", "--once"], env).returncode == 0
    sync = tmp_path / "state" / "sync.json"
    sync.write_text(sync.read_text()[:100])  # cut short, as a full disk leaves it
    result = run(children, ["reconcile", "--once"], env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{sync} is unreadable" in result.stderr and "starting with a fresh sync summary" in result.stderr
    assert json.loads(sync.read_text())["last_cycle_outcome"] == "Succeeded"
