"""Strict YAML, for the small files that decide what runs where (model files, the servers file).

Anything ambiguous is an error with a line number rather than a guess: several documents, duplicate
keys, anchors and aliases (the 'billion laughs' attack needs them, and such a file never does),
merge keys, non-string keys, and nesting deeper than such a file ever needs (checked before the
text is composed, so that nothing afterwards recurses deeply). Values come back as Python values
with the line of each, and the text of every plain scalar YAML read as something other than a
string, so that a caller can say `YAML reads 1.10 as 1.1`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import yaml

try:  # libyaml's parser is several times faster; PyYAML falls back to pure Python without it
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_DEPTH = 16
"""Deepest nesting of mappings and sequences accepted; a model file needs two (the file, its labels)."""

# Every level of nesting opens with one of these characters (a flow mapping or sequence, a block
# sequence entry, a block mapping's value indicator, an explicit key), so a text with fewer of them
# than MAX_DEPTH cannot be too deep, and the exact check is skipped for ordinary files.
_NESTING_INDICATORS = "{[-:?"

_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path = tuple[str | int, ...]


class Rejected(Exception):
    """The text is not a strict YAML document: `message`, at `line` where known (1-based)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Wording:
    """How the messages name the kind of file being read."""

    files: str  # what anchors and merge keys "are not allowed in": "model files", "a servers file"
    several: str  # the message for more than one document
    empty: str  # the message for an empty file
    depth: str  # after "nested more than N levels deep (at line L); ": what such a file needs


@dataclass(frozen=True)
class Document:
    """A file's one document as Python values; `lines` and `raw_scalars` are keyed by path."""

    value: Any
    lines: dict[Path, int]
    raw_scalars: dict[Path, str]


def load(text: str, wording: Wording, *, timestamps_as_text: bool = False) -> Document:
    """The one document of `text`, or `Rejected`. `timestamps_as_text` keeps a timestamp as written
    (for a schema that checks its form) instead of turning it into a datetime."""
    _check_depth(text, wording)
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "single document" in f"{exc.context} {exc.problem}":
                raise Rejected(wording.several, _mark_line(exc.problem_mark)) from None
            raise
        if node is None:
            raise Rejected(wording.empty, None)
        # An alias is written `*name`: a text without `*` has none, and the alias check is skipped.
        builder = _Builder(loader, wording, timestamps_as_text, aliases_possible="*" in text)
        value = builder.build(node, ())
        return Document(value, builder.lines, builder.raw_scalars)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise Rejected(f"YAML syntax error: {problem}", _mark_line(mark)) from None
    except yaml.YAMLError as exc:
        raise Rejected(f"YAML error: {exc}", None) from None
    finally:
        loader.dispose()


# The plain subset `load_simple` reads: printable ASCII lines, each a comment at the start of the line,
# blank, or `key: value` (at the start of the line, or indented under a `key:` that opens a nested
# mapping), the value a single-line quoted scalar or a plain one of characters that never start or
# end anything in YAML. Anything else is for `load`.
_SIMPLE_LINE = re.compile(
    r'(?P<indent> *)(?P<key>[A-Za-z0-9][A-Za-z0-9._/-]*):'
    r'(?: (?:"(?P<double>[ !#-\[\]-~]*)"|\'(?P<single>[ -&(-~]*)\'|(?P<plain>[A-Za-z0-9][A-Za-z0-9._/-]*)))?'
    r'|(?:#[ -~]*)?')
_BOOL_TAG = "tag:yaml.org,2002:bool"


def load_simple(text: str) -> dict[str, Any] | None:
    """The document of `text` when it is in the plain subset of YAML that nearly every model file
    is written in (`key: value` lines, one level of nested mapping, whole-line comments), read in
    one pass without composing nodes; None for anything else, which `load` then reads (and
    refuses, where it must, with its line). Where it gives a value, that value is exactly what
    `load` gives: scalars are typed by the loader's own resolvers, and anything it would refuse
    (a duplicate key, a key that is not a string) or read otherwise (numbers, dates, nulls) is
    left to it."""
    document: dict[str, Any] = {}
    nested: dict[str, Any] | None = None  # the mapping indented lines go in, under the last `key:`
    indent = ""  # the nested mapping's indentation, once its first line set it
    for line in text.split("\n"):
        match = _SIMPLE_LINE.fullmatch(line)
        if match is None:
            return None
        spaces, key, double, single, plain = match.groups()
        if key is None:  # blank, or a comment
            continue
        if spaces:
            if nested is None or (indent and spaces != indent):
                return None
            indent, target = spaces, nested
        else:
            if nested is not None and not nested:  # `key:` with nothing under it: null, `load`'s to read
                return None
            nested, indent, target = None, "", document
        if key in target or _key_tag(key) != _STR_TAG:
            return None
        if double is not None:
            target[key] = double
        elif single is not None:
            target[key] = single
        elif plain is None:
            if target is not document:
                return None  # a nested mapping's key without a value
            nested = target[key] = {}
        else:
            tag = _plain_tag(plain)
            if tag == _STR_TAG:
                target[key] = plain
            elif tag == _BOOL_TAG:
                target[key] = _Loader.bool_values[plain.lower()]
            else:
                return None
    if not document or (nested is not None and not nested):
        return None
    return document


