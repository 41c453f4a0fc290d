"""Kubernetes label selectors: the `servers:` placement of a model, and label validation.

A model file's `servers:` says which servers of a fleet hold the model, as a Kubernetes label
selector:

```yaml
servers:
  matchLabels: {zone: eu}
  matchExpressions:
    - {key: gpu, operator: In, values: [a100, h100]}
```

The rules are Kubernetes's own, so that a selector that works in a Deployment works here and the
other way round (checked against apimachinery's `LabelSelectorAsSelector`, `labels.NewRequirement`,
`ValidateLabelSelector` and `content.IsLabelKey` / `IsLabelValue`):

- a label key is an optional prefix and '/', then a name: the name is 1 to 63 characters of
  `[A-Za-z0-9_.-]` that start and end with a letter or digit; the prefix is a lowercase DNS-1123
  subdomain of at most 253 characters;
- a label value is empty, or 1 to 63 characters of `[A-Za-z0-9_.-]` that start and end with a
  letter or digit;
- the operators are `In`, `NotIn` (at least one value), `Exists` and `DoesNotExist` (no values);
  they are case-sensitive, like Kubernetes's;
- `matchLabels` and every expression are ANDed; `NotIn` and `DoesNotExist` match a label set that
  lacks the key; an empty selector (`{}`) matches everything.

Deliberately stricter than Kubernetes in one way, like the rest of the model file: fields have
their types, so `matchLabels:` or `values:` left empty (YAML's null) is an error rather than
"nothing", and a label value YAML reads as a number or a boolean (`zone: 1`) is an error that says
to quote it. Whether a missing `servers:` means every server is the caller's rule (issue 12 says
it does); this module only parses what is there.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IN = "In"
NOT_IN = "NotIn"
EXISTS = "Exists"
DOES_NOT_EXIST = "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
"""The operators of a `matchExpressions` entry, as Kubernetes spells them."""

LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253
LABEL_VALUE_MAX = 63

# Kubernetes's patterns (apimachinery pkg/api/validate/content). Always used with fullmatch: Go's
# `$` is the end of the text, Python's also matches before a final newline.
_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME = re.compile(_NAME_FMT)
_VALUE = re.compile(f"({_NAME_FMT})?")
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)

_NAME_MESSAGE = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                 "alphanumeric character (e.g. 'MyName' or 'my.name' or '123-abc')")
_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'MyValue' or 'my_value' or '12345')")
_SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                      "'.', and must start and end with an alphanumeric character (e.g. 'example.com')")

_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_REQUIREMENT_FIELDS = ("key", "operator", "values")

Path = tuple[str | int, ...]


def label_key_errors(key: str) -> list[str]:
    """Why `key` is not a Kubernetes label key (empty when it is one), in Kubernetes's words.

    Lengths are counted in bytes of UTF-8, as Go does; a non-ASCII key fails the pattern anyway.
    """
    parts = key.split("/")
    if len(parts) > 2:
        return ["a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                "end with an alphanumeric character, with an optional DNS subdomain prefix and one '/' "
                "(e.g. 'MyName' or 'example.com/MyName')"]
    errors: list[str] = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if _utf8_len(prefix) > LABEL_PREFIX_MAX:
                errors.append(f"prefix part must be no more than {LABEL_PREFIX_MAX} bytes")
            if not _DNS1123_SUBDOMAIN.fullmatch(prefix):
                errors.append(f"prefix part {_SUBDOMAIN_MESSAGE}")
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif _utf8_len(name) > LABEL_NAME_MAX:
        errors.append(f"name part must be no more than {LABEL_NAME_MAX} bytes")
    if not _NAME.fullmatch(name):
        errors.append(f"name part {_NAME_MESSAGE}")
    return errors


def label_value_errors(value: str) -> list[str]:
    """Why `value` is not a Kubernetes label value (empty when it is one), in Kubernetes's words."""
    errors: list[str] = []
    if _utf8_len(value) > LABEL_VALUE_MAX:
        errors.append(f"must be no more than {LABEL_VALUE_MAX} bytes")
    if not _VALUE.fullmatch(value):
        errors.append(_VALUE_MESSAGE)
    return errors


