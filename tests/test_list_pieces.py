"""A list's body kept in pieces: read, sliced and compressed as if joined, and rebuilt after a change
by sharing the pieces that did not change rather than copying the body."""

from __future__ import annotations

import gzip
import io
import json
import random
import tracemalloc
import zlib

import pytest

from ollama_gitops.api.catalog import ModelList, _ListBuilder
from ollama_gitops.api.pieces import PIECE_BYTES, READ_BYTES, Packed, PackedPieces, Pieces
from ollama_gitops.reconciler.models.desired import ModelKey

PIECE = 64  # bytes: a few items a piece, so that a few dozen items make many pieces


def test_pieces_read_and_slice_as_their_join() -> None:
    rng = random.Random(7)
    parts = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(30)]
    pieces, joined = Pieces(parts), b"".join(parts)
    assert len(pieces) == len(joined) and bytes(pieces) == joined
    for begin in range(0, len(joined) + 2, 7):
        for end in range(begin, len(joined) + 3, 11):
            assert pieces.slice(begin, end) == joined[begin:end]
    assert pieces.slice(len(parts[0]), len(parts[0]) + len(parts[1])) is parts[1]  # a whole part, not a copy
    reader = pieces.reader()
    read = b"".join(iter(lambda: reader.read(13), b""))
    assert read == joined and reader.tell() == len(joined)
    reader.seek(5)
    assert reader.read() == joined[5:] and reader.seek(-3, io.SEEK_END) == len(joined) - 3


