"""Label selectors (`servers:` placement): Kubernetes's validation, matching and string form.

The tables follow apimachinery's own tests (pkg/api/validate/content/kube_test.go,
pkg/labels/selector_test.go, pkg/apis/meta/v1/helpers_test.go), translated to the `LabelSelector`
API type: the operators a LabelSelector has (In, NotIn, Exists, DoesNotExist) and matchLabels for
equality. Cases for operators a LabelSelector cannot express (`!=`, `>`, `<`) are left out.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gitops.reconciler.models import schema as model_schema
from ollama_gitops.reconciler.models.selector import (
    DOES_NOT_EXIST,
    EXISTS,
    IN,
    NOT_IN,
    InvalidSelector,
    LabelSelector,
    Requirement,
    SelectorProblem,
    label_key_errors,
    label_value_errors,
    parse_selector,
    servers_property_schema,
)

# --------------------------------------------------------------------------- label keys and values
# pkg/api/validate/content/kube_test.go: TestIsLabelKey, TestIsLabelValue

GOOD_KEYS = [
    "simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple", "now-with-dashes/simple",
    "now-with-dashes/now-with-dashes", "now.with.dots/simple", "now-with.dashes-and.dots/simple",
    "1-num.2-num/3-num", "1234/5678", "1.2.3.4/5678", "Uppercase_Is_OK_123", "example.com/Uppercase_Is_OK_123",
    "requests.storage-foo", "a" * 63, "a" * 253 + "/" + "b" * 63,
    "nvidia.com/gpu.product", "kubernetes.io/hostname",
]
BAD_KEYS = [
    "nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash", "Example.com/abc",
    "example_com/abc", "example.com/", "/simple", "a" * 64, "a" * 254 + "/abc",
    "", "simple\n", "ünicode", "a b",
]
GOOD_VALUES = ["simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234", "a" * 63, "",
               "Mixed_Case.and-dots"]
BAD_VALUES = ["nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad", "-starts-with-dash",
              "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a" * 64, "value\n", "a/b"]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_valid_label_keys(key: str) -> None:
    assert label_key_errors(key) == []


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_label_keys(key: str) -> None:
    assert label_key_errors(key)


@pytest.mark.parametrize("value", GOOD_VALUES)
def test_valid_label_values(value: str) -> None:
    assert label_value_errors(value) == []


@pytest.mark.parametrize("value", BAD_VALUES)
def test_invalid_label_values(value: str) -> None:
    assert label_value_errors(value)


@pytest.mark.parametrize(("key", "expected"), [
    ("a" * 64, ["name part must be no more than 63 bytes"]),
    ("a" * 254 + "/abc", ["prefix part must be no more than 253 bytes"]),
    ("/simple", ["prefix part must be non-empty"]),
    ("example.com/", ["name part must be non-empty", "name part must consist of"]),
    ("Example.com/abc", ["prefix part a lowercase RFC 1123 subdomain"]),
    ("only/one/slash", ["a valid label key", "one '/'"]),
    ("-x", ["name part must consist of alphanumeric characters, '-', '_' or '.'"]),
])
def test_label_key_messages_name_the_part(key: str, expected: list[str]) -> None:
    text = "; ".join(label_key_errors(key))
    for fragment in expected:
        assert fragment in text


def test_label_lengths_are_bytes_like_go() -> None:
    # 40 two-byte characters: 80 bytes, over the limit (and not the pattern either).
    assert "must be no more than 63 bytes" in label_value_errors("ā" * 40)
    assert label_value_errors("a" * 63) == []


# --------------------------------------------------------------------------- LabelSelectorAsSelector
# pkg/apis/meta/v1/helpers_test.go: TestLabelSelectorAsSelector

MATCH_EXPRESSIONS = [{"key": "baz", "operator": "In", "values": ["qux", "norf"]}]


@pytest.mark.parametrize(("document", "string"), [
    ({}, ""),
    ({"matchLabels": {"foo": "bar"}}, "foo=bar"),
    ({"matchExpressions": MATCH_EXPRESSIONS}, "baz in (norf,qux)"),
    ({"matchLabels": {"foo": "bar"}, "matchExpressions": MATCH_EXPRESSIONS}, "baz in (norf,qux),foo=bar"),
    ({"matchLabels": {}, "matchExpressions": []}, ""),
])
def test_label_selector_as_selector(document: dict[str, Any], string: str) -> None:
    before = repr(document)
    selector = LabelSelector.parse(document)
    assert str(selector) == string
    assert repr(document) == before  # the input is not modified
    assert selector.empty == (string == "")


def test_exists_with_values_is_an_error() -> None:
    result = parse_selector({"matchExpressions": [{"key": "baz", "operator": "Exists", "values": ["qux", "norf"]}]})
    assert result == (SelectorProblem(
        ("matchExpressions", 0, "values"),
        "'matchExpressions[0].values' may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),)


# --------------------------------------------------------------------------- NewRequirement
# pkg/labels/selector_test.go: TestRequirementConstructor (the LabelSelector operators)

@pytest.mark.parametrize(("key", "operator", "values", "bad_path"), [
    ("x1", IN, [], ("values",)),
    ("x2", NOT_IN, [], ("values",)),
    ("x3", IN, ["foo"], None),
    ("x4", NOT_IN, ["foo"], None),
    ("x6", EXISTS, [], None),
    ("x7", DOES_NOT_EXIST, [], None),
    ("x8", EXISTS, ["foo"], ("values",)),
    ("x8b", DOES_NOT_EXIST, ["foo"], ("values",)),
    ("x9", IN, ["bar"], None),
    ("a" * 254, EXISTS, [], ("key",)),
    ("x16", IN, ["a" * 254], ("values", 0)),
    ("x17", IN, ["a b"], ("values", 0)),
    ("x18", "unsupportedOp", [], ("operator",)),
    ("x19", "Gt", ["1"], ("operator",)),  # a LabelSelector has no Gt/Lt (LabelSelectorAsSelector refuses them)
    ("x20", "in", ["a"], ("operator",)),  # operators are case-sensitive
    ("x21", IN, [""], None),  # the empty string is a valid value
    ("x22", IN, ["a", "a"], None),  # repeated values are allowed, as in Kubernetes
])
def test_requirement_constructor(key: str, operator: str, values: list[str], bad_path: tuple | None) -> None:
    document = {"matchExpressions": [{"key": key, "operator": operator, "values": values}]}
    result = parse_selector(document)
    if bad_path is None:
        assert isinstance(result, LabelSelector)
        assert result.match_expressions == (Requirement(key, operator, tuple(values)),)
    else:
        assert isinstance(result, tuple)
        assert [p.path for p in result] == [("matchExpressions", 0) + bad_path]
        with pytest.raises(InvalidSelector):
            Requirement(key, operator, tuple(values))


def test_every_problem_is_reported_at_once() -> None:
    result = parse_selector({"matchExpressions": [{"key": "-bad", "operator": "In", "values": ["ok", "-bad"]}]},
                            ("servers",))
    assert [p.path for p in result] == [("servers", "matchExpressions", 0, "key"),
                                        ("servers", "matchExpressions", 0, "values", 1)]


# --------------------------------------------------------------------------- String()
# pkg/labels/selector_test.go: TestToString, and the ordering of internalSelector.Add

@pytest.mark.parametrize(("expressions", "string"), [
    ([("x", IN, ("abc", "def")), ("y", NOT_IN, ("jkl",)), ("z", EXISTS, ())], "x in (abc,def),y notin (jkl),z"),
    ([("x", NOT_IN, ("abc", "def")), ("z", DOES_NOT_EXIST, ())], "x notin (abc,def),!z"),
    ([("x", NOT_IN, ("abc",)), ("y", IN, ("jkl", "mno")), ("z", NOT_IN, ("",))], "x notin (abc),y in (jkl,mno),z notin ()"),
    # sorted by key whatever the input order; values sorted in the output only
    ([("z", EXISTS, ()), ("a", IN, ("y", "b")), ("m", DOES_NOT_EXIST, ())], "a in (b,y),!m,z"),
    # ties keep their order
    ([("k", EXISTS, ()), ("k", NOT_IN, ("v",))], "k,k notin (v)"),
])
def test_to_string(expressions: list[tuple[str, str, tuple[str, ...]]], string: str) -> None:
    selector = LabelSelector.of(None, *(Requirement(*e) for e in expressions))
    assert str(selector) == string
    # the values keep the order they were written with
    assert [r.values for r in selector.match_expressions] == [e[2] for e in expressions]


def test_to_string_mixes_match_labels_and_expressions_by_key() -> None:
    selector = LabelSelector.parse({"matchLabels": {"zone": "eu", "b": "1"},
                                    "matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100", "a100"]},
                                                         {"key": "zone", "operator": "Exists"}]})
    assert str(selector) == "b=1,gpu in (a100,h100),zone=eu,zone"


# --------------------------------------------------------------------------- Matches
# pkg/labels/selector_test.go: TestEverything, TestSelectorMatches, TestSetMatches,
# TestRequirementSelectorMatching

def _selector(text: str) -> LabelSelector:
    """The selectors of selector_test.go written in kubectl's form, for the operators a LabelSelector has."""
    labels: dict[str, str] = {}
    expressions = []
    for part in filter(None, text.split(",")):
        if "=" in part:
            key, value = part.split("=")
            labels[key] = value
        elif part.startswith("!"):
            expressions.append(Requirement(part[1:], DOES_NOT_EXIST))
        else:
            expressions.append(Requirement(part, EXISTS))
    return LabelSelector.of(labels, *expressions)


