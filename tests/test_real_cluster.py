"""The Kubernetes-mode scenarios against a real cluster and a real Ollama, when the environment has them.

Run with a kind or k3d cluster that has the CRD installed (`kubectl apply -f manifests/crd/`) and an
Ollama server reachable from this machine:

    KUBECONFIG=~/.kube/config OLLAMA_GITOPS_E2E_OLLAMA_URL=http://localhost:11434 pytest -m cluster

Skipped otherwise. It works in its own namespace, deleted afterwards, and pulls one small model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

OLLAMA_URL = os.environ.get("OLLAMA_GITOPS_E2E_OLLAMA_URL")
SMALL_MODEL = os.environ.get("OLLAMA_GITOPS_E2E_MODEL", "qwen2.5:0.5b")

if not (os.environ.get("KUBECONFIG") and OLLAMA_URL):
    pytest.skip("needs KUBECONFIG (a real cluster) and OLLAMA_GITOPS_E2E_OLLAMA_URL (a real Ollama)",
                allow_module_level=True)

from kubernetes import client, config  # noqa: E402

from gitrepos import WorkRepo, init_bare  # noqa: E402
from ollama_gitops.reconciler.cluster.resources import GROUP, PLURAL, VERSION
from waiting import eventually  # noqa: E402

COMMAND = [sys.executable, "-m", "ollama_gitops"]


@pytest.fixture(scope="module")
def cluster():
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    namespace = f"ollama-gitops-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    yield namespace, custom
    core.delete_namespace(namespace)


def once(tmp_path: Path, remote: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, "reconcile", "--once", "--kubernetes", "on", "--repo", str(remote),
                           "--state-dir", str(tmp_path / "state"), "--ollama-url", OLLAMA_URL, "--allow-empty"],
                          capture_output=True, text=True, timeout=1800)


def test_add_change_drift_delete_by_hand_and_remove(cluster, tmp_path: Path) -> None:
    namespace, custom = cluster
    name, tag = SMALL_MODEL.split(":")
    remote = init_bare(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    path = work.model(namespace, name, tag)
    work.commit()
    work.push()
    assert once(tmp_path, remote).returncode == 0
    resource_name = Path(path).stem
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource_name)
    assert obj["status"]["state"] == "Ready" and len(obj["status"]["digest"]) == 64

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource_name, {"spec": {"tag": "nope"}})
    assert once(tmp_path, remote).returncode == 0
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource_name)["spec"]["tag"] == tag

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource_name)
    eventually(lambda: once(tmp_path, remote).returncode == 0 and custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL)["items"], timeout=600, interval=1)

    work.remove(path)
    work.commit("remove")
    work.push()
    assert once(tmp_path, remote).returncode == 0
    eventually(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"], timeout=120, interval=1)
