"""The schema's fast check never accepts what jsonschema rejects, and dates are really checked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gitops.reconciler.models import schema

FIELDS = list(schema.field_names())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(["llama3.2", "1b", "a b", "-x", "2026-11-25T14:00:00Z", "2026-13-45T99:99:99Z", "x" * 70]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
documents = st.one_of(values, st.dictionaries(keys, values, max_size=6))


@settings(max_examples=400, deadline=None)
@given(documents)
def test_fast_check_accepts_only_what_jsonschema_accepts(document: object) -> None:
    quick = schema._quick_check()
    assert quick is not None
    if quick(document):
        assert schema._validator().is_valid(document)
    assert (schema.validate(document) == []) == schema._validator().is_valid(document)


def test_impossible_dates_are_refused() -> None:
    for value in ("2026-13-45T99:99:99Z", "2026-02-30T00:00:00Z", "2026-11-25 14:00"):
        errors = schema.validate({"name": "a", "tag": "b", "refreshRequestedAt": value})
        assert errors and "refreshRequestedAt" in errors[0].message, value
    for value in ("2026-11-25T14:00:00Z", "2026-11-25T14:00:00.123456789+02:00", "2024-02-29T23:59:59-05:00"):
        assert schema.validate({"name": "a", "tag": "b", "refreshRequestedAt": value}) == [], value
