"""`ollama-gitops validate` on checkouts: output lines, formats and exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_gitops.reconciler.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models-repo"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_example_models_repo_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(EXAMPLES)], capsys)
    assert (code, out) == (0, "")
    assert "2 model file(s), 2 valid, 0 problem(s)" in err


def test_problems_print_path_line_message_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models/default").mkdir(parents=True)
    (tmp_path / "models/default/llama3.2-1b.yaml").write_text("name: llama3.2\ntag: 1.10\n")
    (tmp_path / "models/default/gemma3-1b.yaml").write_text("name: gemma3\ntag: 1b\n")
    (tmp_path / "models/stray.yaml").write_text("name: a\ntag: b\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["validate"], capsys)
    assert code == 1
    assert out.splitlines() == [
        'models/default/llama3.2-1b.yaml:2: field \'tag\' must be a string, not a number: YAML reads 1.10 as 1.1; write tag: "1.10" to keep it as written',
        "models/stray.yaml: model files go in models/<namespace>/; move it to e.g. models/default/stray.yaml",
    ]


def test_typing_traps_say_what_yaml_read_and_an_empty_tag_is_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models/default").mkdir(parents=True)
    (tmp_path / "models/default/x-7.yaml").write_text("name: x\ntag: 7\n")
    (tmp_path / "models/default/y-true.yaml").write_text("name: y\ntag: true\n")
    (tmp_path / "models/default/z.yaml").write_text("name: z\ntag: ''\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["validate"], capsys)
    assert code == 1
    assert out.splitlines() == [
        'models/default/x-7.yaml:2: field \'tag\' must be a string, not a number: YAML reads 7 as a number; write tag: "7" to keep it as written',
        'models/default/y-true.yaml:2: field \'tag\' must be a string, not a boolean: YAML reads true as a boolean; write tag: "true" to keep it as written',
        "models/default/z.yaml:2: field 'tag' must not be empty",
    ]


def test_paths_are_relative_to_the_given_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "models/default").mkdir(parents=True)
    (repo / "models/default/x-1.yaml").write_text("name: x\ntag: '1'\nbogus: 1\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["validate", "repo"], capsys)
    assert code == 1 and out.startswith("repo/models/default/x-1.yaml:3: unknown field 'bogus'")


def test_github_format_prints_escaped_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models/default").mkdir(parents=True)
    (tmp_path / "models/default/x-1.yaml").write_text("name: x\ntag: '1'\nprune: 100%\n")
    (tmp_path / "models/default/y-1.yaml").write_text("name: y\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["validate", "--format", "github", "."], capsys)
    assert code == 1
    assert out.splitlines() == [
        "::error file=models/default/x-1.yaml,line=3,title=ollama-gitops::field 'prune' must be a boolean, not a string",
        "::error file=models/default/y-1.yaml,line=1,title=ollama-gitops::missing required field 'tag'",
    ]


def test_missing_models_directory_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", str(tmp_path)], capsys)
    assert code == 1 and "no models/ directory" in out


def test_installed_console_command_runs_validate(tmp_path: Path) -> None:
    """The `ollama-gitops` entry point that `pip install .` creates."""
    command = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent))
    assert command, "ollama-gitops is not installed in this environment; run pip install ."
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo, symlinks=False)
    ok = subprocess.run([command, "validate", str(repo)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (repo / "models/default/gemma3-1b.yaml").write_text("name: gemma3\n")
    bad = subprocess.run([command, "validate", str(repo)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing required field 'tag'" in bad.stdout


def test_deeply_nested_file_is_reported_without_a_traceback(tmp_path: Path) -> None:
    depth = 900  # every depth is checked through the loaders in test_desired.py
    command = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent))
    assert command
    (tmp_path / "models/default").mkdir(parents=True)
    (tmp_path / "models/default/x-1.yaml").write_text("name: x\ntag: '1'\nlabels: " + "[" * depth + "]" * depth + "\n")
    result = subprocess.run([command, "validate", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(f"{tmp_path}/models/default/x-1.yaml:3: mappings and lists are nested more than")


def test_submodules_and_symlinks_under_models_are_reported_with_their_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    (tmp_path / "models/default").mkdir(parents=True)
    (tmp_path / "models/default/llama3.2-1b.yaml").write_text("name: llama3.2\ntag: 1b\n")
    os.symlink("llama3.2-1b.yaml", tmp_path / "models/default/gemma3-1b.yaml")
    os.symlink("default", tmp_path / "models/team-a")
    (tmp_path / "models/vendor").mkdir()
    (tmp_path / "models/vendor/.git").write_text("gitdir: ../../.git/modules/vendor\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["validate"], capsys)
    assert code == 1
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["models/default/gemma3-1b.yaml", "models/team-a", "models/vendor"]
    assert "not symbolic links" in lines[0] and "not a symbolic link" in lines[1] and "not a Git submodule" in lines[2]
