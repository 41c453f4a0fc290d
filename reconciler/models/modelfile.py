"""One model file: from bytes to a validated `ModelFields`, or to the problems that stop it.

Parsing is deliberately strict. A model file is tiny and decides what is pulled into (or deleted
from) production, so anything ambiguous is an error with a line number rather than a guess:
duplicate keys, several documents, anchors and aliases (the 'billion laughs' attack needs them, and
a model file never does), non-string keys, and scalars that YAML silently retypes.
"""

from __future__ import annotations

import sys

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from . import schema, strictyaml
from .selector import LabelSelector

MAX_FILE_BYTES = 64 * 1024
"""Files larger than this are refused before they are parsed: a model file is a few hundred bytes."""

MAX_DEPTH = strictyaml.MAX_DEPTH

MODELINE = "# yaml-language-server: $schema=../../schemas/model.schema.json"

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class FileError:
    """Something wrong inside a file: a message and, where known, the 1-based line."""

    message: str
    line: int | None = None


# Most files have no labels or annotations: they share one empty mapping rather than hold two empty
# dicts each (at 100,000 models, two loaders' worth of them came to 24 MiB). Fields are never mutated.
NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)  # slots: one per model file, kept for as long as the file is unchanged
class ModelFields:
    """The validated content of a model file, independent of where the file lives."""

    name: str
    tag: str
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    annotations: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    suspend: bool = False
    prune: bool = True
    refresh_requested_at: str | None = None
    servers: LabelSelector | None = None  # which servers of a fleet hold the model; None: every one

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
        if self.servers is not None:
            document["servers"] = self.servers.to_document()
        return document


ParseResult = ModelFields | tuple[FileError, ...]
"""What parsing a file's content gives: the fields, or why there are none."""


class FileTooLarge(Exception):
    """Raised by readers that refuse to read a file over `MAX_FILE_BYTES`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for a model file")
        self.errors: tuple[FileError, ...] = (FileError(str(self)),)


_WORDING = strictyaml.Wording(
    files="model files",
    several="more than one YAML document ('---') in the file; put each model in its own file",
    empty="file is empty; a model file needs at least 'name' and 'tag'",
    depth="a model file needs four (its fields, the servers selector, its expressions, their values)",
)


def parse(content: bytes) -> ParseResult:
    """Parse and validate one model file's bytes. Never raises for bad input."""
    if len(content) > MAX_FILE_BYTES:
        return FileTooLarge(len(content)).errors
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (FileError(f"file is not valid UTF-8 (byte {exc.start})"),)
    # Nearly every file is a few `key: value` lines: read in one pass, and when the schema's quick
    # check passes it too, that is the answer. Anything else, valid or not, takes the full reader and
    # the schema's full check, which say what is wrong and where.
    simple = strictyaml.load_simple(text)
    if simple is not None and schema.quick_valid(simple):
        return fields_from_document(simple)
    return _parse_strictly(text)


def _parse_strictly(text: str) -> ParseResult:
    """`parse` of a decoded text by the full strict reader and the schema's full check."""
    try:
        loaded = strictyaml.load(text, _WORDING, timestamps_as_text=True)  # the schema checks their form
    except strictyaml.Rejected as rejected:
        return (FileError(rejected.message, rejected.line),)
    errors = schema.validate(loaded.value, loaded.raw_scalars)
    if errors:
        return tuple(FileError(e.message, strictyaml.line_for(e.path, loaded.lines)) for e in errors)
    return fields_from_document(loaded.value)


def fields_from_document(document: dict[str, Any]) -> ModelFields:
    """The fields of a document that passed `schema.validate` (a parsed file or an API body)."""
    return ModelFields(
        name=document["name"],
        tag=sys.intern(document["tag"]),  # a tag ("latest", "1b") is shared by thousands of files
        labels=document.get("labels") or NO_LABELS,
        annotations=document.get("annotations") or NO_LABELS,
        suspend=document.get("suspend", False),
        prune=document.get("prune", True),
        refresh_requested_at=document.get("refreshRequestedAt"),
        servers=LabelSelector.parse(document["servers"], ("servers",)) if "servers" in document else None,
    )


def render(fields: ModelFields) -> bytes:
    """The canonical text of a model file, as the API writes it (with the editor modeline)."""
    body = yaml.safe_dump(fields.to_document(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"{MODELINE}\n{body}".encode("utf-8")
