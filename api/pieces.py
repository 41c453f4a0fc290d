"""A response body kept as the pieces it was made of, never joined into one string.

A namespace's list is a few hundred pieces of about `PIECE_BYTES` each. Kept so, a list rebuilt after
a change shares every unchanged piece with the last one (no second copy of the body while it is
made), and a GET sends the pieces as they are: the WSGI server reads them through a file-like
`Reader` (`wsgi.file_wrapper`), a socket buffer at a time, where a body given as one bytes object is
copied whole into the server's output buffer on every request (tens of megabytes at 100,000 models,
each copy freed after the send, which leaves the allocator holding them).

A list's pieces are kept compressed (`Packed`, `PackedPieces`): a list of 100,000 models is 25 MB of
JSON and about a tenth of that deflated. Each piece is deflated on its own and ends on a byte boundary
(a sync flush), so the pieces laid end to end are one deflate stream: a gzip GET sends them as they
are, between a header and a trailer, and a GET without gzip inflates them a read at a time.
"""

from __future__ import annotations

import array
import bisect
import io
import os
import struct
import zlib
from collections.abc import Iterable

PIECE_BYTES = 64 * 1024  # what a list's pieces are made up to: a few hundred for 100,000 models
# The most a read returns. Waitress asks for its socket's send buffer, which on loopback is several
# megabytes: each of those reads would be a copy that large, made and freed for every few sends.
# Under the allocator's mmap threshold (malloc.py), so that reads reuse the heap's blocks.
READ_BYTES = 64 * 1024
GZIP_LEVEL = 5  # 100,000 models' list (25 MB) deflates about 10x in a quarter of a second, a piece at a time
# gzip's header with no name and mtime 0 (the same list compresses to the same bytes; RFC 1952), and
# the empty final block that ends a deflate stream whose blocks are all sync-flushed.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_BLOCK = b"\x03\x00"


class Pieces:
    """Bytes made of `parts`, as `b"".join(parts)` would be, read and sliced without that join."""

    __slots__ = ("parts", "_starts", "length")

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = tuple(parts)
        self._starts = array.array("q")
        position = 0
        for part in self.parts:
            self._starts.append(position)
            position += len(part)
        self.length = position

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def slice(self, begin: int, end: int) -> bytes:
        """The bytes from `begin` to `end`, as `bytes(self)[begin:end]` (one part is returned as it is)."""
        begin, end = max(0, begin), min(self.length, end)
        if begin >= end:
            return b""
        k = bisect.bisect_right(self._starts, begin) - 1
        if begin == self._starts[k] and end - begin == len(self.parts[k]):
            return self.parts[k]
        out: list[memoryview] = []
        while begin < end:
            part, local = self.parts[k], begin - self._starts[k]
            take = min(len(part) - local, end - begin)
            out.append(memoryview(part)[local:local + take])
            begin += take
            k += 1
        return b"".join(out)

    def reader(self) -> Reader:
        """A read-only, seekable file over the bytes (what `wsgi.file_wrapper` sends from)."""
        return Reader(self)


