"""The cluster deployment (manifests/): it renders with kustomize, validates against the Kubernetes
schemas, configures the product the way the product reads its settings, runs it restricted, and
grants exactly the access that the product uses against the stand-in API server, no more, no less.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from apirig import settings_for
from gitrepos import WorkRepo, init_bare
from standins.kube_apiserver import KubeStandin, RequestRecord
from waiting import eventually
from webhooks import SECRET, github

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CRD_FILE = MANIFESTS / "crd" / "ollamamodels.ollama.smithforge.dev.yaml"
APPLICATION = MANIFESTS / "argocd" / "application.yaml"
OVERLAY_EXAMPLES = ROOT / "examples" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests are checked against (strict schemas)
NAMESPACE = "ollama-gitops"
IMAGE = "ghcr.io/example/ollama-gitops"
SYNC_CONFIGMAP = "ollama-gitops-sync"  # webhook sync requests: the API patches it, the reconciler watches it
FLEET_CONFIGMAP = "ollama-gitops-fleet"  # the fleet's servers: the leading reconciler writes them, the API reads them


# -- rendering -------------------------------------------------------------------------------------

def _kubectl() -> str | None:
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl")):
        if candidate and subprocess.run([candidate, "kustomize", "--help"], capture_output=True).returncode == 0:
            return candidate
    return None


def kustomizations() -> list[Path]:
    """Every kustomization directory of the repository's deployment: the base, its parts and the
    overlay examples (components are rendered through the overlays that use them)."""
    found = [p.parent for base in (MANIFESTS, OVERLAY_EXAMPLES) for p in sorted(base.rglob("kustomization.yaml"))]
    return [d for d in found if yaml.safe_load((d / "kustomization.yaml").read_text()).get("kind") != "Component"]


@pytest.fixture(scope="module")
def render():
    kubectl = _kubectl()
    if kubectl is None:
        message = "kubectl with kustomize is needed (.ci/install-kubectl puts one in place)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cache: dict[Path, list[dict]] = {}

    def rendered(directory: Path) -> list[dict]:
        if directory not in cache:
            result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
            assert result.returncode == 0, f"{directory}: {result.stderr}"
            cache[directory] = [o for o in yaml.safe_load_all(result.stdout) if o]
        return cache[directory]

    return rendered


@pytest.fixture(scope="module")
def base(render) -> list[dict]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def with_ollama(render) -> list[dict]:
    return render(OVERLAY_EXAMPLES / "with-ollama")


def find(objects: Iterable[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[dict], kind: str, name: str) -> dict:
    (found,) = find(objects, kind, name)
    return found


def settings_configmap(objects: Iterable[dict]) -> dict:
    """The settings ConfigMap, ollama-gitops-settings-<hash> (made by configMapGenerator)."""
    (found,) = [o for o in find(objects, "ConfigMap")
                if re.fullmatch(r"ollama-gitops-settings-\w+", o["metadata"]["name"])]
    return found


def pod_specs(objects: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def package_version() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["version"]


# -- what renders, and what is in it ---------------------------------------------------------------

def test_every_kustomization_renders(render) -> None:
    directories = kustomizations()
    assert MANIFESTS in directories and len(directories) >= 3
    for directory in directories:
        assert render(directory), directory


def test_every_manifest_file_is_rendered_or_is_for_argocd() -> None:
    used: set[Path] = set()

    def walk(directory: Path) -> None:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used.add(directory / "kustomization.yaml")
        entries = list(kustomization.get("resources") or []) + list(kustomization.get("components") or [])
        entries += [p["path"] for p in kustomization.get("patches") or [] if "path" in p]
        entries += [e for g in kustomization.get("configMapGenerator") or [] for e in g.get("envs") or []]
        for entry in entries:
            path = (directory / entry).resolve()
            if path.is_dir():
                walk(path)
            else:
                assert path.is_file(), f"{directory}: {entry} does not exist"
                used.add(path)

    for directory in kustomizations():
        walk(directory)
    files = {p.resolve() for p in MANIFESTS.rglob("*") if p.is_file() and p.name != "README.md"}
    # Argo CD's own: the Application, and the health check patched into its argocd-cm.
    argocd = {APPLICATION, MANIFESTS / "argocd" / "argocd-cm.yaml", MANIFESTS / "argocd" / "health.lua"}
    assert files - used == {p.resolve() for p in argocd}


def test_the_base_is_the_cluster_deployment_and_nothing_else(base) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base if o is not settings_configmap(base))
    assert kinds == sorted([
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "ollamamodels.ollama.smithforge.dev"),
        ("ServiceAccount", "ollama-gitops-reconciler"), ("ServiceAccount", "ollama-gitops-api"),
        ("ClusterRole", "ollama-gitops-reconciler"), ("ClusterRoleBinding", "ollama-gitops-reconciler"),
        ("Role", "ollama-gitops-reconciler"), ("RoleBinding", "ollama-gitops-reconciler"),
        ("ClusterRole", "ollama-gitops-api"), ("ClusterRoleBinding", "ollama-gitops-api"),
        ("Role", "ollama-gitops-api"), ("RoleBinding", "ollama-gitops-api"),
        ("Deployment", "ollama-gitops-reconciler"), ("PodDisruptionBudget", "ollama-gitops-reconciler"),
        ("Deployment", "ollama-gitops-api"), ("PodDisruptionBudget", "ollama-gitops-api"),
        ("Service", "ollama-gitops-api"),
    ])
    for obj in base:
        namespaced = obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
        assert obj["metadata"].get("namespace") == (NAMESPACE if namespaced else None), obj["metadata"]["name"]


def test_no_secret_is_rendered_or_kept_in_the_repository(render) -> None:
    for directory in kustomizations():
        assert not find(render(directory), "Secret"), directory
    for file in list(MANIFESTS.rglob("*.yaml")) + list(OVERLAY_EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), file
            generators = (doc or {}).get("secretGenerator")
            assert not generators, f"{file}: Secrets are created by the user, never generated from the repository"


def test_every_object_validates_against_the_kubernetes_schemas(render) -> None:
    checked = set()
    for directory in kustomizations():
        for obj in render(directory):
            key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"], repr(obj))
            if key in checked:
                continue
            checked.add(key)
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{directory}: {obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
    kinds = {k[0] for k in checked}
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "ClusterRole", "PodDisruptionBudget"} <= kinds


def test_labels_are_consistent_and_leave_selectors_and_argocd_tracking_alone(render) -> None:
    for directory in kustomizations():
        for obj in render(directory):
            labels = obj["metadata"].get("labels") or {}
            assert labels.get("app.kubernetes.io/name") == "ollama-gitops", (directory, obj["metadata"]["name"])
            # Argo CD's tracking label, and the label that marks the OllamaModels ollama-gitops owns.
            assert "app.kubernetes.io/instance" not in labels
            assert "app.kubernetes.io/managed-by" not in labels
            if obj["kind"] in ("Deployment", "StatefulSet"):
                component = labels["app.kubernetes.io/component"]
                assert component in ("reconciler", "api", "ollama")
                selector = obj["spec"]["selector"]["matchLabels"]
                assert selector == {"app.kubernetes.io/name": "ollama-gitops", "app.kubernetes.io/component": component}
                assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()


# -- the custom resource ---------------------------------------------------------------------------

def crd_schema() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_schema_is_structural() -> None:
    """The API server refuses a non-structural schema: every node says its type."""
    def walk(node: dict, path: str) -> None:
        assert "type" in node, f"{path} has no type"
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
    schema = crd_schema()
    walk(schema, "openAPIV3Schema")
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_the_resources_made_from_the_example_models_validate_against_the_crd() -> None:
    """What ollama-gitops applies for examples/models-repo, with the status it writes, fits the CRD."""
    from ollama_gitops.reconciler.cluster.resources import desired_body
    from ollama_gitops.reconciler.cluster.status import status_body
    from ollama_gitops.reconciler.models.desired import load_directory
    from ollama_gitops.reconciler.state import READY, ModelStatus, utc_rfc3339

    validator = jsonschema.Draft202012Validator(crd_schema(), format_checker=jsonschema.FormatChecker())
    desired = load_directory(ROOT / "examples" / "models-repo")
    assert len(desired.models) >= 2 and not desired.problems
    status = status_body(ModelStatus(READY, size=1815319791, digest="a" * 64, last_pull_time=utc_rfc3339(1.8e9)))
    for model in desired.models.values():
        body = desired_body(model, "0" * 40)
        body["status"] = {k: v for k, v in status.items() if v is not None}
        validator.validate(body)
    # and the schema does refuse what the seed's CRD refuses
    body = desired_body(next(iter(desired.models.values())), None)
    assert not validator.is_valid({**body, "status": {"state": "Bogus"}})
    assert not validator.is_valid({**body, "status": {"digest": "not-a-digest"}})
    assert not validator.is_valid({**body, "spec": {"name": "llama3.2"}})


# -- pods ------------------------------------------------------------------------------------------

def test_every_pod_is_restricted_with_resources_and_probes(render) -> None:
    seen = set()
    for directory in kustomizations():
        for workload, spec in pod_specs(render(directory)):
            name = workload["metadata"]["name"]
            seen.add(name)
            pod = spec.get("securityContext") or {}
            assert pod.get("runAsNonRoot") is True and pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
            assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, name
            assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
            assert not any("hostPath" in v for v in spec.get("volumes") or []), name
            for container in containers(spec):
                where = f"{name}/{container['name']}"
                sc = container.get("securityContext") or {}
                assert sc.get("runAsNonRoot") is True, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities") == {"drop": ["ALL"]}, where
                assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
                assert not sc.get("privileged"), where
                resources = container.get("resources") or {}
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(kind) or {}), f"{where}: {kind}"
                assert container.get("livenessProbe") and container.get("readinessProbe"), where
                # read-only root: whatever is written goes to a volume
                assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts") or []}, where
                assert not container["image"].endswith(":latest") and ":" in container["image"], where
    assert seen == {"ollama-gitops-reconciler", "ollama-gitops-api", "ollama"}


def test_the_namespace_enforces_the_restricted_pod_security_standard(base) -> None:
    labels = one(base, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_two_replicas_each_with_a_disruption_budget(render) -> None:
    for directory in kustomizations():
        objects = render(directory)
        budgets = find(objects, "PodDisruptionBudget")
        for deployment in find(objects, "Deployment"):
            assert deployment["spec"]["replicas"] == 2, deployment["metadata"]["name"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            assert len(covering) == 1, deployment["metadata"]["name"]
            assert covering[0]["spec"].get("maxUnavailable") == 1
        for budget in budgets:  # each budget covers exactly one workload
            selector = budget["spec"]["selector"]["matchLabels"].items()
            assert sum(selector <= w["spec"]["template"]["metadata"]["labels"].items()
                       for w, _ in pod_specs(objects)) == 1


def test_the_ollama_gitops_containers_run_the_image_the_dockerfile_builds(render) -> None:
    version = package_version()
    for directory in kustomizations():
        for workload, spec in pod_specs(render(directory)):
            for container in containers(spec):
                if workload["metadata"]["name"].startswith("ollama-gitops-"):
                    # An overlay may take it from another registry, but not another version.
                    image = container["image"]
                    assert image == f"{IMAGE}:{version}" if directory == MANIFESTS else image.endswith(f":{version}")
                    assert "command" not in container, "the image's ENTRYPOINT is the ollama-gitops command"
                else:
                    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", container["image"]), container["image"]


# -- the product, configured as the manifests configure it ------------------------------------------

@dataclass
class Parsed:
    command: str  # the subcommand the container runs
    args: Any  # argparse's Namespace, as the command's own parser built it from the environment
    env: dict[str, str]  # the container's environment (ConfigMap, env; Secret keys left out)


def container_env(base: list[dict], container: dict, namespace: str) -> dict[str, str]:
    """The container's environment: its ConfigMaps and values, the downward API's namespace; the
    keys of Secrets are left out (they are all optional, as a fresh install has none)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(one(base, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        else:
            assert item["valueFrom"]["secretKeyRef"].get("optional") is True, item["name"]
    return env


def parse(argv: list[str], env: dict[str, str], monkeypatch) -> Any:
    """What the real `ollama-gitops` parser makes of `argv` in the environment `env` (it reads the
    environment when it is built, so it is built anew each time)."""
    from ollama_gitops.api import cli as api_cli

    for name in list(os.environ):
        if name.startswith("OLLAMA_GITOPS_") or name in ("POD_NAMESPACE", "OLLAMA_HOST"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser, _ = api_cli.build_parser(argv[0] if argv else None)  # as `main` builds it for `argv`
    return parser.parse_args(argv)


# Read by name outside the parser: Settings.from_args, and api.cli._api_key.
READ_OUTSIDE_THE_PARSER = {"OLLAMA_GITOPS_GIT_TOKEN", "OLLAMA_GITOPS_API_KEY"}


def reads(argv: list[str], env: dict[str, str], name: str, monkeypatch) -> bool:
    """Does `ollama-gitops ARGV` read the variable `name`: does another value change what it parses?"""
    if name in READ_OUTSIDE_THE_PARSER:
        return True
    value = env[name]
    other = {"on": "auto", "auto": "on", "off": "on"}.get(value) or (
        str(int(float(value)) + 1) if re.fullmatch(r"\d+(\.\d+)?", value) else value + "x")
    return vars(parse(argv, env, monkeypatch)) != vars(parse(argv, {**env, name: other}, monkeypatch))


def parse_container(base: list[dict], container: dict, namespace: str, monkeypatch) -> Parsed:
    """Parse the container's args with the real parser, in the environment the container gets;
    every OLLAMA_GITOPS_* variable the container sets itself must be one its command reads."""
    env = container_env(base, container, namespace)
    for item in container.get("env") or []:
        if item["name"] in env and item["name"].startswith("OLLAMA_GITOPS_"):
            assert reads(container["args"], env, item["name"], monkeypatch), \
                f"{container['name']}: `ollama-gitops {container['args'][0]}` ignores {item['name']}"
    return Parsed(container["args"][0], parse(container["args"], env, monkeypatch), env)


def mount_of(spec: dict, container: dict, path: str) -> tuple[dict, dict]:
    """The volume mount that holds `path`, and its volume."""
    mounts = [m for m in container.get("volumeMounts") or [] if path == m["mountPath"] or
              path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_every_configmap_setting_is_one_ollama_gitops_reads(base, monkeypatch) -> None:
    """A misspelt variable would be ignored without a word: each is read by a command that gets it."""
    users = [d["spec"]["template"]["spec"]["containers"][0] for d in find(base, "Deployment")]
    name = settings_configmap(base)["metadata"]["name"]
    assert all(c["envFrom"] == [{"configMapRef": {"name": name}}] for c in users)
    for key in settings_configmap(base)["data"]:
        assert key.startswith("OLLAMA_GITOPS_")
        assert any(reads(c["args"], container_env(base, c, NAMESPACE), key, monkeypatch) for c in users), \
            f"{key} is read by neither `reconcile` nor `api`"


def test_the_reconciler_runs_in_kubernetes_mode_with_leader_election_in_its_namespace(base, monkeypatch) -> None:
    from ollama_gitops.reconciler.settings import Settings

    deployment = one(base, "Deployment", "ollama-gitops-reconciler")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    parsed = parse_container(base, container, deployment["metadata"]["namespace"], monkeypatch)
    assert parsed.command == "reconcile" and not parsed.args.once
    settings = Settings.from_args(parsed.args)
    assert settings.kubernetes == "on" and settings.repo  # a repository, not a private embedded one per pod
    # The Lease lives where the Role that grants it is.
    assert settings.leader_election_namespace == one(base, "Role", "ollama-gitops-reconciler")["metadata"]["namespace"]
    mount, volume = mount_of(spec, container, str(settings.state_dir))
    assert "emptyDir" in volume and not mount.get("readOnly")
    for path in (settings.credentials.ssh_key_file, settings.credentials.known_hosts_file):
        mount, volume = mount_of(spec, container, str(path))
        assert volume["secret"] == {"secretName": "ollama-gitops-git", "optional": True, "defaultMode": 0o440}
        assert mount.get("readOnly") is True
    assert spec["serviceAccountName"] == "ollama-gitops-reconciler"


def test_the_api_listens_on_the_service_port_with_a_required_key(base, monkeypatch) -> None:
    from ollama_gitops.api.app import OPEN_PATHS
    from ollama_gitops.reconciler.settings import Settings

    deployment = one(base, "Deployment", "ollama-gitops-api")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    parsed = parse_container(base, container, NAMESPACE, monkeypatch)
    assert parsed.command == "api"
    settings = Settings.from_args(parsed.args)
    assert settings.kubernetes == "on"  # status from the OllamaModels, not from a state directory
    host, port = parsed.args.listen.rsplit(":", 1)
    (container_port,) = container["ports"]
    assert host == "0.0.0.0" and int(port) == container_port["containerPort"] == 8082
    service = one(base, "Service", "ollama-gitops-api")
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 8082 and service_port["targetPort"] == container_port["name"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The key: a file from the Secret ollama-gitops-api, which must exist (no silent unauthenticated API).
    mount, volume = mount_of(spec, container, parsed.args.api_key_file)
    assert volume["secret"]["secretName"] == "ollama-gitops-api" and not volume["secret"].get("optional")
    assert parsed.args.api_key_file.endswith("/api-key") and mount.get("readOnly") is True
    assert not parsed.args.insecure_no_auth
    # The probes ask what the API answers without a key.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN_PATHS and container[probe]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    mount, volume = mount_of(spec, container, str(settings.state_dir))
    assert "emptyDir" in volume and not mount.get("readOnly")
    assert spec["serviceAccountName"] == "ollama-gitops-api"


# What the Ollama component adds beside its servers: the access its --ollama-service reads with.
DISCOVERY_RBAC = {("Role", "ollama-gitops-reconciler-discovery"), ("RoleBinding", "ollama-gitops-reconciler-discovery"),
                  ("ClusterRole", "ollama-gitops-reconciler-nodes"), ("ClusterRoleBinding", "ollama-gitops-reconciler-nodes")}


def test_the_ollama_component_adds_servers_and_points_ollama_gitops_at_their_service(base, with_ollama) -> None:
    from urllib.parse import urlsplit

    from ollama_gitops.reconciler.cluster.discovery import ServiceRef

    data = settings_configmap(with_ollama)["data"]
    url = urlsplit(data["OLLAMA_GITOPS_OLLAMA_URL"])
    assert url.geturl() == "http://ollama.ollama-gitops.svc:11434"
    service_name, namespace, _ = url.hostname.split(".")
    # The reconciler finds the servers from the same Service's endpoints: each ready pod is one.
    assert ServiceRef.parse(data["OLLAMA_GITOPS_OLLAMA_SERVICE"]) == ServiceRef(namespace, service_name)
    service = one(with_ollama, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace == NAMESPACE
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    # the port discovery takes (named http), where the container listens
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", url.port, "http")]
    statefulset = one(with_ollama, "StatefulSet", "ollama")
    assert statefulset["metadata"]["namespace"] == NAMESPACE and statefulset["spec"]["serviceName"] == service_name
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    # One volume per replica: a claim template, not a shared claim, so it scales.
    assert not any("persistentVolumeClaim" in v for v in statefulset["spec"]["template"]["spec"].get("volumes") or [])
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {(o["kind"], o["metadata"]["name"]) for o in with_ollama} - {(o["kind"], o["metadata"]["name"]) for o in base} \
        == {("StatefulSet", "ollama"), ("Service", "ollama"), ("ConfigMap", settings_configmap(with_ollama)["metadata"]["name"])} \
        | DISCOVERY_RBAC
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["OLLAMA_MODELS"].startswith(mounts[claim["metadata"]["name"]] + "/")
    assert env["HOME"] == mounts[claim["metadata"]["name"]]  # Ollama writes its key pair under $HOME
    assert statefulset["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # The base alone keeps its own setting, and the component changes nothing else in it: the same
    # objects, but for the settings' name (its hash), which rolls the Deployments to the new setting.
    before, after = settings_configmap(base), settings_configmap(with_ollama)
    assert before["data"]["OLLAMA_GITOPS_OLLAMA_URL"] != url.geturl() and "OLLAMA_GITOPS_OLLAMA_SERVICE" not in before["data"]
    assert {**before["data"], "OLLAMA_GITOPS_OLLAMA_URL": url.geturl(),
            "OLLAMA_GITOPS_OLLAMA_SERVICE": data["OLLAMA_GITOPS_OLLAMA_SERVICE"]} == after["data"]

    def rest(objects: list[dict], configmap: dict) -> list[str]:
        name = configmap["metadata"]["name"]
        return sorted(repr(o).replace(name, "SETTINGS") for o in objects if o is not configmap and
                      (o["kind"], o["metadata"]["name"]) not in {("StatefulSet", "ollama"), ("Service", "ollama")}
                      | DISCOVERY_RBAC)

    assert rest(with_ollama, after) == rest(base, before)


# -- Argo CD ---------------------------------------------------------------------------------------

def test_the_argocd_application_deploys_the_base_and_is_not_part_of_it(render, base) -> None:
    app = yaml.safe_load(APPLICATION.read_text())
    assert (app["apiVersion"], app["kind"], app["metadata"]["namespace"]) == ("argoproj.io/v1alpha1", "Application", "argocd")
    source, destination, sync = app["spec"]["source"], app["spec"]["destination"], app["spec"]["syncPolicy"]
    assert (ROOT / source["path"] / "kustomization.yaml").is_file() and source["path"] == "manifests"
    assert source["repoURL"].startswith("https://") and source["repoURL"].endswith("/ollama-gitops.git")
    assert destination == {"server": "https://kubernetes.default.svc", "namespace": NAMESPACE}
    assert sync["automated"] == {"prune": True, "selfHeal": True}
    assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(sync["syncOptions"])
    for directory in kustomizations():
        objects = render(directory)
        assert not find(objects, "Application") and not find(objects, "OllamaModel"), directory
    # Argo CD neither prunes nor deletes the CRD (that would delete every OllamaModel).
    crd = one(base, "CustomResourceDefinition", "ollamamodels.ollama.smithforge.dev")
    options = crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].split(",")
    assert {"Prune=false", "Delete=false"} <= set(options)


# -- RBAC: exactly what the product uses ------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    """One authorization check the API server makes for a request."""

    group: str
    resource: str  # with the subresource: "ollamamodels/status"
    verb: str
    namespace: str | None
    name: str | None


def accesses(record: RequestRecord) -> list[Access]:
    """The checks a request needs, as kube-apiserver makes them. A server-side apply of a resource
    that does not exist yet creates it, and is then authorized as `create` as well as `patch`: the
    product creates its OllamaModels that way, never by POST."""
    segments = [s for s in record.path.split("/") if s]
    if segments[0] == "api":
        group, rest = "", segments[2:]
    else:
        group, rest = segments[1], segments[3:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else None
    if name is None and record.verb in ("list", "watch"):
        # kube-apiserver authorizes a list or watch narrowed to one name as a request for that name.
        selector = record.query.get("fieldSelector") or ""
        name = selector.removeprefix("metadata.name=") if re.fullmatch(r"metadata\.name=[^,]+", selector) else None
    verbs = [record.verb]
    if record.verb == "patch" and "apply-patch" in (record.content_type or "") and len(rest) == 2:
        verbs.append("create")
    return [Access(group, resource, verb, namespace, name) for verb in verbs]


@dataclass(frozen=True)
class Grant:
    rule: dict
    namespace: str | None  # None: every namespace (a ClusterRoleBinding)

    def allows(self, access: Access) -> bool:
        rule = self.rule
        return ((self.namespace is None or access.namespace == self.namespace)
                and access.group in rule["apiGroups"] and access.resource in rule["resources"]
                and access.verb in rule["verbs"]
                and (not rule.get("resourceNames") or access.name in rule["resourceNames"]))

    def triples(self) -> set[tuple[str, str, str]]:
        return {(g, r, v) for g in self.rule["apiGroups"] for r in self.rule["resources"] for v in self.rule["verbs"]}


def grants(objects: list[dict], account: str) -> list[Grant]:
    """The rules bound to the service account `account` (in NAMESPACE), with where they apply."""
    found = []
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        namespace = binding["metadata"].get("namespace")
        role_kind = binding["roleRef"]["kind"]
        (role,) = [r for r in find(objects, role_kind, binding["roleRef"]["name"])
                   if role_kind == "ClusterRole" or r["metadata"]["namespace"] == namespace]
        for rule in role["rules"]:
            assert "*" not in str(rule), f"{role['metadata']['name']}: no wildcards"
            found.append(Grant(rule, namespace if binding["kind"] == "RoleBinding" else None))
    return found


def check_exact(objects: list[dict], account: str, log: list[RequestRecord]) -> set[tuple[str, str, str]]:
    """Every request in `log` is allowed to `account`, and `account` is granted nothing else."""
    bound = grants(objects, account)
    used: set[tuple[str, str, str]] = set()
    for record in log:
        assert record.verb not in ("discovery", "unknown"), record
        for access in accesses(record):
            assert any(g.allows(access) for g in bound), f"{account} may not {access}"
            used.add((access.group, access.resource, access.verb))
    granted = set().union(*(g.triples() for g in bound))
    assert granted == used, f"granted but never used: {sorted(granted - used)}"
    return used


def health_probes(deployment: dict) -> dict[str, str]:
    """The reconciler's probes (probe name to path), checked against where it serves them."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert env["OLLAMA_GITOPS_HEALTH_LISTEN"] == f"0.0.0.0:{port}"
    probes = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"
        probes[probe] = container[probe]["httpGet"]["path"]
    return probes


def test_resource_names_in_the_rules_are_the_names_the_code_uses(base) -> None:
    """kustomize renames a Role's resourceNames that equal a generated ConfigMap's name, whatever
    the rule's resources: the Lease and the sync ConfigMap keep the names the code gives them."""
    import inspect

    from ollama_gitops.reconciler.cluster.election import LeaderElector
    from ollama_gitops.reconciler.cluster.fleetmap import CONFIG_MAP

    assert CONFIG_MAP == FLEET_CONFIGMAP
    lease = inspect.signature(LeaderElector).parameters["name"].default
    names = {(resource, name) for role in find(base, "Role") for rule in role["rules"]
             for resource in rule["resources"] for name in rule.get("resourceNames") or []}
    assert names == {("leases", lease), ("configmaps", SYNC_CONFIGMAP), ("configmaps", FLEET_CONFIGMAP)}


def discovered(kube: KubeStandin, ollama_url: str) -> None:
    """The stand-in Ollama as the one ready pod of the Service ollama (what components/ollama makes)."""
    from urllib.parse import urlsplit

    address = urlsplit(ollama_url)
    with kube.api_client() as api:
        core, slices = kubernetes.client.CoreV1Api(api), kubernetes.client.DiscoveryV1Api(api)
        core.create_node({"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}}})
        core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "ollama-0", "labels": {"app": "ollama"}},
                                               "spec": {"nodeName": "node-1", "containers": [{"name": "o", "image": "o"}]}})
        slices.create_namespaced_endpoint_slice(NAMESPACE, {
            "metadata": {"name": "ollama-x1", "labels": {"kubernetes.io/service-name": "ollama"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": address.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address.hostname], "conditions": {"ready": True}, "nodeName": "node-1",
                           "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": "ollama-0"}}]})
    kube.clear_request_log()  # the cluster's own doing, not the product's


DISCOVERY_PATHS = re.compile(r"/(endpointslices|pods|nodes)$")


def test_rbac_is_exactly_what_the_reconciler_and_the_api_use(base, with_ollama, tmp_path: Path, ollama,
                                                             monkeypatch) -> None:
    """`reconcile` and `api` in Kubernetes mode against the stand-in API server: leader election,
    resources created, their status written, Events, a prune with its finalizer, the servers
    discovered from a Service (`--ollama-service`, as components/ollama sets it); then the API
    reading status. Their request logs against the rendered RBAC, both ways: the base's without the
    discovery, the component's with it."""
    from ollama_gitops.api import runtime
    from ollama_gitops.reconciler import service as reconciler_service
    from ollama_gitops.reconciler.cluster.connect import SYNC_TIMEOUT
    from ollama_gitops.reconciler.health import Health, HealthServer
    from ollama_gitops.reconciler.cluster.resources import FINALIZER

    assert SYNC_TIMEOUT <= 60  # the reconciler's startupProbe allows 90 s for the first list
    deployment = one(base, "Deployment", "ollama-gitops-reconciler")
    configmap = settings_configmap(base)["data"]
    probes = health_probes(deployment)
    assert probes == {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert configmap["OLLAMA_GITOPS_STATE_DIR"] == "/var/lib/ollama-gitops"

    with KubeStandin(schema=crd_schema()) as kube:
        for namespace in (NAMESPACE, "team-a"):
            kube.add_namespace(namespace)
        remote = init_bare(tmp_path / "remote.git")
        work = WorkRepo(tmp_path / "work", remote=remote)
        pruned = work.model("default", "llama3.2", "1b")
        work.model("team-a", "gemma3", "1b")
        work.commit("two models")
        work.push()
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        common = ("--kubernetes", "on", "--leader-election-namespace", NAMESPACE)

        # The reconciler, as `ollama-gitops reconcile` runs it (service.build, then start).
        state_dir = tmp_path / "state"
        discovered(kube, ollama.url)
        service_setting = settings_configmap(with_ollama)["data"]["OLLAMA_GITOPS_OLLAMA_SERVICE"]
        settings = settings_for(state_dir, str(remote), ollama.url, *common, "--lease-duration", "2", "--interval", "1",
                                "--ollama-service", service_setting)
        with kube.api_client() as api:  # as an earlier leader left it: read, then patched
            kubernetes.client.CoreV1Api(api).create_namespaced_config_map(
                NAMESPACE, {"metadata": {"name": FLEET_CONFIGMAP}, "data": {"servers.json": "[]"}})
        kube.clear_request_log()
        service = reconciler_service.build(settings)
        health = HealthServer(Health(lambda: service.scheduler, settings.interval, lambda: service.reconciler.leading()),
                              "127.0.0.1", 0).start()
        try:
            service.start()
            assert service.discovery is not None and service.discovery.refresh().inventory.names == ("ollama-0",)

            def states() -> dict[str, str]:
                return {o["metadata"]["name"]: (o.get("status") or {}).get("state") for o in kube.objects()}

            eventually(lambda: states() == {"llama3.2-1b": "Ready", "gemma3-1b": "Ready"}, timeout=90,
                       what="both models Ready")
            eventually(lambda: kube.count("update", path_regex=r"/leases/ollama-gitops$") >= 1, timeout=90,
                       what="a renewal of the Lease")
            work.remove(pruned)
            work.commit("prune llama")
            work.push()
            service.request_cycle()
            eventually(lambda: list(states()) == ["gemma3-1b"], timeout=90, what="llama3.2-1b pruned")
            assert "llama3.2:1b" not in ollama.installed()
            assert kube.objects()[0]["metadata"]["finalizers"] == [FINALIZER]
            for path in set(probes.values()):  # what the kubelet would ask, at the paths the manifest gives
                assert httpx.get(f"http://127.0.0.1:{health.port}{path}").status_code == 200, path
        finally:
            health.stop()
            service.stop()
        reconciler_log = kube.request_log

        # The API alone, as `ollama-gitops api` runs it, answering a read and a webhook.
        kube.clear_request_log()
        api_settings = settings_for(tmp_path / "api-state", str(remote), ollama.url, *common)
        options = runtime.ApiOptions("127.0.0.1:0", "a-key", "team-a", "API <api@example.com>", False,
                                     webhook_secret=SECRET)
        running = runtime.start(api_settings, options, with_reconciler=False, schedules=False)
        try:
            running.repository.refresh()
            answer = httpx.get(f"{running.server.url}/api/v1/models/gemma3-1b", headers={"X-API-Key": "a-key"})
            assert answer.status_code == 200 and answer.json()["state"] == "Ready"
            servers = lambda: httpx.get(f"{running.server.url}/api/v1/servers",  # noqa: E731
                                        headers={"X-API-Key": "a-key"}).json()["items"]
            eventually(lambda: [s["name"] for s in servers()] == ["ollama-0"], timeout=30,
                       what="the servers the reconciler published")
            sent = github(str(remote))
            answer = httpx.post(f"{running.server.url}/api/v1/webhook", content=sent.body, headers=sent.headers)
            assert answer.status_code == 202, answer.text
        finally:
            running.stop()
        api_log = kube.request_log

    discovery_log = [r for r in reconciler_log if DISCOVERY_PATHS.search(r.path)]
    assert check_exact(with_ollama, "ollama-gitops-reconciler", reconciler_log) - \
        check_exact(base, "ollama-gitops-reconciler", [r for r in reconciler_log if r not in discovery_log]) == {
        ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "pods", "list"), ("", "pods", "watch"), ("", "nodes", "list"), ("", "nodes", "watch")}
    # In the Service's namespace only, but for the nodes (cluster-scoped).
    assert {(r.path.rsplit("/", 1)[-1], accesses(r)[0].namespace) for r in discovery_log} == {
        ("endpointslices", NAMESPACE), ("pods", NAMESPACE), ("nodes", None)}
    used = check_exact(base, "ollama-gitops-reconciler", [r for r in reconciler_log if r not in discovery_log])
    assert used == {
        ("ollama.smithforge.dev", "ollamamodels", "list"), ("ollama.smithforge.dev", "ollamamodels", "watch"),
        ("ollama.smithforge.dev", "ollamamodels", "create"), ("ollama.smithforge.dev", "ollamamodels", "patch"),
        ("ollama.smithforge.dev", "ollamamodels", "delete"), ("ollama.smithforge.dev", "ollamamodels/status", "patch"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "configmaps", "create"), ("", "configmaps", "list"), ("", "configmaps", "watch"),
        ("", "configmaps", "get"), ("", "configmaps", "patch"),
    }
    assert check_exact(base, "ollama-gitops-api", api_log) == {
        ("ollama.smithforge.dev", "ollamamodels", "list"), ("ollama.smithforge.dev", "ollamamodels", "watch"),
        ("", "configmaps", "patch"), ("", "configmaps", "get")}