def test_packed_pieces_read_slice_and_gzip_as_their_join() -> None:
    rng = random.Random(11)
    parts = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) * rng.randrange(1, 3000)
             for _ in range(30)]
    pieces, joined = PackedPieces(Packed(part) for part in parts), b"".join(parts)
    assert len(pieces) == len(joined) and bytes(pieces) == joined
    for begin in range(0, len(joined) + 2, len(joined) // 97):
        for end in range(begin, len(joined) + 3, len(joined) // 31):
            assert pieces.slice(begin, end) == joined[begin:end]
    stream = bytes(pieces.gzip())
    assert gzip.decompress(stream) == joined
    # One gzip member, read as HTTP clients read it (httpx and urllib3 inflate one stream, not members).
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflater.decompress(stream) == joined and inflater.eof and not inflater.unused_data
    assert pieces.gzip() is pieces.gzip()  # made once
    reader = pieces.reader()
    reads = list(iter(lambda: reader.read(5000), b""))
    assert b"".join(reads) == joined and reader.tell() == len(joined) and max(map(len, reads)) <= 5000
    for at in (0, 1, len(parts[0]), len(joined) // 2, len(joined) - 1):
        reader.seek(at)
        assert b"".join(iter(lambda: reader.read(7777), b"")) == joined[at:]
    assert reader.seek(-3, io.SEEK_END) == len(joined) - 3 and reader.read() == joined[-3:]


def test_a_packed_read_again_from_where_the_last_began_is_not_inflated_again() -> None:
    """The WSGI server reads what it will send, seeks back and reads it again: the same bytes."""
    part = bytes(range(256)) * 2048
    reader = PackedPieces([Packed(part)]).reader()
    first = reader.read(READ_BYTES)
    reader.seek(0)
    assert reader.read(READ_BYTES) is first and reader.read(READ_BYTES) == part[READ_BYTES:2 * READ_BYTES]


def test_a_list_keeps_its_body_deflated_and_makes_it_a_piece_at_a_time() -> None:
    """The items of a list are kept deflated: a list of models holds a fraction of its JSON's size."""
    items = [(f"model{n:05d}-1b", json.dumps({"name": f"model{n:05d}", "tag": "1b", "state": "Ready",
                                             "size": "1.2 GB", "digest": f"{n:064x}"}).encode())
             for n in range(30_000)]
    size = sum(len(data) + 1 for _, data in items)
    tracemalloc.start()
    try:
        built = _ListBuilder(None)
        for _, data in items:
            built.add(data)
        body, _ = built.finish()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body) > size
    assert kept - 8 * len(items) < size / 4  # (the items' ends: 8 bytes each)
    # Made a piece at a time: a piece's items, their join and the compressor's state; never the whole body.
    assert peak - kept < 8 * PIECE_BYTES
    assert json.loads(bytes(body)) == {"items": [json.loads(data) for _, data in items]}


def test_a_read_of_a_size_returns_at_most_read_bytes() -> None:
    pieces = Pieces([b"x" * READ_BYTES, b"y" * READ_BYTES])
    reader = pieces.reader()
    assert reader.read(10 * READ_BYTES) is pieces.parts[0]  # a whole part as it is kept
    reader.seek(1)
    assert len(reader.read(10 * READ_BYTES)) == READ_BYTES
    assert reader.read(10 * READ_BYTES) == b"y" * (READ_BYTES - 1) and reader.read(1) == b""


def _rebuild(old: ModelList | None, items: list[tuple[str, bytes]]) -> tuple[ModelList, _ListBuilder]:
    """What `Catalog._build` does with the builder: an item whose bytes are the last list's reuses them."""
    previous = {key.name: i for i, key in enumerate(old.keys)} if old is not None else {}
    built = _ListBuilder(old, PIECE)
    for name, data in items:
        i = previous.get(name)
        if i is not None and old is not None and old.states[i] == data:
            built.reuse(i)
        else:
            built.add(data)
    body, firsts = built.finish()
    keys = tuple(ModelKey("default", name) for name, _ in items)
    return ModelList(keys, tuple(data for _, data in items), built.ends, body, firsts, "tag"), built


def _check(made: ModelList, items: list[tuple[str, bytes]]) -> None:
    assert bytes(made.body) == b'{"items":[' + b",".join(data for _, data in items) + b"]}\n"
    for i, (_, data) in enumerate(items):
        assert made.body.slice(made.start(i), made.ends[i]) == data
    small = [len(piece) < PIECE // 2 for piece in made.items]
    assert not any(a and b for a, b in zip(small, small[1:])), "two small pieces side by side"


@pytest.mark.parametrize("seed", range(4))
def test_changes_one_at_a_time_keep_the_body_whole_share_pieces_and_leave_no_crumbs(seed: int) -> None:
    rng = random.Random(seed)
    names = iter(f"m{n:05d}" for n in range(100_000))
    items = sorted((next(names), b'{"v":%d}' % rng.randrange(10**rng.randrange(1, 8))) for _ in range(60))
    made, _ = _rebuild(None, items)
    _check(made, items)
    for _ in range(150):
        kind, at = rng.choice(["change", "insert", "delete"]), rng.randrange(len(items))
        if kind == "change":
            items[at] = (items[at][0], b'{"changed":%d}' % rng.randrange(10**6))
        elif kind == "insert":
            items.insert(at, (next(names), b'{"new":%d}' % rng.randrange(10**6)))
        elif len(items) > 1:
            del items[at]
        before = {id(piece) for piece in made.items}
        made, built = _rebuild(made, items)
        _check(made, items)
        # Only the pieces around the change are new, however long the list: the others are the last list's.
        assert sum(len(piece) for piece in made.items if id(piece) not in before) <= 4 * PIECE, kind
    assert len(made.items) >= len(bytes(made.body)) // (2 * PIECE)


def test_an_empty_list_and_a_list_emptied() -> None:
    made, _ = _rebuild(None, [])
    assert bytes(made.body) == b'{"items":[]}\n' and made.items == ()
    full, _ = _rebuild(made, [("a", b"1"), ("b", b"2")])
    emptied, _ = _rebuild(full, [])
    assert bytes(emptied.body) == b'{"items":[]}\n'
    assert full.page(None, 1) == (b"1", "a", 1) and full.page("a", 5) == (b"2", None, 0)