class _Reader(io.RawIOBase):
    """A read-only, seekable file over `length` bytes; `read` is the subclass's."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class Reader(_Reader):
    """A read-only file over `Pieces`: each read makes only the bytes it returns, and a read of a
    size returns at most `READ_BYTES` (a short read, as a file may make: the reader asks again)."""

    def __init__(self, pieces: Pieces) -> None:
        super().__init__(pieces.length)
        self._pieces = pieces

    def read(self, size: int | None = -1) -> bytes:
        end = self._pieces.length if size is None or size < 0 else self._position + min(size, READ_BYTES)
        data = self._pieces.slice(self._position, end)
        self._position += len(data)
        return data


class Packed:
    """`length` bytes kept deflated (raw deflate, ending in a sync flush), with their CRC-32."""

    __slots__ = ("deflated", "length", "crc")

    def __init__(self, data: bytes | memoryview, level: int = GZIP_LEVEL) -> None:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.deflated = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self.length = len(data)
        self.crc = zlib.crc32(data)

    def __len__(self) -> int:
        return self.length

    def raw(self) -> bytes:
        """The bytes, inflated."""
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(self.deflated)


class PackedPieces:
    """Bytes made of deflated `parts`, as `b"".join(part.raw() for part in parts)` would be: read,
    sliced and gzipped without that join, and without inflating more than a read needs."""

    __slots__ = ("parts", "_starts", "length", "_gzip")

    def __init__(self, parts: Iterable[Packed]) -> None:
        self.parts: tuple[Packed, ...] = tuple(parts)
        self._starts = array.array("q")
        position = 0
        for part in self.parts:
            self._starts.append(position)
            position += part.length
        self.length = position
        self._gzip: Pieces | None = None

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return b"".join(part.raw() for part in self.parts)

    def slice(self, begin: int, end: int) -> bytes:
        """The bytes from `begin` to `end`, as `bytes(self)[begin:end]`: only the parts they touch are inflated."""
        begin, end = max(0, begin), min(self.length, end)
        out: list[bytes] = []
        k = bisect.bisect_right(self._starts, begin) - 1
        while begin < end:
            start = self._starts[k]
            part = self.parts[k].raw()
            out.append(part[begin - start:end - start])
            begin = start + len(part)
            k += 1
        return b"".join(out)

    def gzip(self) -> Pieces:
        """The bytes as a gzip stream: the parts as they are kept, between a header and a trailer
        (made once; the CRC of the whole from the parts' own, without reading them)."""
        if self._gzip is None:
            crc = 0
            for part in self.parts:
                crc = _crc32_combine(crc, part.crc, part.length)
            trailer = _FINAL_BLOCK + struct.pack("<II", crc, self.length & 0xFFFFFFFF)
            self._gzip = Pieces((_GZIP_HEADER, *(part.deflated for part in self.parts), trailer))
        return self._gzip

    def reader(self) -> PackedReader:
        """A read-only, seekable file over the bytes, inflating them as they are read."""
        return PackedReader(self)


def _crc32_combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of A + B from A's (`first`), B's (`second`) and B's length (zlib's crc32_combine,
    which Python does not expose). The CRC is affine in its state and data, so going on from `first`
    over B is going on from it over as many zeros, less going on from 0 over them, plus B's own."""
    zeros = _zeros(second_length)
    return zlib.crc32(zeros, first) ^ zlib.crc32(zeros) ^ second


_ZEROS = bytearray()


def _zeros(length: int) -> memoryview:
    if len(_ZEROS) < length:
        _ZEROS.extend(bytes(length - len(_ZEROS)))
    return memoryview(_ZEROS)[:length]


class PackedReader(_Reader):
    """A read-only file over `PackedPieces`. A read returns at most `READ_BYTES`, from one part, inflated
    from where the last read ended; a read again from where the last one began (the WSGI server peeks
    at what it sends, then reads it again) returns those bytes, not inflated twice."""

    def __init__(self, body: PackedPieces) -> None:
        super().__init__(body.length)
        self._body = body
        self._last: tuple[int, bytes] = (-1, b"")
        self._inflater: zlib._Decompress | None = None
        self._input = b""  # what the inflater has still to take of its part
        self._at = 0  # where the inflater's next byte is in the body
        self._end = 0  # where its part ends

    def read(self, size: int | None = -1) -> bytes:
        if self._position >= self._body.length or size == 0:
            return b""
        want = READ_BYTES if size is None or size < 0 else min(size, READ_BYTES)
        began, data = self._last
        if began != self._position or not data:
            data = self._inflate(want)
            self._last = (self._position, data)
        data = data[:want]
        self._position += len(data)
        return data

    def _inflate(self, size: int) -> bytes:
        if self._inflater is None or self._at != self._position or self._at >= self._end:
            self._start_at(self._position)
        assert self._inflater is not None
        data = self._inflater.decompress(self._input, min(size, self._end - self._at))
        self._input = self._inflater.unconsumed_tail
        self._at += len(data)
        return data

    def _start_at(self, position: int) -> None:
        """Inflate the part holding `position` from its start, up to `position`."""
        body = self._body
        k = bisect.bisect_right(body._starts, position) - 1
        while body.parts[k].length == 0:
            k += 1
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input = body.parts[k].deflated
        self._at, self._end = body._starts[k], body._starts[k] + body.parts[k].length
        while self._at < position:
            self._at += len(self._inflater.decompress(self._input, min(READ_BYTES, position - self._at)))
            self._input = self._inflater.unconsumed_tail
