"""What `pip install .` ships: the schema and the example models repo travel inside the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_schema_and_example_repo(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("ollama_gitops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped_schema = json.loads(archive.read("ollama_gitops/reconciler/data/schemas/model.schema.json"))
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert shipped_schema == json.loads((ROOT / "schemas/model.schema.json").read_text())
    for path in (
        "ollama_gitops/reconciler/data/models-repo/README.md",
        "ollama_gitops/reconciler/data/models-repo/models/default/llama3.2-1b.yaml",
        "ollama_gitops/reconciler/data/models-repo/models/default/gemma3-1b.yaml",
        "ollama_gitops/reconciler/data/models-repo/.github/workflows/validate.yaml",
        "ollama_gitops/reconciler/data/models-repo/schemas/model.schema.json",
        # The dashboard's page and its files: served from the package, nothing from elsewhere.
        "ollama_gitops/api/static/index.html",
        "ollama_gitops/api/static/app.js",
        "ollama_gitops/api/static/app.css",
    ):
        assert path in names, path
    assert "ollama-gitops = ollama_gitops.api.cli:main" in entry_points
    # One import package named for the project: no `api` or `reconciler` to collide with another
    # distribution's, and no tests.
    top_level = {n.split("/")[0] for n in names if not n.startswith("ollama_gitops-")}
    assert top_level == {"ollama_gitops"}, top_level


def test_every_source_package_is_installed() -> None:
    """setup.cfg lists the packages by hand (they map onto the source folders): none may be missing."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {"ollama_gitops"}
    for folder in ("reconciler", "api"):
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join(("ollama_gitops", *init.parent.relative_to(ROOT).parts)))
    assert listed == found


def test_schema_is_2020_12_with_id_descriptions_and_examples() -> None:
    schema = json.loads((ROOT / "schemas/model.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["examples"] and schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"
    assert {"labels", "annotations", "suspend", "prune", "refreshRequestedAt"} <= set(schema["properties"])


def test_example_model_files_carry_the_editor_modeline() -> None:
    for file in (ROOT / "examples/models-repo/models").rglob("*.yaml"):
        assert file.read_text().startswith("# yaml-language-server: $schema=../../schemas/model.schema.json"), file