@dataclass(frozen=True)
class SelectorProblem:
    """One thing wrong with a selector: where (the path of keys from the document's root, so a
    caller can find the line) and why (a message that names that place)."""

    path: Path
    message: str


class InvalidSelector(ValueError):
    """Raised by `LabelSelector.parse` and the constructors when a selector breaks Kubernetes's rules."""

    def __init__(self, problems: tuple[SelectorProblem, ...]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry: `key`, `operator` (one of `OPERATORS`) and `values`.

    `values` keep the order and repetitions they were written with (as Kubernetes keeps them);
    they are sorted only in the string form. Construction validates like `labels.NewRequirement`.
    """

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        problems = _requirement_problems(self.key, self.operator, self.values, ())
        if problems:
            raise InvalidSelector(problems)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Does a label set satisfy this requirement (Kubernetes's `Requirement.Matches`)?"""
        if self.operator == IN:
            return self.key in labels and labels[self.key] in self.values
        if self.operator == NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == EXISTS:
            return self.key in labels
        return self.key not in labels  # DOES_NOT_EXIST: the only one left, __post_init__ saw to it

    def to_document(self) -> dict[str, Any]:
        """The entry as a model file holds it (no `values` for Exists and DoesNotExist)."""
        document: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            document["values"] = list(self.values)
        return document

    def __str__(self) -> str:
        """kubectl's form: `gpu in (a100,h100)`, `gpu notin (l4)`, `gpu`, `!gpu`."""
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        word = "in" if self.operator == IN else "notin"
        return f"{self.key} {word} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector: `matchLabels` and `matchExpressions`, ANDed.

    `match_labels` is a tuple of `(key, value)` pairs sorted by key (a frozen dataclass must be
    hashable, a dict is not); `labels` gives it back as a dict. Build one with `parse` from what a
    model file holds, or directly: `LabelSelector.of({"zone": "eu"}, Requirement("gpu", IN, ("a100",)))`.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        pairs = dict(self.match_labels)
        if len(pairs) != len(self.match_labels):
            raise InvalidSelector((SelectorProblem(("matchLabels",), "matchLabels has a key twice"),))
        object.__setattr__(self, "match_labels", tuple(sorted(pairs.items())))
        object.__setattr__(self, "match_expressions", tuple(self.match_expressions))
        problems = tuple(_match_labels_problems(pairs, ("matchLabels",)))
        if problems:
            raise InvalidSelector(problems)

    @classmethod
    def of(cls, match_labels: Mapping[str, str] | None = None, *expressions: Requirement) -> LabelSelector:
        """A selector from a mapping of labels and any expressions."""
        return cls(tuple((match_labels or {}).items()), expressions)

    @classmethod
    def everything(cls) -> LabelSelector:
        """The empty selector, `{}`: it matches every label set."""
        return cls()

    @classmethod
    def parse(cls, document: Any, path: Path = ()) -> LabelSelector:
        """`parse_selector`, raising `InvalidSelector` with every problem instead of returning them."""
        result = parse_selector(document, path)
        if isinstance(result, LabelSelector):
            return result
        raise InvalidSelector(result)

    @property
    def labels(self) -> dict[str, str]:
        """`matchLabels` as a dict."""
        return dict(self.match_labels)

    @property
    def empty(self) -> bool:
        """True for `{}`, which matches everything."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Does a label set satisfy every part of the selector (Kubernetes's `Selector.Matches`)?"""
        return (all(key in labels and labels[key] == value for key, value in self.match_labels)
                and all(requirement.matches(labels) for requirement in self.match_expressions))

    def to_document(self) -> dict[str, Any]:
        """The selector as a model file holds it; `parse` of it gives this selector back."""
        document: dict[str, Any] = {}
        if self.match_labels:
            document["matchLabels"] = self.labels
        if self.match_expressions:
            document["matchExpressions"] = [r.to_document() for r in self.match_expressions]
        return document

    def __str__(self) -> str:
        """kubectl's string form, as `LabelSelectorAsSelector(...).String()` gives it:
        `gpu in (a100,h100),zone=eu`.

        Requirements are sorted by key (ties keep `matchLabels` first, then the expressions in
        their order), the values of `in` and `notin` are sorted; the empty selector is `""`.
        """
        parts = [(key, f"{key}={value}") for key, value in self.match_labels]
        parts += [(r.key, str(r)) for r in self.match_expressions]
        return ",".join(text for _, text in sorted(parts, key=lambda part: part[0]))


ParseResult = LabelSelector | tuple[SelectorProblem, ...]
"""What `parse_selector` gives: the selector, or every problem that stops it."""


def parse_selector(document: Any, path: Path = (),
                   raw_scalars: Mapping[Path, str] | None = None) -> ParseResult:
    """The selector a model file's `servers:` mapping describes, or all its problems. Never raises.

    `path` is where the mapping sits in its document (`("servers",)` in a model file): problems
    carry full paths and name them in their messages. `raw_scalars` (as `modelfile` records them:
    the path of each scalar YAML read as a non-string, to the text written) lets a message say what
    to quote.
    """
    raw = raw_scalars or {}
    if not isinstance(document, dict):
        return (SelectorProblem(path, f"{_where(path)} must be a mapping with matchLabels and/or "
                                      f"matchExpressions, not {type_name(document)}"),)
    problems = _unknown_fields(document, _SELECTOR_FIELDS, path)
    match_labels: dict[str, str] = {}
    if "matchLabels" in document:
        labels_path = path + ("matchLabels",)
        value = document["matchLabels"]
        if not isinstance(value, dict):
            problems.append(SelectorProblem(labels_path, f"{_where(labels_path)} must be a mapping of label "
                                                         f"keys to values, not {type_name(value)}"))
        else:
            for key, item in value.items():
                item_path = labels_path + (key,)
                if not isinstance(key, str):
                    problems.append(SelectorProblem(item_path, f"{_where(labels_path)} has a key that is "
                                                               f"{type_name(key)}, not a string: quote it"))
                elif not isinstance(item, str):
                    problems.append(_not_a_string(item_path, item, raw))
                else:
                    match_labels[key] = item
            problems += _match_labels_problems(match_labels, labels_path)
    expressions: list[Requirement] = []
    if "matchExpressions" in document:
        list_path = path + ("matchExpressions",)
        value = document["matchExpressions"]
        if not isinstance(value, list):
            problems.append(SelectorProblem(list_path, f"{_where(list_path)} must be a list of "
                                                       f"{{key, operator, values}}, not {type_name(value)}"))
        else:
            for index, entry in enumerate(value):
                result = _parse_requirement(entry, list_path + (index,), raw)
                if isinstance(result, Requirement):
                    expressions.append(result)
                else:
                    problems += result
    if problems:
        return tuple(problems)
    return LabelSelector(tuple(match_labels.items()), tuple(expressions))


def _parse_requirement(entry: Any, path: Path, raw: Mapping[Path, str]) -> Requirement | list[SelectorProblem]:
    if not isinstance(entry, dict):
        return [SelectorProblem(path, f"{_where(path)} must be a mapping with key, operator and values, "
                                      f"not {type_name(entry)}")]
    problems = _unknown_fields(entry, _REQUIREMENT_FIELDS, path)
    fields: dict[str, Any] = {}
    for name in ("key", "operator"):
        if name not in entry:
            problems.append(SelectorProblem(path, f"{_where(path)} is missing its required field '{name}'"))
        elif not isinstance(entry[name], str):
            problems.append(_not_a_string(path + (name,), entry[name], raw))
        else:
            fields[name] = entry[name]
    values: list[str] = []
    if "values" in entry:
        values_path = path + ("values",)
        if not isinstance(entry["values"], list):
            problems.append(SelectorProblem(values_path, f"{_where(values_path)} must be a list of label values, "
                                                         f"not {type_name(entry['values'])}"))
        else:
            for index, value in enumerate(entry["values"]):
                if isinstance(value, str):
                    values.append(value)
                else:
                    problems.append(_not_a_string(values_path + (index,), value, raw))
    if problems:
        # Types first: the rules below would only repeat what a wrongly typed field already says.
        return problems
    requirement_problems = _requirement_problems(fields["key"], fields["operator"], tuple(values), path)
    if requirement_problems:
        return list(requirement_problems)
    return Requirement(fields["key"], fields["operator"], tuple(values))


def _requirement_problems(key: str, operator: str, values: tuple[str, ...], path: Path) -> tuple[SelectorProblem, ...]:
    """`labels.NewRequirement`'s and `ValidateLabelSelectorRequirement`'s checks, in their order."""
    problems: list[SelectorProblem] = []
    key_errors = label_key_errors(key)
    if key_errors:
        problems.append(SelectorProblem(path + ("key",), f"{_where(path + ('key',))} has an invalid label key "
                                                         f"{key!r}: {'; '.join(key_errors)}"))
    values_path = path + ("values",)
    if operator in (IN, NOT_IN):
        if not values:
            problems.append(SelectorProblem(values_path, f"{_where(values_path)} must have at least one value "
                                                         f"when `operator` is 'In' or 'NotIn'"))
    elif operator in (EXISTS, DOES_NOT_EXIST):
        if values:
            problems.append(SelectorProblem(values_path, f"{_where(values_path)} may not be specified when "
                                                         f"`operator` is 'Exists' or 'DoesNotExist'"))
    else:
        hint = _close_matches(operator, OPERATORS) or [
            o for o in OPERATORS if o.lower() == operator.lower()]
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        op_path = path + ("operator",)
        problems.append(SelectorProblem(op_path, f"{_where(op_path)}: {operator!r} is not a valid label selector "
                                                 f"operator (one of {', '.join(OPERATORS)}){suggestion}"))
    for index, value in enumerate(values):
        value_errors = label_value_errors(value)
        if value_errors:
            problems.append(SelectorProblem(values_path + (index,), f"{_where(values_path + (index,))} has an invalid "
                                                                    f"label value {value!r}: {'; '.join(value_errors)}"))
    return tuple(problems)


def _match_labels_problems(labels: Mapping[str, str], path: Path) -> list[SelectorProblem]:
    problems = []
    for key, value in labels.items():
        key_errors = label_key_errors(key)
        if key_errors:
            problems.append(SelectorProblem(path + (key,), f"{_where(path)} has an invalid label key {key!r}: "
                                                           f"{'; '.join(key_errors)}"))
        value_errors = label_value_errors(value)
        if value_errors:
            problems.append(SelectorProblem(path + (key,), f"{_where(path + (key,))} has an invalid label value "
                                                           f"{value!r}: {'; '.join(value_errors)}"))
    return problems


def _unknown_fields(document: dict[Any, Any], allowed: tuple[str, ...], path: Path) -> list[SelectorProblem]:
    return [SelectorProblem(path + (name,), unknown_field_message(_where(path + (name,)), name, allowed))
            for name in document if name not in allowed]


def unknown_field_message(where: str, name: Any, allowed: tuple[str, ...]) -> str:
    """`unknown field <where>; did you mean 'x'?`, or the allowed fields when none is close to `name`."""
    hint = _close_matches(str(name), allowed)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else f" (allowed: {', '.join(allowed)})"
    return f"unknown field {where}{suggestion}"


def _close_matches(word: str, possibilities: tuple[str, ...]) -> list[str]:
    """The one possibility closest to a mistyped `word`, if any is close."""
    import difflib  # (~2.5 ms) only for a mistake: not at the start of every command that checks labels

    return difflib.get_close_matches(word, possibilities, n=1)


def _not_a_string(path: Path, value: Any, raw: Mapping[Path, str]) -> SelectorProblem:
    return SelectorProblem(path, not_a_string_message(_where(path), value, raw.get(path)))


def not_a_string_message(where: str, value: Any, raw_text: str | None) -> str:
    """`'<where>' must be a string, not a number`, and, when the YAML text is known (`raw_text`),
    how to quote it: `YAML reads 1.10 as 1.1; quote it ("1.10") to keep it as written`."""
    message = f"{where} must be a string, not {type_name(value)}"
    if raw_text and value is not None:
        changed = f"YAML reads {raw_text} as {value!r}; " if str(value) != raw_text else ""
        message += f": {changed}quote it (\"{raw_text}\") to keep it as written"
    return message


def _where(path: Path) -> str:
    """`'servers.matchExpressions[0].key'`: the place a message is about."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"'{text}'" if text else "the selector"


def type_name(value: Any) -> str:
    """How a message names the type of a decoded YAML or JSON value: `a number`, `empty (null)`..."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- JSON Schema

# Both patterns are RE2- and ECMA-262-compatible (no lookaround), so the fragment can go into a
# CRD schema as well as the model schema. The structure and the lengths are two patterns ANDed:
# one regex cannot bound the prefix to 253 characters and the name to 63 without a lookahead.
LABEL_KEY_PATTERN = rf"^({_DNS1123_SUBDOMAIN_FMT}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
LABEL_KEY_LENGTHS_PATTERN = r"^([^/]{1,253}/)?[^/]{1,63}$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

_LABEL_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "allOf": [{"pattern": LABEL_KEY_PATTERN}, {"pattern": LABEL_KEY_LENGTHS_PATTERN}],
}
_LABEL_VALUE_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": LABEL_VALUE_MAX, "pattern": LABEL_VALUE_PATTERN}

