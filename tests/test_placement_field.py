"""A model file's `servers:` placement (issue 12): in the schema, parsed into the fields, checked by
`validate` in Kubernetes's words with the line, and applied by `DesiredState.placed_on`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_gitops.reconciler.cli import main
from ollama_gitops.reconciler.models import modelfile, schema
from ollama_gitops.reconciler.models.desired import load_directory
from ollama_gitops.reconciler.models.selector import IN, LabelSelector, Requirement

PLACED = b"""name: llama3.3
tag: 70b
servers:
  matchLabels: {zone: eu}
  matchExpressions:
    - {key: gpu, operator: In, values: [a100, h100]}
    - {key: maintenance, operator: DoesNotExist}
"""


def test_a_placement_is_parsed_into_the_fields_and_rendered_back() -> None:
    fields = modelfile.parse(PLACED)
    assert isinstance(fields, modelfile.ModelFields)
    assert fields.servers == LabelSelector.of({"zone": "eu"}, Requirement("gpu", IN, ("a100", "h100")),
                                              Requirement("maintenance", "DoesNotExist"))
    assert modelfile.parse(modelfile.render(fields)) == fields
    unplaced = modelfile.parse(b"name: llama3.2\ntag: 1b\n")
    assert isinstance(unplaced, modelfile.ModelFields) and unplaced.servers is None
    assert "servers" not in unplaced.to_document()


def test_the_fast_check_takes_a_valid_placement_without_jsonschema() -> None:
    quick = schema._quick_check()
    assert quick is not None, "the servers property must not switch the fast path off for every file"
    assert quick({"name": "a", "tag": "b", "servers": {"matchLabels": {"gpu": "a100"}}})
    assert not quick({"name": "a", "tag": "b", "servers": {"matchLabels": {"gpu": 1}}})


@pytest.mark.parametrize(("text", "line", "words"), [
    (b"name: a\ntag: b\nservers:\n  matchExpressions:\n    - {key: gpu, operator: in, values: [a100]}\n", 5,
     "'in' is not a valid label selector operator (one of In, NotIn, Exists, DoesNotExist); did you mean 'In'?"),
    (b"name: a\ntag: b\nservers:\n  matchLabels:\n    zone: 1\n", 5, 'quote it ("1")'),
    (b"name: a\ntag: b\nservers:\n  matchExpressions:\n    - {key: gpu, operator: In}\n", 5,
     "must have at least one value"),
    (b"name: a\ntag: b\nservers:\n  machLabels: {a: b}\n", 4, "did you mean 'matchLabels'?"),
])
def test_a_bad_placement_is_told_in_kubernetes_words_with_its_line(text: bytes, line: int, words: str) -> None:
    errors = modelfile.parse(text)
    assert isinstance(errors, tuple)
    assert len(errors) == 1, errors
    assert words in errors[0].message and "'servers." in errors[0].message, errors
    assert errors[0].line == line


def test_validate_reports_a_bad_placement_as_path_line_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "models" / "default"
    folder.mkdir(parents=True)
    (folder / "a-b.yaml").write_bytes(b"name: a\ntag: b\nservers:\n  matchExpressions:\n    - {key: gpu, operator: Exist}\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "models/default/a-b.yaml:5: 'servers.matchExpressions[0].operator': 'Exist' is not a valid" in out, out


def test_placed_on_keeps_the_models_a_server_is_selected_for(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "default"
    folder.mkdir(parents=True)
    (folder / "llama3.3-70b.yaml").write_bytes(PLACED)
    (folder / "gemma3-1b.yaml").write_bytes(b"name: gemma3\ntag: 1b\n")
    (folder / "qwen3-8b.yaml").write_bytes(b"name: qwen3\ntag: 8b\nservers: {matchLabels: {gpu: none}}\n")
    (folder / "broken-1.yaml").write_bytes(b"name: broken\ntag: [\n")
    desired = load_directory(tmp_path)
    names = lambda state: sorted(key.name for key in state.models)  # noqa: E731
    assert names(desired.placed_on({"zone": "eu", "gpu": "a100"})) == ["gemma3-1b", "llama3.3-70b"]
    assert names(desired.placed_on({"zone": "eu", "gpu": "a100", "maintenance": ""})) == ["gemma3-1b"]
    assert names(desired.placed_on({"gpu": "none"})) == ["gemma3-1b", "qwen3-8b"]
    assert names(desired.placed_on({})) == ["gemma3-1b"]
    # What cannot be read stays kept on every server: never taken for a removal.
    assert desired.placed_on({}).unreadable == desired.unreadable and desired.unreadable
