"""The Dockerfile, read and checked offline (no Docker engine runs here or in CI): a multi-stage build
from a pinned slim Python, the package built from exactly the context .dockerignore lets through,
and a final stage that runs the console script as the non-root user the manifests expect."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENTS = [ROOT / "manifests" / "reconciler" / "deployment.yaml", ROOT / "manifests" / "api" / "deployment.yaml"]


# -- reading the Dockerfile ------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case
    flags: tuple[str, ...]  # --from=builder
    value: tuple[str, ...]  # the words; the whole command for a shell-form RUN, CMD or ENTRYPOINT
    json: bool  # exec form (a JSON array)


def instructions(text: str) -> list[Instruction]:
    """The instructions of `text`, in the Dockerfile syntax this repository uses: comments (parser
    directives included), backslash continuations, exec and shell forms, KEY=VALUE pairs."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    found = []
    for line in logical:
        cmd, _, rest = line.partition(" ")
        words = rest.split()
        flags = tuple(w for w in words if w.startswith("--")) if cmd.upper() in ("COPY", "ADD", "FROM") else ()
        rest = " ".join(w for w in words if w not in flags) if flags else rest.strip()
        if rest.startswith("["):
            found.append(Instruction(cmd.upper(), flags, tuple(json.loads(rest)), True))
        elif cmd.upper() in ("RUN", "CMD", "ENTRYPOINT"):
            found.append(Instruction(cmd.upper(), flags, (" ".join(rest.split()),), False))
        elif cmd.upper() in ("ENV", "LABEL", "ARG"):
            pairs = [w.partition("=") for w in shlex.split(rest)]
            found.append(Instruction(cmd.upper(), flags, tuple(x for k, _, v in pairs for x in (k, v)), False))
        else:
            found.append(Instruction(cmd.upper(), flags, tuple(rest.split()), False))
    return found


@dataclass
class Stage:
    base: str
    name: str | None
    body: list[Instruction]

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.body if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction:
        return self.all(cmd)[-1]

    def env(self) -> dict[str, str]:
        pairs = [i.value for i in self.all("ENV")]
        return {p[k]: p[k + 1] for p in pairs for k in range(0, len(p), 2)}

    def runs(self) -> str:
        return "\n".join(i.value[0] for i in self.all("RUN"))


def read() -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs (name to default) and the stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction.cmd == "FROM":
            value = instruction.value
            stages.append(Stage(value[0], value[2] if len(value) == 3 and value[1].upper() == "AS" else None, []))
        elif not stages:
            assert instruction.cmd == "ARG", "only ARG comes before the first FROM"
            args[instruction.value[0]] = instruction.value[1]
        else:
            stages[-1].body.append(instruction)
    return args, stages


def expand(reference: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)