@functools.lru_cache(maxsize=256)  # keys are the same few in every file
def _key_tag(key: str) -> str:
    return _plain_tag(key)


def _plain_tag(value: str) -> str:
    """The tag the loader resolves a plain scalar `value` (not empty) to, as `Resolver.resolve` does."""
    resolvers = _Loader.yaml_implicit_resolvers
    for candidates in (resolvers.get(value[0]), resolvers.get(None)):
        for tag, regexp in candidates or ():
            if regexp.match(value):
                return tag
    return _STR_TAG


def line_for(path: Path, lines: dict[Path, int]) -> int | None:
    """The line of the value at `path`, or of the nearest value that holds it."""
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path) or None


def _check_depth(text: str, wording: Wording) -> None:
    """Refuse nesting deeper than MAX_DEPTH, reading parser events (iteratively, nothing composed)."""
    if sum(text.count(c) for c in _NESTING_INDICATORS) < MAX_DEPTH:
        return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(event.start_mark, wording)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        # libyaml looks ahead in flow collections and stops at its own limit (1000) first.
        if isinstance(exc, yaml.MarkedYAMLError) and "nesting depth" in str(exc.problem):
            raise _too_deep(exc.problem_mark, wording) from None
        # Any other error: composing reports it, with its line.


def _too_deep(mark: Any, wording: Wording) -> Rejected:
    line = _mark_line(mark)
    return Rejected(f"mappings and lists are nested more than {MAX_DEPTH} levels deep (at line {line}); "
                    f"{wording.depth}", line)


class _Builder:
    """Turns a composed YAML node tree into Python values, recording the line of every value."""

    def __init__(self, loader: yaml.SafeLoader, wording: Wording, timestamps_as_text: bool, *,
                 aliases_possible: bool = True) -> None:
        self._loader = loader
        self._wording = wording
        self._timestamps_as_text = timestamps_as_text
        self._seen: set[int] | None = set() if aliases_possible else None
        self.lines: dict[Path, int] = {}
        self.raw_scalars: dict[Path, str] = {}

    def build(self, node: yaml.Node, path: Path) -> Any:
        # The composer hands out the very same node object for every alias of an anchor, so a node
        # seen twice is an alias. Refusing it here stops alias bombs before anything expands.
        seen = self._seen
        if seen is not None:
            if id(node) in seen:
                line = _mark_line(node.start_mark)
                raise Rejected(f"YAML anchors and aliases ('&', '*') are not allowed in {self._wording.files} "
                               f"(anchor at line {line})", line)
            seen.add(id(node))
        self.lines[path] = node.start_mark.line + 1
        tag = node.tag
        if tag == _STR_TAG and type(node) is yaml.ScalarNode:
            # What SafeConstructor makes of a string scalar is its text: the same value without
            # construct_object's per-node bookkeeping (most values of a model file are strings).
            return node.value
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if tag == _TIMESTAMP_TAG and self._timestamps_as_text:
            return node.value
        value = self._loader.construct_object(node)
        if not isinstance(value, str) and not node.style:  # plain: None (PyYAML) or "" (libyaml)
            self.raw_scalars[path] = node.value
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int | None] = {}
        for key_node, value_node in node.value:
            line = _mark_line(key_node.start_mark)
            if key_node.tag == _MERGE_TAG:
                raise Rejected(f"YAML merge keys ('<<') are not allowed in {self._wording.files}", line)
            if not isinstance(key_node, yaml.ScalarNode):
                raise Rejected("keys must be plain strings, not lists or mappings", line)
            if key_node.tag != _STR_TAG:
                raise Rejected(f"keys must be strings; quote the key {key_node.value!r} "
                               "(YAML reads it as another type)", line)
            key = key_node.value
            if key in result:
                raise Rejected(f"duplicate key '{key}' (first at line {first_line[key]})", line)
            first_line[key] = line
            result[key] = self.build(value_node, path + (key,))
            # Report a field at the line of its key, where a reader looks for it.
            self.lines[path + (key,)] = line or 0
        return result


def _mark_line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None
