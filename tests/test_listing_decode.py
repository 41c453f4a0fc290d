"""An Ollama listing (`GET /api/tags`) decoded piece by piece: each entry as soon as its text is in,
the body never made into one string, and what it gives the same as decoding the whole body."""

from __future__ import annotations

import json
import sys
import tracemalloc
from datetime import datetime, timezone

import pytest

from ollama_gitops.reconciler.models.naming import normalize_reference
from ollama_gitops.reconciler.ollama.server import OllamaServer, _entries, decode_listing, modified_seconds
from ollama_gitops.reconciler.plan import InstalledModel
from standins.ollama_server import OllamaStandin


def body_of(count: int) -> bytes:
    entries = [{"name": f"Model{i}:1b", "model": f"Model{i}:1b", "modified_at": "2026-01-01T00:00:00.5+02:00",
                "size": 1000 + i, "digest": f"{i:064x}", "details": {"family": "é", "families": ["x"]}}
               for i in range(count)]
    return json.dumps({"models": entries}, ensure_ascii=False).encode()


def whole(body: bytes) -> dict[str, InstalledModel]:
    """What decoding the whole body gives (as the listing was decoded before)."""
    out = {}
    for entry in json.loads(body).get("models") or []:
        model = InstalledModel(entry.get("model") or entry.get("name") or "", int(entry.get("size") or 0),
                               entry.get("digest") or "", modified_seconds(entry.get("modified_at")))
        out[normalize_reference(model.reference)] = model
    return out


@pytest.mark.parametrize("step", [1, 3, 64, 1000, 10**6])
def test_a_listing_in_pieces_of_any_size_decodes_as_the_whole_body(step: int) -> None:
    body = body_of(40)
    pieces = [body[i:i + step] for i in range(0, len(body), step)]  # cuts inside characters too (é)
    assert decode_listing(pieces) == whole(body)


def test_each_entry_is_decoded_as_soon_as_its_text_is_in() -> None:
    body = body_of(200)
    pieces = [body[i:i + 500] for i in range(0, len(body), 500)]
    read = 0

    def given():  # type: ignore[no-untyped-def]
        nonlocal read
        for piece in pieces:
            read += 1
            yield piece

    read_when_decoded = [read for _ in _entries(given())]
    # Entry i comes out once the piece its last byte is in has been read, and no later.
    ends = [body.index(b"}}", body.index(f'"{i:064x}"'.encode())) + 2 for i in range(200)]
    assert read_when_decoded == [(end - 1) // 500 + 1 for end in ends]


@pytest.mark.parametrize("body", [
    b'{"models":[],"other":1}', b'{"other":1,"models":[{"model":"a:b","size":2}]}', b'{"models":null}', b"{}",
    b' {"models" : [ {"model":"a:b","size":1} , {"name":"c:d"} ] } \n', b'{"models":[{"size":1}]}',
])
def test_a_body_of_another_shape_decodes_as_the_whole_body(body: bytes) -> None:
    assert decode_listing([body[:4], body[4:]]) == whole(body)


@pytest.mark.parametrize("body", [b'{"models":[{"model":"a:b"},]}', b'{"models":[{"model":"a', b"not json", b""])
def test_a_body_that_is_not_json_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_listing([body[:3], body[3:]])


def test_the_stand_ins_listing_over_http_is_decoded_in_pieces_as_a_whole() -> None:
    ollama = OllamaStandin().start()
    try:
        for i in range(3000):  # a body of several network reads
            ollama.install(f"model{i}:1b", 1000 + i)
        client = OllamaServer(ollama.url)
        pieces = client._get_pieces("/api/tags")
        assert len(pieces) > 1
        tags = client.tags()
        assert tags.models == whole(b"".join(pieces)) and len(tags.models) == 3000
        assert client.tags(tags.digest).models is None  # the same bytes: not decoded
        client.close()
    finally:
        ollama.stop()


def test_a_first_listing_is_decoded_as_it_is_read_and_a_later_one_only_if_its_bytes_changed() -> None:
    ollama = OllamaStandin().start()
    try:
        for i in range(2000):
            ollama.install(f"model{i}:1b", 1000 + i)
        client = OllamaServer(ollama.url)
        first = client.tags()  # streamed: nothing to compare with
        again = client.tags(first.digest)
        assert again.models is None and again.digest == first.digest
        ollama.install("one-more:1b", 5)
        changed = client.tags(first.digest)
        assert changed.models is not None and set(changed.models) == set(first.models) | {"one-more:1b"}
        assert client.tags().digest == changed.digest  # the same digest however it was read
        client.close()
    finally:
        ollama.stop()


def test_an_entry_keeps_its_modification_time_as_an_int_and_no_more_than_it_needs() -> None:
    """What a kept listing holds per model besides its reference, which is the records' too (a record
    takes the listing's string, `plan.applied_spec`), and which is not interned (the interpreter's
    table would grow by an entry a model). Ollama's `modified_at` alone, as the string it is, would
    be 79 B an entry; kept as an int of whole seconds, 32 B."""
    count = 4000
    entries = [{"name": f"model{i}:1b", "model": f"model{i}:1b", "size": 1_500_000_000 + i, "digest": f"{i:064x}",
                # every model pulled in another second, as on a real server
                "modified_at": f"2026-01-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:07.123456789+02:00",
                "details": {"format": "gguf", "family": "llama", "families": ["llama"]}} for i in range(count)]
    body = json.dumps({"models": entries}).encode()
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    tracemalloc.start()
    try:
        listing = decode_listing(pieces)
        kept = tracemalloc.get_traced_memory()[0] - sum(sys.getsizeof(model.reference) for model in listing.values())
    finally:
        tracemalloc.stop()
    assert len(listing) == count
    assert all(sys.intern("".join(list(model.reference))) is not model.reference for model in listing.values())
    # The entry (64 B), its digest (113 B: Ollama's 64 hex), size (32 B), time (32 B), its dict slot.
    assert kept / count < 300, f"{kept / count:.0f} B an entry"
    assert all(type(model.modified) is int for model in listing.values())
    assert listing["model1441:1b"].modified == int(datetime(2026, 1, 2, 0, 1, 7, tzinfo=timezone.utc).timestamp()) - 7200


@pytest.mark.parametrize("modified_at", ["yesterday", "", 1714566896, None, "9999-12-31T23:59:59-01:00"])
def test_an_entry_whose_modification_time_is_absent_or_unreadable_keeps_none(modified_at: object) -> None:
    entry = {"model": "a:b", "size": 3, "digest": "f" * 64}
    if modified_at is not None:
        entry["modified_at"] = modified_at
    body = json.dumps({"models": [entry, {"model": "c:d", "modified_at": "2026-01-01T00:00:00.5Z"}]}).encode()
    listing = decode_listing([body])
    assert listing["a:b"] == InstalledModel("a:b", 3, "f" * 64, None)
    assert listing["c:d"].modified == int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