_SERVERS_SCHEMA: dict[str, Any] = {
    "description": (
        "Which servers of the fleet hold this model: a Kubernetes label selector over the servers' labels. "
        "The requirements of matchLabels and matchExpressions are ANDed. An empty selector ({}) selects every "
        "server; so does leaving servers out. A selector that matches no server leaves the model on none, and "
        "its status says so."
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {
            "description": (
                "matchLabels is a map of {key,value} pairs. A single {key,value} in the matchLabels map is "
                "equivalent to an element of matchExpressions, whose key field is \"key\", the operator is "
                "\"In\", and the values array contains only \"value\"."
            ),
            "type": "object",
            "propertyNames": copy.deepcopy(_LABEL_KEY_SCHEMA),
            "additionalProperties": copy.deepcopy(_LABEL_VALUE_SCHEMA),
            "examples": [{"gpu": "a100"}, {"zone": "eu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}],
        },
        "matchExpressions": {
            "description": "matchExpressions is a list of label selector requirements. The requirements are ANDed.",
            "type": "array",
            "items": {
                "description": (
                    "A label selector requirement is a selector that contains values, a key, and an operator "
                    "that relates the key and values."
                ),
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"description": "key is the label key that the selector applies to.",
                            **copy.deepcopy(_LABEL_KEY_SCHEMA)},
                    "operator": {
                        "description": (
                            "operator represents a key's relationship to a set of values. Valid operators are "
                            "In, NotIn, Exists and DoesNotExist."
                        ),
                        "type": "string",
                        "enum": list(OPERATORS),
                    },
                    "values": {
                        "description": (
                            "values is an array of string values. If the operator is In or NotIn, the values "
                            "array must be non-empty. If the operator is Exists or DoesNotExist, the values "
                            "array must be empty."
                        ),
                        "type": "array",
                        "items": copy.deepcopy(_LABEL_VALUE_SCHEMA),
                    },
                },
                "allOf": [
                    {"if": {"required": ["operator"], "properties": {"operator": {"enum": [IN, NOT_IN]}}},
                     "then": {"required": ["values"], "properties": {"values": {"minItems": 1}}}},
                    {"if": {"required": ["operator"], "properties": {"operator": {"enum": [EXISTS, DOES_NOT_EXIST]}}},
                     "then": {"properties": {"values": {"maxItems": 0}}}},
                ],
            },
            "examples": [[{"key": "gpu", "operator": "In", "values": ["a100", "h100"]}]],
        },
    },
    "examples": [
        {"matchLabels": {"zone": "eu"}},
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100", "h100"]},
                              {"key": "maintenance", "operator": "DoesNotExist"}]},
    ],
}


def servers_property_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the model file's `servers` property, Kubernetes-style, with
    descriptions; a fresh copy for the caller to put under `properties.servers`.

    It accepts exactly what `parse_selector` accepts (a property test holds the two together), so
    editors show the same errors the loader gives.
    """
    return copy.deepcopy(_SERVERS_SCHEMA)
