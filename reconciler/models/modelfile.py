"""One model file: from bytes to a validated `ModelFields`, or to the problems that stop it.

Parsing is deliberately strict. A model file is tiny and decides what is pulled into (or deleted
from) production, so anything ambiguous is an error with a line number rather than a guess:
duplicate keys, several documents, anchors and aliases (the 'billion laughs' attack needs them, and
a model file never does), non-string keys, and scalars that YAML silently retypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from . import schema

try:  # libyaml's parser is several times faster; PyYAML falls back to pure Python without it
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_FILE_BYTES = 64 * 1024
"""Files larger than this are refused before they are parsed: a model file is a few hundred bytes."""

MAX_DEPTH = 16
"""Deepest nesting of mappings and sequences accepted; a model file needs two (the file, its labels).
Checked before the file is composed, so that no later step (composing, building values, the schema)
ever recurses deeply."""

# Every level of nesting opens with one of these characters (a flow mapping or sequence, a block
# sequence entry, a block mapping's value indicator, an explicit key), so a text with fewer of them
# than MAX_DEPTH cannot be too deep, and the exact check is skipped for ordinary files.
_NESTING_INDICATORS = "{[-:?"

MODELINE = "# yaml-language-server: $schema=../../schemas/model.schema.json"

_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class FileError:
    """Something wrong inside a file: a message and, where known, the 1-based line."""

    message: str
    line: int | None = None


@dataclass(frozen=True)
class ModelFields:
    """The validated content of a model file, independent of where the file lives."""

    name: str
    tag: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    suspend: bool = False
    prune: bool = True
    refresh_requested_at: str | None = None

    @property
    def reference(self) -> str:
        """The reference Ollama knows the model by, `name:tag`."""
        return f"{self.name}:{self.tag}"

    def to_document(self) -> dict[str, Any]:
        """The file's fields as a mapping, leaving out those that have their default value."""
        document: dict[str, Any] = {"name": self.name, "tag": self.tag}
        if self.labels:
            document["labels"] = dict(self.labels)
        if self.annotations:
            document["annotations"] = dict(self.annotations)
        if self.suspend:
            document["suspend"] = True
        if not self.prune:
            document["prune"] = False
        if self.refresh_requested_at is not None:
            document["refreshRequestedAt"] = self.refresh_requested_at
        return document


ParseResult = ModelFields | tuple[FileError, ...]
"""What parsing a file's content gives: the fields, or why there are none."""


class FileTooLarge(Exception):
    """Raised by readers that refuse to read a file over `MAX_FILE_BYTES`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for a model file")
        self.errors: tuple[FileError, ...] = (FileError(str(self)),)


class _Reject(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.error = FileError(message, line)


def parse(content: bytes) -> ParseResult:
    """Parse and validate one model file's bytes. Never raises for bad input."""
    if len(content) > MAX_FILE_BYTES:
        return FileTooLarge(len(content)).errors
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (FileError(f"file is not valid UTF-8 (byte {exc.start})"),)
    try:
        document, lines, raw_scalars = _load_single_document(text)
    except _Reject as reject:
        return (reject.error,)
    errors = schema.validate(document, raw_scalars)
    if errors:
        return tuple(FileError(e.message, _line_for(e.path, lines)) for e in errors)
    return fields_from_document(document)


def fields_from_document(document: dict[str, Any]) -> ModelFields:
    """The fields of a document that passed `schema.validate` (a parsed file or an API body)."""
    return ModelFields(
        name=document["name"],
        tag=document["tag"],
        labels=document.get("labels", {}),
        annotations=document.get("annotations", {}),
        suspend=document.get("suspend", False),
        prune=document.get("prune", True),
        refresh_requested_at=document.get("refreshRequestedAt"),
    )


def render(fields: ModelFields) -> bytes:
    """The canonical text of a model file, as the API writes it (with the editor modeline)."""
    body = yaml.safe_dump(fields.to_document(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"{MODELINE}\n{body}".encode("utf-8")


def _load_single_document(text: str) -> tuple[Any, dict[Path, int], dict[Path, str]]:
    _check_depth(text)
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "single document" in f"{exc.context} {exc.problem}":
                raise _Reject(
                    "more than one YAML document ('---') in the file; put each model in its own file",
                    _mark_line(exc.problem_mark),
                ) from None
            raise
        if node is None:
            raise _Reject("file is empty; a model file needs at least 'name' and 'tag'", None)
        builder = _Builder(loader)
        document = builder.build(node, ())
        return document, builder.lines, builder.raw_scalars
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise _Reject(f"YAML syntax error: {problem}", _mark_line(mark)) from None
    except yaml.YAMLError as exc:
        raise _Reject(f"YAML error: {exc}", None) from None
    finally:
        loader.dispose()


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, reading parser events (iteratively, nothing composed)."""
    if sum(text.count(c) for c in _NESTING_INDICATORS) < MAX_DEPTH:
        return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        # libyaml looks ahead in flow collections and stops at its own limit (1000) first.
        if isinstance(exc, yaml.MarkedYAMLError) and "nesting depth" in str(exc.problem):
            raise _too_deep(exc.problem_mark) from None
        # Any other error: composing reports it, with its line.


def _too_deep(mark: Any) -> _Reject:
    line = _mark_line(mark)
    return _Reject(f"mappings and lists are nested more than {MAX_DEPTH} levels deep (at line {line}); a model "
                   "file needs two (its fields, and the labels or annotations in them)", line)


class _Builder:
    """Turns a composed YAML node tree into Python values, recording the line of every value."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self._loader = loader
        self._seen: set[int] = set()
        self.lines: dict[Path, int] = {}
        self.raw_scalars: dict[Path, str] = {}

    def build(self, node: yaml.Node, path: Path) -> Any:
        # The composer hands out the very same node object for every alias of an anchor, so a node
        # seen twice is an alias. Refusing it here stops alias bombs before anything expands.
        if id(node) in self._seen:
            line = _mark_line(node.start_mark)
            raise _Reject(f"YAML anchors and aliases ('&', '*') are not allowed in model files (anchor at line {line})", line)
        self._seen.add(id(node))
        self.lines[path] = _mark_line(node.start_mark) or 0
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # keep timestamps as written; the schema checks their form
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
                raise _Reject("YAML merge keys ('<<') are not allowed in model files", line)
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Reject("keys must be plain strings, not lists or mappings", line)
            if key_node.tag != _STR_TAG:
                raise _Reject(f"keys must be strings; YAML reads the key {key_node.value} as another type, quote it", line)
            key = key_node.value
            if key in result:
                raise _Reject(f"duplicate key '{key}' (first at line {first_line[key]})", line)
            first_line[key] = line
            result[key] = self.build(value_node, path + (key,))
            # Report a field at the line of its key, where a reader looks for it.
            self.lines[path + (key,)] = line or 0
        return result


def _line_for(path: Path, lines: dict[Path, int]) -> int | None:
    while path not in lines and path:
        path = path[:-1]
    line = lines.get(path)
    return line or None


def _mark_line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None
