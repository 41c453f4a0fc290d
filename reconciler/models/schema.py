"""The model file JSON Schema (`schemas/model.schema.json`): loading it and explaining its errors.

The schema is the single source of truth for what a model file may say; the loader, the API and
editors all use the same file. Errors are turned into messages that name the field and, for YAML's
typing traps, say how to fix the file.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema (~50-110 ms to import) is needed only for a document the quick check does not pass
    import jsonschema

from .. import data_files
from . import selector
from .selector import type_name

SCHEMA_FILE = "model.schema.json"


@functools.cache
def model_schema() -> dict[str, Any]:
    """The parsed model schema, as shipped with the package."""
    text = data_files().joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def pattern_matches(pattern: str, value: str) -> bool:
    """JSON Schema's `pattern` (ECMA-262): unlike Python's, its `$` does not match before a final
    newline, so `name: "phi3\\n"` must not pass `^[a-z0-9]+$`."""
    if pattern.endswith("$") and value.endswith("\n"):
        return False
    return _compiled(pattern).search(value) is not None


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _strict_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    import jsonschema  # already imported: only `_validator`'s validators call this

    if isinstance(instance, str) and not pattern_matches(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def is_rfc3339(value: object) -> bool:
    """An RFC 3339 date-time (jsonschema only checks `date-time` with an optional extra package)."""
    if not isinstance(value, str):
        return True  # not a string: the `type` keyword reports that
    match = _RFC3339.fullmatch(value)
    if not match:
        return False
    # Check the calendar and clock values; the fraction's form was checked by the pattern (and
    # Python 3.10's fromisoformat only takes 3 or 6 digits of it).
    plain = value[: match.start(1)] if match.group(1) else value[: match.start(2)]
    try:
        datetime.fromisoformat(plain.replace("t", "T").replace(" ", "T"))
    except ValueError:
        return False
    return True


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema  # here: valid documents pass `_quick_check` alone, and most processes read no invalid one

    schema = model_schema()
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    cls = jsonschema.validators.extend(base, {"pattern": _strict_pattern})
    formats = jsonschema.FormatChecker()
    formats.checks("date-time")(is_rfc3339)
    return cls(schema, format_checker=formats)


@functools.cache
def _quick_check() -> Callable[[Any], bool] | None:
    try:
        return _compile(model_schema(), _DELEGATED)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


_ANNOTATIONS = {"$schema", "$id", "title", "description", "examples", "default", "$comment"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
}


def _is_selector(value: Any) -> bool:
    return isinstance(selector.parse_selector(value), selector.LabelSelector)


# Properties whose schema is checked by the code that parses them: `servers` is a label selector,
# whose schema (items, enum, if/then) the interpreter below does not know; `parse_selector` accepts
# exactly what that schema accepts (tests/test_selector.py holds the two together).
_DELEGATED: dict[str, Callable[[Any], bool]] = {"servers": _is_selector}


def _compile(schema: Mapping[str, Any], delegated: Mapping[str, Callable[[Any], bool]] = {}) -> Callable[[Any], bool]:
    """A fast yes-or-don't-know check interpreted from the schema itself.

    jsonschema walks the schema anew for every document, which costs more than parsing the YAML;
    this turns the keywords the model schema uses into one closure. It only ever says "valid" for
    documents jsonschema accepts too (a property test holds it to that); anything else, and any
    schema keyword it does not know, falls back to jsonschema, which also explains the errors.
    """
    unknown = set(schema) - _ANNOTATIONS - {"type", "required", "properties", "additionalProperties",
                                             "propertyNames", "pattern", "minLength", "maxLength", "format"}
    if unknown or schema.get("format", "date-time") != "date-time" or schema.get("type", "object") not in _TYPES:
        raise _Unsupported(unknown)
    if schema.get("type") == "string" and not {"required", "properties", "additionalProperties", "propertyNames"} & set(schema):
        return _string_check(schema)
    checks: list[Callable[[Any], bool]] = []
    if "type" in schema:
        checks.append(_TYPES[schema["type"]])
    if "pattern" in schema:
        pattern = schema["pattern"]
        checks.append(lambda v: not isinstance(v, str) or pattern_matches(pattern, v))
    if "minLength" in schema or "maxLength" in schema:
        low, high = schema.get("minLength", 0), schema.get("maxLength", float("inf"))
        checks.append(lambda v: not isinstance(v, str) or low <= len(v) <= high)
    if "format" in schema:
        checks.append(is_rfc3339)
    if "required" in schema:
        required = frozenset(schema["required"])
        checks.append(lambda v: not isinstance(v, dict) or v.keys() >= required)
    if {"properties", "additionalProperties", "propertyNames"} & set(schema):
        properties = {name: delegated.get(name) or _compile(sub) for name, sub in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties", True)
        extra_check = None if isinstance(extra, bool) else _compile(extra)
        names = _compile(schema["propertyNames"]) if "propertyNames" in schema else None

        def members(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for name, item in value.items():
                if names is not None and not names(name):
                    return False
                check = properties.get(name)
                if check is None:
                    if extra is False or (extra_check is not None and not extra_check(item)):
                        return False
                elif not check(item):
                    return False
            return True

        checks.append(members)
    if len(checks) == 1:
        return checks[0]

    def every(value: Any) -> bool:
        for check in checks:
            if not check(value):
                return False
        return True

    return every


def _string_check(schema: Mapping[str, Any]) -> Callable[[Any], bool]:
    """`_compile`'s check of a string's schema (`type`, `pattern`, `minLength`, `maxLength`, `format`)
    as one function: a model file is mostly strings, each checked by each keyword."""
    pattern = schema.get("pattern")
    regex = _compiled(pattern) if pattern is not None else None
    anchored = pattern is not None and pattern.endswith("$")  # as `pattern_matches` reads `$`
    low, high = schema.get("minLength", 0), schema.get("maxLength", float("inf"))
    dated = "format" in schema

    def string(value: Any) -> bool:
        if not isinstance(value, str) or not low <= len(value) <= high:
            return False
        if regex is not None and ((anchored and value.endswith("\n")) or regex.search(value) is None):
            return False
        return not dated or is_rfc3339(value)

    return string


def field_names() -> tuple[str, ...]:
    """The top-level fields a model file may have, in schema order."""
    return tuple(model_schema()["properties"])


@dataclass(frozen=True)
class SchemaError:
    """One way a document breaks the schema: where (a path of keys) and why."""

    path: tuple[str | int, ...]
    message: str


def quick_valid(document: Any) -> bool:
    """Does the schema's quick check alone find `document` valid? (False: not known; `validate` says.)"""
    quick = _quick_check()
    return quick is not None and quick(document)


