"""The one-pass reader of plain model files gives exactly what the strict reader gives, or nothing.

`strictyaml.load_simple` reads the `key: value` files nearly every repository is made of without
YAML's machinery; `modelfile.parse` trusts its answer only when the schema's quick check passes it,
and takes the full strict reader otherwise. So a file's result (its fields, or its errors word for
word) must be the same whichever way it went: these tests generate texts in and around the plain
subset, including YAML's traps (retyped scalars, nulls, duplicates, continuation lines, tabs,
comments, odd indentation), and hold the two readers together.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ollama_gitops.reconciler.models import modelfile, strictyaml
from ollama_gitops.reconciler.models.modelfile import ModelFields

# Keys and values the one-pass reader takes, and YAML's traps around them.
KEYS = ["name", "tag", "labels", "annotations", "suspend", "prune", "team", "x", "a.b/c", "Name", "servers"]
TRAP_KEYS = ["yes", "No", "on", "null", "true", "1", "0x1F", "1.5", "<<", "-a", "a b", "refreshRequestedAt"]
VALUES = ["llama3.2", "1b", "8b-instruct-q4_K_M", "true", "false", "Off", "on", "'1b'", '"1b"', "''", '""', '"#x"',
          "'a: b'", "a/b", "a.", "-x", "'yes'", '"1.10"', "x" * 70]
TRAP_VALUES = ["null", "~", "Null", "1", "1.10", "0x1F", "1e3", ".inf", "-1", "2026-11-25", "2026-11-25T14:00:00Z",
               "'it''s'", '"a\\"b"', "a #c", "a:b", "a: b", "&x a", "*x", "!!str 1", "[a]", "{a: b}", "|", ">", "- a",
               "a ", " a", "a\tb", "\u00e9", "@a", "`a", "%a", "-", "---", "...", "'a", '"a']
TRAP_LINES = ["  # indented comment", "#", "---", "...", "%YAML 1.1", "  ", "- a", "  continued", "name:  two spaces",
              "name: a # trailing", "\ufeffname: a", "\tname: a", "name:\ta"]

entry = st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(KEYS), st.sampled_from(VALUES))
nested = st.builds(lambda k, indent, items: "\n".join([f"{k}:", *(f"{indent}{item}" for item in items)]),
                   st.sampled_from(KEYS), st.sampled_from([" ", "  ", "    "]), st.lists(entry, min_size=1, max_size=3))
trap = st.one_of(
    st.builds(lambda i, k, v: f"{i}{k}: {v}", st.sampled_from(["", "", " ", "  ", "   "]),
              st.sampled_from(KEYS + TRAP_KEYS), st.sampled_from(VALUES + TRAP_VALUES)),
    st.builds(lambda i, k: f"{i}{k}:", st.sampled_from(["", "  "]), st.sampled_from(KEYS + TRAP_KEYS)),
    st.sampled_from(TRAP_LINES),
)
line = st.one_of(entry, entry, entry, nested, st.sampled_from(["", "# a comment"]), trap)
free = st.builds(lambda lines, end: "\n".join(lines) + end, st.lists(line, max_size=7),
                 st.sampled_from(["\n", "\n", "", "\r\n"]))
# A model file's two fields first, then anything: most of these are valid model files.
model_file = st.builds(lambda name, tag, lines: "\n".join([f"name: {name}", f"tag: {tag}", *lines]) + "\n",
                       st.sampled_from(["llama3.2", "llama3.2", "'x'", '"hf.co/a/b"', "bad name", "-x"]),
                       st.sampled_from(["1b", '"1b"', "'8b'", "latest", "1.10", "true", "x" * 130]),
                       st.lists(st.one_of(st.sampled_from(["labels:\n  team: a\n  tier: '1'", "prune: false", "suspend: yes",
                                                           "annotations:\n  owner: 'a@b.c'", "# c", ""]),
                                          st.sampled_from(["labels:\n  team: b", "prune: true", "suspend: Off"]), line),
                                max_size=3))
texts = st.one_of(free, model_file, model_file)

# Files as people and the API write them: the reader must take these (else the test above proves little).
PLAIN_FILES = [
    'name: model7\ntag: "1b"\n',
    "name: llama3.2\ntag: 1b\n",
    f"{modelfile.MODELINE}\nname: gemma3\ntag: '1b'\nlabels:\n  team: search\n  app.kubernetes.io/part-of: x\nprune: false\n",
    "# a comment\nname: a\n\ntag: b\nannotations:\n    owner: 'a@b.c'\nsuspend: true\n",
]


@settings(max_examples=600, deadline=None)
@given(texts)
@example("name: a\ntag: b\nlabels:\n# c\n  x: y\n")
@example("name: a\n  b\n")
@example("labels:\n  a: b\n   c\n")
def test_the_one_pass_reader_gives_what_the_strict_reader_gives_or_nothing(text: str) -> None:
    simple = strictyaml.load_simple(text)
    if simple is None:
        return
    document = strictyaml.load(text, modelfile._WORDING, timestamps_as_text=True)
    assert simple == document.value
    # The same types too (True == 1, but a tag read as True is an error, not the string "1").
    assert repr(simple) == repr(document.value)


@settings(max_examples=600, deadline=None)
@given(texts)
def test_a_file_parses_to_the_same_fields_or_the_same_errors_whichever_reader_took_it(text: str) -> None:
    assert modelfile.parse(text.encode()) == modelfile._parse_strictly(text)


@pytest.mark.parametrize("text", PLAIN_FILES)
def test_plain_files_are_read_in_one_pass(text: str) -> None:
    simple = strictyaml.load_simple(text)
    assert simple is not None and simple == strictyaml.load(text, modelfile._WORDING).value
    assert isinstance(modelfile.parse(text.encode()), ModelFields)


def test_a_rendered_file_is_read_in_one_pass() -> None:
    fields = ModelFields(name="llama3", tag="8", labels={"t": "1", "team": "a"}, prune=False, suspend=True)
    assert strictyaml.load_simple(modelfile.render(fields).decode()) == fields.to_document()


@pytest.mark.parametrize("text", [
    "name: a\ntag: 1.10\n", "name: a\ntag: b\nname: c\n", "name: a\ntag: yes\n", "name: a\ntag: b\nlabels:\n",
    "name: a\ntag: b\n1: x\n", "name: a\ntag: b\nprnue: false\n", "",
])
def test_what_the_one_pass_reader_does_not_take_keeps_the_strict_readers_errors(text: str) -> None:
    result = modelfile.parse(text.encode())
    assert not isinstance(result, ModelFields)
    assert result == modelfile._parse_strictly(text)