LABELSET = {"foo": "bar", "baz": "blah"}


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("", {"x": "y"}, True),
    ("x=y", {"x": "y"}, True),
    ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("notin=in", {"notin": "in"}, True),
    ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True),
    ("x=z", {}, False),
    ("x=y", {"x": "z"}, False),
    ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("foo=bar", LABELSET, True),
    ("baz=blah", LABELSET, True),
    ("foo=bar,baz=blah", LABELSET, True),
    ("foo=blah", LABELSET, False),
    ("baz=bar", LABELSET, False),
    ("foo=bar,foobar=bar,baz=blah", LABELSET, False),
    ("", {}, True),
])
def test_selector_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert _selector(text).matches(labels) is expected


@pytest.mark.parametrize(("labels", "expressions", "expected"), [
    ({"x": "foo", "y": "baz"}, [("x", IN, ("foo",)), ("y", NOT_IN, ("alpha",))], True),
    ({"x": "foo", "y": "baz"}, [("x", IN, ("foo",)), ("y", IN, ("alpha",))], False),
    ({"y": ""}, [("x", NOT_IN, ("",)), ("y", EXISTS, ())], True),
    ({"y": ""}, [("x", DOES_NOT_EXIST, ()), ("y", EXISTS, ())], True),
    ({"y": ""}, [("x", NOT_IN, ("",)), ("y", DOES_NOT_EXIST, ())], False),
    ({"y": "baz"}, [("x", IN, ("",))], False),
    # NotIn matches a label set without the key; In does not
    ({}, [("gpu", NOT_IN, ("l4",))], True),
    ({}, [("gpu", IN, ("l4",))], False),
    ({"gpu": "l4"}, [("gpu", NOT_IN, ("l4", "t4"))], False),
    ({"gpu": "a100"}, [("gpu", NOT_IN, ("l4", "t4"))], True),
])
def test_requirement_selector_matching(labels: dict[str, str], expressions: list, expected: bool) -> None:
    assert LabelSelector.of(None, *(Requirement(*e) for e in expressions)).matches(labels) is expected


