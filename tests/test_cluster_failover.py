"""Two `ollama-gitops reconcile` replicas in Kubernetes mode, as a Deployment runs them: real processes
against the stand-in API server and the stand-in Ollama, one leading, one standing by.

Each child's output is kept (tests/processes.py) and shown when the test fails. Waits are on the event
itself, with ceilings suited to a loaded 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitrepos import WorkRepo, init_bare
from processes import Child, Children
from ollama_gitops.reconciler.cluster.resources import PULLED
from standins.kube_apiserver import KubeStandin
from standins.ollama_server import OllamaStandin
from waiting import eventually

COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"
CRD = Path(__file__).resolve().parents[1] / "manifests/crd/ollamamodels.ollama.smithforge.dev.yaml"
START = 60.0  # seconds for a child to start, list and lead or stand by
CONVERGE = 120.0  # seconds for a change to go through (fetch, cycle, pulls, status writes)


def start_replica(children: Children, name: str, tmp_path: Path, env: dict[str, str]) -> Child:
    """One `ollama-gitops reconcile` replica, its output kept and shown if the test fails."""
    return children.start(name, [COMMAND, "reconcile", "--state-dir", str(tmp_path / name)], env=env)


def identity(replica: Child) -> str:
    """How a replica names itself in the Lease."""
    return f"{os.uname().nodename}-{replica.pid}"


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    with KubeStandin(schema=schema) as server:
        yield server


@pytest.fixture
def work(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo(tmp_path / "work", remote=init_bare(tmp_path / "remote.git"))
    repo.remote = tmp_path / "remote.git"  # type: ignore[attr-defined]
    repo.model("default", "llama3.2", "1b")
    repo.commit()
    repo.push()
    return repo


def environment(tmp_path: Path, kube: KubeStandin, ollama: OllamaStandin, work: WorkRepo,
                lease_duration: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_"))}
    env.update({
        "HOME": str(tmp_path / "home"),
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        "OLLAMA_GITOPS_KUBERNETES": "on",
        "OLLAMA_GITOPS_OLLAMA_URL": ollama.url,
        "OLLAMA_GITOPS_REPO": str(work.remote),  # type: ignore[attr-defined]
        "OLLAMA_GITOPS_LEASE_DURATION": str(lease_duration),
        "OLLAMA_GITOPS_INTERVAL": "1",
    })
    return env


def holder(kube: KubeStandin) -> str | None:
    leases = kube.leases()
    return leases[0]["spec"].get("holderIdentity") if leases else None


def resource(kube: KubeStandin, name: str) -> dict | None:
    found = [o for o in kube.objects("default") if o["metadata"]["name"] == name]
    return found[0] if found else None


def ready_and_pulled(kube: KubeStandin, name: str) -> bool:
    obj = resource(kube, name)
    return bool(obj and (obj.get("status") or {}).get("state") == "Ready"
                and (obj["metadata"].get("annotations") or {}).get(PULLED) == "true")


def test_a_new_leader_prunes_what_the_killed_leader_pulled(tmp_path, kube, ollama, work, children: Children):
    """The standby loaded its records when the models did not exist yet: on taking over it must read
    them again from the resources, or it forgets that the old leader pulled them (and never prunes)."""
    env = environment(tmp_path, kube, ollama, work, lease_duration=2)
    leader = start_replica(children, "a", tmp_path, env)
    eventually(lambda: holder(kube) == identity(leader) and ready_and_pulled(kube, "llama3.2-1b"), timeout=START,
               what="replica a leading, llama3.2-1b Ready and pulled")
    standby = start_replica(children, "b", tmp_path, env)
    standby.wait_for("reconciling ", timeout=START)  # listed, records loaded, standing by

    work.model("default", "gemma3", "1b")
    work.model("default", "phi3", "mini")
    work.commit("add gemma3 and phi3")
    work.push()
    eventually(lambda: ready_and_pulled(kube, "gemma3-1b") and ready_and_pulled(kube, "phi3-mini"),
               timeout=CONVERGE)
    assert holder(kube) == identity(leader)  # pulled by the old leader, not the standby

    leader.kill()
    standby.wait_for("leading: reconciling", timeout=START)
    eventually(lambda: holder(kube) == identity(standby), timeout=START, what="replica b holding the Lease")

    work.remove("models/default/gemma3-1b.yaml")
    work.commit("remove gemma3")
    work.push()
    eventually(lambda: "gemma3:1b" not in ollama.installed() and resource(kube, "gemma3-1b") is None,
               timeout=CONVERGE)
    assert "phi3:mini" in ollama.installed() and ready_and_pulled(kube, "phi3-mini")  # still remembered
    assert ollama.pull_count == {"llama3.2:1b": 1, "gemma3:1b": 1, "phi3:mini": 1}  # nothing pulled twice


def test_sigterm_releases_the_lease_and_the_standby_leads_at_once(tmp_path, kube, ollama, work, children: Children):
    """With a 60 s lease the standby could lead only a minute after the leader's last renewal; a
    released Lease lets it lead at its next attempt (every 8 s with these timings)."""
    env = environment(tmp_path, kube, ollama, work, lease_duration=60)
    leader = start_replica(children, "a", tmp_path, env)
    eventually(lambda: holder(kube) == identity(leader) and ready_and_pulled(kube, "llama3.2-1b"), timeout=START,
               what="replica a leading, llama3.2-1b Ready and pulled")
    standby = start_replica(children, "b", tmp_path, env)
    standby.wait_for("reconciling ", timeout=START)

    assert leader.terminate(timeout=60) == 0
    assert f"{identity(leader)} released lease" in leader.stderr()
    # well within the 60 s lease
    eventually(lambda: holder(kube) == identity(standby), timeout=30, what="replica b holding the Lease")
    standby.wait_for("leading: reconciling", timeout=30)
    assert kube.leases()[0]["spec"]["leaseDurationSeconds"] == 60
