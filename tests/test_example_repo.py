"""The example models repository works when copied, as its README says: a real schema file (no link
into this project), and its CI workflow's steps run as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/models-repo"
WORKFLOW = EXAMPLE / ".github/workflows/validate.yaml"
SOURCE_VARIABLE = "OLLAMA_GITOPS_PACKAGE"  # where the workflow's pip install takes ollama-gitops from


def test_the_example_ships_the_schema_as_a_file_identical_to_the_projects() -> None:
    copy = EXAMPLE / "schemas/model.schema.json"
    assert not copy.is_symlink() and not copy.parent.is_symlink(), "a link dangles once the example is copied"
    assert copy.read_bytes() == (ROOT / "schemas/model.schema.json").read_bytes()


def _run_steps(workflow: dict) -> list[str]:
    """The `run:` steps of the workflow's job, in order. Its `uses:` steps are GitHub's (checkout,
    setup-python): here a copy of the example is the checkout and a fresh virtual environment the Python."""
    (job,) = workflow["jobs"].values()
    return [step["run"] for step in job["steps"] if "run" in step]


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One step as GitHub runs a `run:` step (`bash -e {0}`, with pipefail)."""
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _fresh_python(where: Path) -> Path:
    """A virtual environment of its own (pip installs into it, never into the suite's), which sees the
    suite's installed dependencies, so that installing ollama-gitops needs no network."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, capture_output=True)
    python = where / "bin/python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # A path line in a .pth adds the directory without running the suite's own .pth files, so the
    # editable ollama_gitops of the suite is not imported from here: the one pip installs is.
    Path(site, "suite-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = where / "bin/pip"
    pip.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)
    return where / "bin"


def test_the_workflow_steps_run_as_written_in_a_copy_of_the_example(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert SOURCE_VARIABLE in workflow["env"], "the install source is the workflow's own variable"
    assert "==0.1.0" not in WORKFLOW.read_text(), "no package index has ollama-gitops"
    copy = tmp_path / "models-repo"
    shutil.copytree(EXAMPLE, copy)  # as a user copies it: links would be copied as links
    bin_dir = _fresh_python(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "OLLAMA_GITOPS_", "VIRTUAL_ENV", "PYTHON"))}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        SOURCE_VARIABLE: str(ROOT),  # this checkout, instead of the Git URL
        "PIP_NO_INDEX": "1",  # no network: every dependency is already there
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted spelling of --no-build-isolation
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "HOME": str(tmp_path / "home"),
    })
    install, validate = _run_steps(workflow)
    installed = _bash(install, copy, env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    checked = _bash(validate, copy, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (bin_dir / "ollama-gitops").exists()  # the step's command, installed by the step before

    (copy / "models/default/phi3-mini.yaml").write_text("name: phi3\ntag: mini\nbogus: 1\n")
    broken = _bash(validate, copy, env)
    assert broken.returncode == 1
    assert "::error file=models/default/phi3-mini.yaml,line=3,title=ollama-gitops::unknown field 'bogus'" in broken.stdout