def test_everything_matches_everything() -> None:
    assert LabelSelector.everything().matches({"x": "y"})
    assert LabelSelector.everything().matches({})
    assert LabelSelector.everything().empty
    assert LabelSelector.parse({}) == LabelSelector.everything()


# --------------------------------------------------------------------------- problems, named

@pytest.mark.parametrize(("document", "path", "fragment"), [
    ([], ("servers",), "'servers' must be a mapping with matchLabels and/or matchExpressions, not a list"),
    (None, ("servers",), "'servers' must be a mapping with matchLabels and/or matchExpressions, not empty (null)"),
    ({"matchLabel": {}}, ("servers", "matchLabel"), "unknown field 'servers.matchLabel'; did you mean 'matchLabels'?"),
    ({"nodeSelector": {}}, ("servers", "nodeSelector"), "(allowed: matchLabels, matchExpressions)"),
    ({"matchLabels": None}, ("servers", "matchLabels"), "'servers.matchLabels' must be a mapping of label keys to values, not empty (null)"),
    ({"matchLabels": {"gpu": True}}, ("servers", "matchLabels", "gpu"), "'servers.matchLabels.gpu' must be a string, not a boolean"),
    ({"matchLabels": {"a/b/c": "x"}}, ("servers", "matchLabels", "a/b/c"), "'servers.matchLabels' has an invalid label key 'a/b/c'"),
    ({"matchLabels": {"gpu": "-x"}}, ("servers", "matchLabels", "gpu"), "'servers.matchLabels.gpu' has an invalid label value '-x'"),
    ({"matchExpressions": {}}, ("servers", "matchExpressions"), "'servers.matchExpressions' must be a list"),
    ({"matchExpressions": ["gpu"]}, ("servers", "matchExpressions", 0), "'servers.matchExpressions[0]' must be a mapping"),
    ({"matchExpressions": [{"operator": "Exists"}]}, ("servers", "matchExpressions", 0),
     "'servers.matchExpressions[0]' is missing its required field 'key'"),
    ({"matchExpressions": [{"key": "gpu"}]}, ("servers", "matchExpressions", 0),
     "'servers.matchExpressions[0]' is missing its required field 'operator'"),
    ({"matchExpressions": [{"key": "gpu", "operator": "In", "value": ["a"]}]}, ("servers", "matchExpressions", 0, "value"),
     "unknown field 'servers.matchExpressions[0].value'; did you mean 'values'?"),
    ({"matchExpressions": [{"key": "gpu", "operator": "in", "values": ["a"]}]}, ("servers", "matchExpressions", 0, "operator"),
     "'servers.matchExpressions[0].operator': 'in' is not a valid label selector operator (one of In, NotIn, Exists, "
     "DoesNotExist); did you mean 'In'?"),
    ({"matchExpressions": [{"key": "gpu", "operator": "In"}]}, ("servers", "matchExpressions", 0, "values"),
     "'servers.matchExpressions[0].values' must have at least one value when `operator` is 'In' or 'NotIn'"),
    ({"matchExpressions": [{"key": "gpu", "operator": "In", "values": None}]}, ("servers", "matchExpressions", 0, "values"),
     "'servers.matchExpressions[0].values' must be a list of label values, not empty (null)"),
    ({"matchExpressions": [{"key": "gpu", "operator": "In", "values": "a100"}]}, ("servers", "matchExpressions", 0, "values"),
     "must be a list of label values, not a string"),
    ({"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a", 100]}]}, ("servers", "matchExpressions", 0, "values", 1),
     "'servers.matchExpressions[0].values[1]' must be a string, not a number"),
    ({"matchExpressions": [{"key": 7, "operator": "Exists"}]}, ("servers", "matchExpressions", 0, "key"),
     "'servers.matchExpressions[0].key' must be a string, not a number"),
    ({"matchExpressions": [{"key": "Example.com/gpu", "operator": "Exists"}]}, ("servers", "matchExpressions", 0, "key"),
     "'servers.matchExpressions[0].key' has an invalid label key 'Example.com/gpu': prefix part a lowercase RFC 1123 subdomain"),
])
def test_problems_name_the_offending_part(document: Any, path: tuple, fragment: str) -> None:
    result = parse_selector(document, ("servers",))
    assert isinstance(result, tuple), result
    assert path in [p.path for p in result]
    assert any(fragment in p.message for p in result if p.path == path), [p.message for p in result]
    with pytest.raises(InvalidSelector) as raised:
        LabelSelector.parse(document, ("servers",))
    assert raised.value.problems == result


