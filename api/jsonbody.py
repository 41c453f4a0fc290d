"""Reading a JSON document that a client sent: the one parser every endpoint uses.

Strict, so that what the API acts on is what the client meant, and bounded, so that no document
can crash the parser or whatever walks the result:

- nesting deeper than `MAX_DEPTH` is refused before parsing (Python's parser recurses, and raises
  RecursionError near 1,000 levels, which would be a 500);
- a key that appears twice in one object is refused (`{"name": "a", "name": "b"}` means nothing
  certain: parsers disagree on which one wins);
- only JSON: no `NaN` or `Infinity`, no trailing text, UTF-8 only.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

MAX_DEPTH = 64  # far beyond the API's bodies (2) and Git hosts' push payloads (about 6)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class JsonBodyError(ValueError):
    """The body is not a JSON document the API reads; the message says why (for a 400)."""


def read_json(body: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in `body`; raises JsonBodyError when it is not one, nests deeper than
    `max_depth` or repeats a key within an object."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonBodyError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = body
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonBodyError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except JsonBodyError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: a guard, the depth check stops it first
        raise JsonBodyError(str(exc)) from None


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise JsonBodyError(f"duplicate key {repeated[:100]!r} in an object")
    return document


def _no_constant(name: str) -> NoReturn:
    raise JsonBodyError(f"{name} is not JSON")