def console_script() -> tuple[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    (line,) = [x for x in config["options.entry_points"]["console_scripts"].splitlines() if x.strip()]
    name, _, target = (x.strip() for x in line.partition("="))
    return name, target


# -- the Dockerfile --------------------------------------------------------------------------------

def test_the_official_parser_reads_it_as_this_test_does() -> None:
    """BuildKit's own parser (the `dockerfile` package, where it has a wheel) accepts the file and
    sees the same instructions as the reader the other tests use."""
    dockerfile = pytest.importorskip("dockerfile")
    official = dockerfile.parse_file(str(DOCKERFILE))
    ours = instructions(DOCKERFILE.read_text())
    assert [c.cmd.upper() for c in official] == [i.cmd for i in ours]
    for theirs, mine in zip(official, ours):
        if mine.cmd in ("RUN", "CMD", "ENTRYPOINT") and not mine.json:
            assert " ".join(" ".join(theirs.value).split()) == mine.value[0]
        elif mine.cmd == "ARG":
            assert tuple(theirs.value) == ("=".join(mine.value),)
        elif mine.cmd in ("ENV", "LABEL"):  # the parser keeps the quotes that the value loses
            assert tuple(v.removeprefix('"').removesuffix('"') for v in theirs.value) == mine.value
        else:
            assert (tuple(theirs.flags), tuple(theirs.value), theirs.json) == (mine.flags, mine.value, mine.json)


def test_two_stages_from_one_pinned_slim_python() -> None:
    args, stages = read()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    assert [s.base for s in stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert stages[0].name == "builder" and stages[1].name is None
    # The image's Python is one the package supports.
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    minor = re.match(r"python:(3\.\d+)", args["PYTHON_IMAGE"]).group(1)
    assert f"Programming Language :: Python :: {minor}" in config["metadata"]["classifiers"]


def test_the_builder_installs_the_package_into_a_venv_the_final_stage_copies() -> None:
    _, (builder, final) = read()
    venv = re.search(r"python -m venv --without-pip (\S+)", builder.runs()).group(1)
    assert f"pip --python {venv}/bin/python install ." in builder.runs()
    (copy,) = final.all("COPY")
    assert copy.flags == ("--from=builder",) and copy.value == (venv, venv)
    assert final.env()["PATH"].startswith(f"{venv}/bin:")
    assert not re.search(r"\bpip\b|gcc|build-essential", final.runs()), "no building in the final stage"


def test_the_final_stage_runs_the_console_script_as_the_pods_user(monkeypatch) -> None:
    from ollama_gitops.api import cli as api_cli

    _, (_, final) = read()
    name, target = console_script()
    assert target == "ollama_gitops.api.cli:main"
    entrypoint, cmd, user = final.last("ENTRYPOINT"), final.last("CMD"), final.last("USER")
    assert entrypoint.json and entrypoint.value == (name,)
    assert cmd.json and cmd.value == ("serve",)
    uid, gid = user.value[0].split(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can check runAsNonRoot"
    assert re.search(rf"useradd .*--uid {uid} --gid {gid} ", final.runs()), "ssh needs a passwd entry for the uid"
    commands = {"serve"}
    for path in DEPLOYMENTS:
        pod = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
        commands |= {c["args"][0] for c in pod["containers"]}
    for command in sorted(commands):  # each a subcommand of the entrypoint
        with pytest.raises(SystemExit) as exit:
            api_cli.main([command, "--help"])
        assert exit.value.code == 0, command


def test_the_final_stage_has_git_and_ssh_and_a_read_only_friendly_environment() -> None:
    _, (_, final) = read()
    install = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", final.runs()).group(1).split()
    assert {"git", "openssh-client", "ca-certificates"} <= set(install)
    assert "rm -rf /var/lib/apt/lists/*" in final.runs()
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1" and env["HOME"]
    lines = (ROOT / "manifests" / "settings.env").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert env["OLLAMA_GITOPS_STATE_DIR"] == settings["OLLAMA_GITOPS_STATE_DIR"]
    assert final.last("EXPOSE").value == ("8082",)


# -- the build context -----------------------------------------------------------------------------

def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it: later lines win, `!` re-includes, a pattern that matches a
    directory matches everything in it, `**` spans directories."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((negate, re.compile(regex)))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    parts = path.split("/")
    result = False
    for negate, regex in patterns:
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def context_files(source: str, patterns) -> list[str]:
    """The files under `source` (a path in the repository) that the build context holds."""
    path = ROOT / source
    files = [path] if not path.is_dir() else [p for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()]
    return [str(p.relative_to(ROOT)) for p in files if not ignored(str(p.relative_to(ROOT)), patterns)]


def test_the_context_holds_what_the_copies_need_and_nothing_else() -> None:
    patterns = ignore_patterns()
    _, (builder, _) = read()
    for copy in builder.all("COPY"):
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), source
            assert not ignored(source.rstrip("/"), patterns), f"{source} is left out of the context"
            assert context_files(source, patterns), source
    for path in (".git/config", "tests/test_dockerfile.py", "manifests/kustomization.yaml", "benchmarks/README.md",
                 ".env", "id_ed25519", "reconciler/__pycache__/cli.cpython-311.pyc", "examples/kubernetes/x.yaml",
                 ".venv/bin/python", "build/lib/x.py"):
        assert ignored(path, patterns), path
    assert not ignored("examples/models-repo/models/default/gemma3-1b.yaml", patterns)


def test_the_context_as_the_builder_lays_it_out_builds_the_package(tmp_path: Path) -> None:
    """The builder's COPY lines, done on the files .dockerignore lets through, make a source tree
    whose wheel carries the schema, the example models repository and the console script."""
    patterns = ignore_patterns()
    _, (builder, _) = read()
    workdir = tmp_path / builder.last("WORKDIR").value[0].lstrip("/")
    for copy in builder.all("COPY"):
        *sources, destination = copy.value
        for source in sources:
            for file in context_files(source, patterns):
                relative = Path(file).relative_to(source.rstrip("/")) if (ROOT / source).is_dir() else Path(file).name
                target = workdir / destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / file).is_symlink():
                    target.symlink_to(Path((ROOT / file).readlink()))
                else:
                    shutil.copy2(ROOT / file, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheels"), str(workdir)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("ollama_gitops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"ollama_gitops/reconciler/data/schemas/model.schema.json",
            "ollama_gitops/reconciler/data/models-repo/models/default/gemma3-1b.yaml",
            "ollama_gitops/api/openapi.json", "ollama_gitops/api/cli.py",
            "ollama_gitops/reconciler/cluster/client.py"} <= names
    name, target = console_script()
    assert f"{name} = {target}" in entry_points