def test_yaml_retyped_values_say_what_to_quote() -> None:
    raw = {("servers", "matchLabels", "cuda"): "12.10", ("servers", "matchExpressions", 0, "values", 0): "8"}
    result = parse_selector({"matchLabels": {"cuda": 12.1}, "matchExpressions": [{"key": "n", "operator": "In", "values": [8]}]},
                            ("servers",), raw)
    messages = [p.message for p in result]
    assert messages == [
        "'servers.matchLabels.cuda' must be a string, not a number: YAML reads 12.10 as 12.1; "
        "quote it (\"12.10\") to keep it as written",
        "'servers.matchExpressions[0].values[0]' must be a string, not a number: quote it (\"8\") to keep it as written",
    ]


# --------------------------------------------------------------------------- the dataclasses

def test_selectors_are_frozen_hashable_and_compare_by_content() -> None:
    a = LabelSelector.parse({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "g", "operator": "Exists"}]})
    b = LabelSelector.of({"a": "1", "b": "2"}, Requirement("g", EXISTS))
    assert a == b and hash(a) == hash(b)
    assert a.match_labels == (("a", "1"), ("b", "2"))
    assert a.labels == {"a": "1", "b": "2"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.match_labels = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.match_expressions[0].key = "x"  # type: ignore[misc]
    assert {a, b} == {a}


def test_constructors_validate_like_parse() -> None:
    with pytest.raises(InvalidSelector, match="invalid label key '-x'"):
        LabelSelector.of({"-x": "1"})
    with pytest.raises(InvalidSelector, match="invalid label value 'a b'"):
        LabelSelector.of({"x": "a b"})
    with pytest.raises(InvalidSelector, match="at least one value"):
        Requirement("gpu", IN)
    with pytest.raises(InvalidSelector, match="has a key twice"):
        LabelSelector((("a", "1"), ("a", "2")))


def test_to_document_leaves_out_what_is_empty() -> None:
    assert LabelSelector.everything().to_document() == {}
    assert LabelSelector.of(None, Requirement("g", EXISTS)).to_document() == {
        "matchExpressions": [{"key": "g", "operator": "Exists"}]}


# --------------------------------------------------------------------------- properties

def _bounded(ends: str, inner: str) -> st.SearchStrategy[str]:
    """Strings of `inner` characters that start and end with one of `ends` (from_regex is much slower)."""
    one = st.sampled_from(ends)
    return st.one_of(one, st.builds(lambda a, mid, b: a + mid + b, one, st.text(inner, max_size=5), one))


_DNS_LABEL = _bounded("az09", "az09-")
_NAME = _bounded("aZ09", "aZ09-_.")
label_keys = st.one_of(_NAME, st.builds(lambda parts, name: ".".join(parts) + "/" + name,
                                        st.lists(_DNS_LABEL, min_size=1, max_size=3), _NAME))
label_values = st.one_of(st.just(""), _NAME)
label_sets = st.dictionaries(label_keys, label_values, max_size=4)


@st.composite
def requirements(draw: st.DrawFn, keys: st.SearchStrategy[str] = label_keys) -> Requirement:
    operator = draw(st.sampled_from((IN, NOT_IN, EXISTS, DOES_NOT_EXIST)))
    values = draw(st.lists(label_values, min_size=1, max_size=3)) if operator in (IN, NOT_IN) else []
    return Requirement(draw(keys), operator, tuple(values))


selectors = st.builds(lambda labels, expressions: LabelSelector.of(labels, *expressions),
                      st.dictionaries(label_keys, label_values, max_size=3), st.lists(requirements(), max_size=3))


@settings(max_examples=100, deadline=None)
@given(label_sets, label_sets)
def test_a_selector_of_a_label_sets_own_labels_matches_it_and_its_supersets(labels: dict, extra: dict) -> None:
    assert LabelSelector.of(labels).matches(labels)
    assert LabelSelector.of(labels).matches({**extra, **labels})


@settings(max_examples=100, deadline=None)
@given(selectors, label_sets)
def test_a_selector_is_the_and_of_its_parts(selector: LabelSelector, labels: dict) -> None:
    parts = [LabelSelector.of({k: v}) for k, v in selector.match_labels]
    parts += [LabelSelector.of(None, r) for r in selector.match_expressions]
    assert selector.matches(labels) == all(part.matches(labels) for part in parts)


@settings(max_examples=100, deadline=None)
@given(requirements(), label_sets)
def test_negated_operators_are_complements(requirement: Requirement, labels: dict) -> None:
    opposite = {IN: NOT_IN, NOT_IN: IN, EXISTS: DOES_NOT_EXIST, DOES_NOT_EXIST: EXISTS}[requirement.operator]
    negated = Requirement(requirement.key, opposite, requirement.values)
    assert requirement.matches(labels) != negated.matches(labels)


@settings(max_examples=100, deadline=None)
@given(selectors)
def test_documents_round_trip(selector: LabelSelector) -> None:
    again = LabelSelector.parse(selector.to_document())
    assert again == selector
    assert str(again) == str(selector)


# --------------------------------------------------------------------------- the JSON Schema fragment

def _fragment_validator() -> jsonschema.protocols.Validator:
    document_schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                       "properties": {"servers": servers_property_schema()}}
    base = jsonschema.validators.validator_for(document_schema)
    base.check_schema(document_schema)

    # The model schema's own rule for `pattern` (ECMA-262: `$` is the end, not before a final newline).
    def pattern(validator: Any, regex: str, instance: Any, schema: Any) -> Any:
        if isinstance(instance, str) and not model_schema.pattern_matches(regex, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    return jsonschema.validators.extend(base, {"pattern": pattern})(document_schema)


VALIDATOR = _fragment_validator()

# Weighted towards valid parts, so that both answers come up often.
_any_key = st.one_of(label_keys, label_keys, label_keys, label_keys, label_keys, label_keys,
                     st.sampled_from(BAD_KEYS), st.text(alphabet="aZ9-_./ ", max_size=12))
_any_value = st.one_of(*[label_values] * 12, st.sampled_from(BAD_VALUES), st.integers(0, 9), st.none())
_any_operator = st.sampled_from((IN, NOT_IN, EXISTS, DOES_NOT_EXIST) * 4 + ("in", "Gt", ""))


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly well-formed selector documents with something wrong here and there."""
    document: dict[str, Any] = {}
    if draw(st.booleans()):
        document["matchLabels"] = draw(st.dictionaries(_any_key, _any_value, max_size=3)) if draw(st.integers(0, 9)) else None
    if draw(st.booleans()):
        entries = []
        for _ in range(draw(st.integers(0, 2))):
            entry: dict[str, Any] = {}
            if draw(st.integers(0, 9)):
                entry["key"] = draw(_any_key)
            if draw(st.integers(0, 9)):
                entry["operator"] = draw(_any_operator)
            if entry.get("operator") in (IN, NOT_IN) or not draw(st.integers(0, 4)):
                entry["values"] = draw(st.lists(_any_value, max_size=3)) if draw(st.integers(0, 9)) else None
            if not draw(st.integers(0, 14)):
                entry["valuez"] = []
            entries.append(entry)
        document["matchExpressions"] = entries
    if not draw(st.integers(0, 14)):
        document["nodeSelector"] = {}
    return document


@settings(max_examples=300, deadline=None)
@given(documents())
def test_the_schema_accepts_exactly_what_parse_accepts(document: Any) -> None:
    parsed = parse_selector(document)
    assert VALIDATOR.is_valid({"servers": document}) == isinstance(parsed, LabelSelector), parsed


@pytest.mark.parametrize("key", GOOD_KEYS + BAD_KEYS)
def test_the_schema_agrees_on_every_label_key(key: str) -> None:
    document = {"matchExpressions": [{"key": key, "operator": "Exists"}], "matchLabels": {key: "v"}}
    assert VALIDATOR.is_valid({"servers": document}) == (label_key_errors(key) == [])


@pytest.mark.parametrize("value", GOOD_VALUES + BAD_VALUES)
def test_the_schema_agrees_on_every_label_value(value: str) -> None:
    document = {"matchExpressions": [{"key": "k", "operator": "In", "values": [value]}], "matchLabels": {"k": value}}
    assert VALIDATOR.is_valid({"servers": document}) == (label_value_errors(value) == [])


def test_the_schema_fragment_is_documented_and_a_fresh_copy() -> None:
    fragment = servers_property_schema()
    assert fragment["type"] == "object" and fragment["additionalProperties"] is False
    items = fragment["properties"]["matchExpressions"]["items"]
    for node in (fragment, fragment["properties"]["matchLabels"], fragment["properties"]["matchExpressions"],
                 items, *items["properties"].values()):
        assert node["description"]
    assert items["properties"]["operator"]["enum"] == [IN, NOT_IN, EXISTS, DOES_NOT_EXIST]
    fragment["type"] = "changed"
    assert servers_property_schema()["type"] == "object"
    for example in fragment["examples"]:
        assert isinstance(parse_selector(example), LabelSelector)
    # No lookaround: the patterns must work with RE2 (a CRD schema) as well as ECMA-262.
    text = repr(servers_property_schema())
    assert not re.search(r"\(\?[=!<]", text)


def test_the_fragment_fits_into_the_model_schema() -> None:
    combined = copy.deepcopy(model_schema.model_schema())
    combined["properties"]["servers"] = servers_property_schema()
    validator_class = jsonschema.validators.validator_for(combined)
    validator_class.check_schema(combined)
    validator = validator_class(combined)
    good = {"name": "llama3.2", "tag": "1b", "servers": {"matchExpressions": [{"key": "gpu", "operator": "In",
                                                                               "values": ["a100"]}]}}
    assert validator.is_valid(good)
    bad = {"name": "llama3.2", "tag": "1b", "servers": {"matchExpressions": [{"key": "gpu", "operator": "in"}]}}
    assert [list(e.absolute_path) for e in validator.iter_errors(bad)] == [["servers", "matchExpressions", 0, "operator"]]
