"""Parsing one model file: every bad-input rule of the format, with its line."""

from __future__ import annotations


import pytest

from ollama_gitops.reconciler.models import modelfile, naming
from ollama_gitops.reconciler.models.modelfile import FileError, ModelFields


def errors_of(text: str | bytes) -> tuple[FileError, ...]:
    result = modelfile.parse(text.encode() if isinstance(text, str) else text)
    assert not isinstance(result, ModelFields), f"expected errors, got {result}"
    return result


def test_minimal_file_gives_the_seed_spec_with_defaults() -> None:
    result = modelfile.parse(b"name: llama3.2\ntag: 1b\n")
    assert result == ModelFields(name="llama3.2", tag="1b")
    assert result.reference == "llama3.2:1b"
    assert (result.suspend, result.prune, result.labels, result.refresh_requested_at) == (False, True, {}, None)


def test_all_optional_fields_are_read() -> None:
    result = modelfile.parse(
        b"name: gemma3\ntag: '1b'\nlabels: {team: search}\nannotations: {owner: 'a@b.c'}\n"
        b"suspend: true\nprune: false\nrefreshRequestedAt: 2026-11-25T14:00:00Z\n"
    )
    assert result == ModelFields(
        name="gemma3", tag="1b", labels={"team": "search"}, annotations={"owner": "a@b.c"},
        suspend=True, prune=False, refresh_requested_at="2026-11-25T14:00:00Z",
    )


def test_unquoted_timestamp_is_kept_exactly_as_written() -> None:
    result = modelfile.parse(b"name: a\ntag: b\nrefreshRequestedAt: 2026-11-25T14:00:00.500+02:00\n")
    assert isinstance(result, ModelFields)
    assert result.refresh_requested_at == "2026-11-25T14:00:00.500+02:00"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("1.10", "1.1"), ("8", "a number"), ("1.0e+3", "1000.0"), ("0x1F", "31")],  # "as 8" would say nothing
)
def test_numeric_tag_is_refused_with_a_hint_to_quote_it(raw: str, shown: str) -> None:
    (error,) = errors_of(f"name: llama3\ntag: {raw}\n")
    assert error.line == 2
    assert "'tag' must be a string, not a number" in error.message
    assert f'write tag: "{raw}"' in error.message
    assert f"as {shown}" in error.message


def test_quoted_numeric_tag_is_kept_as_written() -> None:
    result = modelfile.parse(b'name: llama3\ntag: "1.10"\n')
    assert isinstance(result, ModelFields) and result.tag == "1.10"


def test_boolean_tag_and_label_value_are_refused() -> None:
    (error,) = errors_of("name: a\ntag: yes\n")
    assert "not a boolean" in error.message and 'tag: "yes"' in error.message
    (error,) = errors_of("name: a\ntag: b\nlabels:\n  tier: 1\n")
    assert error.line == 4 and "'labels.tier' must be a string" in error.message


def test_yaml_syntax_error_has_its_line() -> None:
    (error,) = errors_of("name: a\ntag: b\nlabels: {team: [\n")
    assert error.message.startswith("YAML syntax error")
    assert error.line == 4


def test_duplicate_key_is_refused_with_both_lines() -> None:
    (error,) = errors_of("name: a\ntag: b\nname: c\n")
    assert error == FileError("duplicate key 'name' (first at line 1)", 3)


def test_duplicate_key_in_nested_mapping_is_refused() -> None:
    (error,) = errors_of("name: a\ntag: b\nlabels:\n  x: '1'\n  x: '2'\n")
    assert error.line == 5 and "duplicate key 'x'" in error.message


def test_more_than_one_document_is_refused() -> None:
    (error,) = errors_of("name: a\ntag: b\n---\nname: c\ntag: d\n")
    assert "more than one YAML document" in error.message and error.line == 3


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_refused(text: str) -> None:
    (error,) = errors_of(text)
    assert "file is empty" in error.message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("---\n", "empty")])
def test_non_mapping_is_refused(text: str, kind: str) -> None:
    (error,) = errors_of(text)
    assert error.message.startswith(f"a model file must be a mapping of fields, not {kind}")


def test_missing_required_fields_are_named() -> None:
    messages = {e.message for e in errors_of("labels: {}\n")}
    assert messages == {"missing required field 'name'", "missing required field 'tag'"}


def test_unknown_field_is_refused_with_a_suggestion_and_line() -> None:
    errors = errors_of("name: a\ntag: b\nprnue: false\n")
    assert errors == (FileError("unknown field 'prnue'; did you mean 'prune'?", 3),)


def test_unknown_field_without_near_match_lists_allowed_fields() -> None:
    (error,) = errors_of("name: a\ntag: b\ncolour: red\n")
    assert "unknown field 'colour' (allowed: name, tag, labels" in error.message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: a\ntag: b\nsuspend: maybe\n", "suspend"),
        ("name: a\ntag: b\nprune: 0\n", "prune"),
        ("name: a\ntag: b\nlabels: [x]\n", "labels"),
        ("name: [a]\ntag: b\n", "name"),
    ],
)
def test_wrong_types_name_the_field(text: str, field: str) -> None:
    errors = errors_of(text)
    assert any(f"'{field}' must be a" in e.message for e in errors), errors


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: 'bad name'\ntag: b\n", "name"),
        ("name: a\ntag: 'x:y'\n", "tag"),
        ("name: a\ntag: b\nrefreshRequestedAt: 'yesterday'\n", "refreshRequestedAt"),
        ("name: a\ntag: b\nlabels: {team: 'has space'}\n", "labels.team"),
        ("name: ''\ntag: b\n", "name"),
    ],
)
def test_invalid_values_name_the_field(text: str, field: str) -> None:
    errors = errors_of(text)
    assert any(f"'{field}'" in e.message for e in errors), errors