def validate(document: Any, raw_scalars: Mapping[tuple[str | int, ...], str] | None = None) -> list[SchemaError]:
    """Check `document` against the model schema; an empty list means valid.

    `raw_scalars` maps the path of each scalar YAML read as a non-string to the text written in the
    file, so that a hint can show what to quote (`tag: 1.10` is the float 1.1).
    """
    quick = _quick_check()
    if quick is not None and quick(document):
        return []
    validator = _validator()
    if validator.is_valid(document):
        return []
    raw = raw_scalars or {}
    # A selector's problems are told in Kubernetes's words, by the parser that knows them.
    errors = {e: None for error in validator.iter_errors(document)
              if not _in_selector(error) for e in _explain(error, raw)}  # unique, in order
    if isinstance(document, dict) and "servers" in document:
        parsed = selector.parse_selector(document["servers"], ("servers",), raw)
        if not isinstance(parsed, selector.LabelSelector):
            errors.update({SchemaError(p.path, p.message): None for p in parsed})
    return sorted(errors, key=lambda e: [str(p) for p in e.path])


def _in_selector(error: jsonschema.ValidationError) -> bool:
    return bool(error.absolute_path) and error.absolute_path[0] == "servers"


def _explain(error: jsonschema.ValidationError, raw: Mapping[tuple[str | int, ...], str]) -> Iterator[SchemaError]:
    path = tuple(error.absolute_path)
    where = _dotted(path)
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        for name in missing:
            yield SchemaError(path, f"missing required field '{_dotted(path + (name,))}'")
    elif error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        allowed = list(error.schema.get("properties", {}))
        for name in error.instance:
            if name in allowed:
                continue
            hint = difflib.get_close_matches(str(name), allowed, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f" (allowed: {', '.join(allowed)})"
            yield SchemaError(path + (name,), f"unknown field '{_dotted(path + (name,))}'{suggestion}")
    elif error.validator == "type":
        yield SchemaError(path, _type_message(where, error.validator_value, error.instance, raw.get(path)))
    elif "propertyNames" in error.schema_path:
        yield SchemaError(path, f"'{where}' has an invalid key {error.instance!r}: a key is an optional DNS "
                          "subdomain prefix and '/', then at most 63 letters, digits, '-', '_' and '.'")
    elif error.validator == "minLength" and error.instance == "":
        yield SchemaError(path, f"field '{where}' must not be empty")
    elif error.validator in ("pattern", "format"):
        if error.instance == "" and error.schema.get("minLength", 0) > 0:
            return  # the minLength error already says it is empty: one message is enough
        yield SchemaError(path, f"field '{where}' has an invalid value {error.instance!r}: {_pattern_hint(path)}")
    else:
        yield SchemaError(path, f"field '{where}': {error.message}" if path else error.message)


def _type_message(where: str, expected: str | list[str], instance: Any, raw_text: str | None) -> str:
    expected_name = expected if isinstance(expected, str) else " or ".join(expected)
    actual = type_name(instance)
    message = f"field '{where}' must be a {expected_name}, not {actual}" if where else (
        f"a model file must be a mapping of fields, not {actual}"
    )
    if expected == "string" and raw_text and instance is not None:
        key = where.rsplit(".", 1)[-1]
        # `tag: 7` reads as 7: saying "as 7" would show no difference, so name the type instead.
        read_as = actual if repr(instance).lower() == raw_text.lower() else repr(instance)
        message += f": YAML reads {raw_text} as {read_as}; write {key}: \"{raw_text}\" to keep it as written"
    return message


def _pattern_hint(path: tuple[str | int, ...]) -> str:
    hints = {
        "name": "an Ollama model name is letters, digits, '.', '_' and '-', with '/' between path parts",
        "tag": "an Ollama tag is letters, digits, '.', '_' and '-'",
        "refreshRequestedAt": "write an RFC 3339 time such as 2026-11-25T14:00:00Z",
    }
    if path and path[0] == "labels":
        return "a label value is at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    return hints.get(str(path[0]) if path else "", "see schemas/model.schema.json")


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)
