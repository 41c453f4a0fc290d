"""The one JSON reader of request bodies: bounded nesting, no duplicate keys, strict JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gitops.api.jsonbody import MAX_DEPTH, JsonBodyError, nesting_depth, read_json


def test_nesting_is_counted_outside_strings_only() -> None:
    assert nesting_depth('{"a": [1, {"b": []}]}') == 4
    assert nesting_depth(r'{"a": "[[[{\"x\": [[["}') == 1  # escaped quotes do not end the string
    assert nesting_depth("[]" * 1000) == 1
    assert read_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(JsonBodyError, match=f"nested deeper than {MAX_DEPTH} levels"):
        read_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_duplicate_keys_at_any_depth_are_refused() -> None:
    with pytest.raises(JsonBodyError, match="duplicate key 'b'"):
        read_json('{"a": {"b": 1, "c": 2, "b": 1}}')
    assert read_json('{"a": {"b": 1}, "b": {"a": 1}}') == {"a": {"b": 1}, "b": {"a": 1}}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_every_json_document_reads_as_the_standard_parser_reads_it(value: object) -> None:
    text = json.dumps(value)
    assert nesting_depth(text) <= 30
    assert read_json(text.encode()) == json.loads(text)