def test_invalid_label_key_is_refused() -> None:
    (error,) = errors_of("name: a\ntag: b\nlabels: {'-bad': x}\n")
    assert "invalid key '-bad'" in error.message


def test_non_string_keys_are_refused() -> None:
    (error,) = errors_of("name: a\ntag: b\n1: x\n")
    assert "keys must be strings" in error.message and error.line == 3
    (error,) = errors_of("? [a, b]\n: c\n")
    assert "keys must be plain strings" in error.message


def test_anchors_and_aliases_are_refused() -> None:
    (error,) = errors_of("name: a\ntag: &n b\nlabels: {x: *n}\n")
    assert "anchors and aliases" in error.message and error.line == 2


def test_merge_keys_are_refused() -> None:
    (error,) = errors_of("name: a\ntag: b\n<<: {suspend: true}\n")
    assert "merge keys" in error.message


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    (error,) = errors_of("\n".join(lines) + "\n")
    assert "anchors and aliases" in error.message


def test_file_over_the_size_cap_is_refused_without_parsing() -> None:
    content = b"name: a\ntag: b\n" + b"# padding\n" * (modelfile.MAX_FILE_BYTES // 10 + 1)
    (error,) = errors_of(content)
    assert f"{len(content)} bytes, over the {modelfile.MAX_FILE_BYTES}-byte limit" in error.message


def test_invalid_utf8_is_refused() -> None:
    (error,) = errors_of(b"name: \xff\xfe\ntag: b\n")
    assert "not valid UTF-8" in error.message


def test_byte_order_mark_is_accepted() -> None:
    assert modelfile.parse("\ufeffname: a\ntag: b\n".encode()) == ModelFields(name="a", tag="b")


def test_render_round_trips_and_carries_the_modeline() -> None:
    fields = ModelFields(name="llama3", tag="8", labels={"t": "1"}, prune=False, refresh_requested_at="2026-01-01T00:00:00Z")
    text = modelfile.render(fields)
    assert text.startswith(modelfile.MODELINE.encode())
    assert modelfile.parse(text) == fields


@pytest.mark.parametrize(
    ("name", "tag", "resource"),
    [
        ("llama3.2", "1b", "llama3.2-1b"),
        ("gemma3", "1b", "gemma3-1b"),
        ("llama3", "8b-instruct-q4_K_M", "llama3-8b-instruct-q4-k-m"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF", "Q4_K_M", "hf.co-bartowski-llama-3.2-1b-gguf-q4-k-m"),
    ],
)
def test_resource_name_rule(name: str, tag: str, resource: str) -> None:
    assert naming.resource_name(name, tag) == resource
    assert naming.dns1123_subdomain_error(resource) is None


def test_dns1123_checks() -> None:
    assert naming.dns1123_label_error("default") is None
    assert naming.dns1123_label_error("Prod") is not None
    assert naming.dns1123_label_error("a" * 64) is not None
    assert naming.dns1123_subdomain_error("a" * 254) is not None
    assert naming.dns1123_subdomain_error("-a") is not None


DEPTHS = [200, 500, 900, 1000, 5000, 100000]


def _nested(kind: str, depth: int) -> str:
    """A model file whose `labels` value nests `depth` levels deep."""
    if kind == "flow-mapping":
        return "name: a\ntag: b\nlabels: " + "{a: " * depth + "x" + "}" * depth + "\n"
    if kind == "flow-sequence":
        return "name: a\ntag: b\nlabels: " + "[" * depth + "x" + "]" * depth + "\n"
    return "name: a\ntag: b\nlabels:\n" + "- " * depth + "x\n"  # block sequences, two bytes a level


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["flow-mapping", "flow-sequence", "block-sequence"])
def test_deep_nesting_at_any_depth_is_an_error_with_its_line(kind: str, depth: int) -> None:
    content = _nested(kind, depth).encode()
    (error,) = errors_of(content)
    if len(content) > modelfile.MAX_FILE_BYTES:
        assert "-byte limit" in error.message
        return
    assert error.line == 3 + (kind == "block-sequence")
    assert f"nested more than {modelfile.MAX_DEPTH} levels deep" in error.message


def test_nesting_a_model_file_needs_is_accepted() -> None:
    assert modelfile.parse(b"name: a\ntag: b\nlabels:\n  team: search\n") == ModelFields("a", "b", labels={"team": "search"})
    # Just within the limit: refused by the schema, not by the depth check.
    (error,) = errors_of("name: a\ntag: b\nlabels: " + "{a: " * (modelfile.MAX_DEPTH - 1) + "x" + "}" * (modelfile.MAX_DEPTH - 1) + "\n")
    assert "must be a string, not a mapping" in error.message
