"""A response body kept as the pieces it was made of, never joined into one string.

A namespace's list is a few hundred pieces of about `PIECE_BYTES` each. Kept so, a list rebuilt after
a change shares every unchanged piece with the last one (no second copy of the body while it is
made), and a GET sends the pieces as they are: the WSGI server reads them through a file-like
`Reader` (`wsgi.file_wrapper`), a socket buffer at a time, where a body given as one bytes object is
copied whole into the server's output buffer on every request (tens of megabytes at 100,000 models,
each copy freed after the send, which leaves the allocator holding them).
"""

from __future__ import annotations

import array
import bisect
import io
import os
import zlib
from collections.abc import Iterable

PIECE_BYTES = 64 * 1024  # what a list's pieces are made up to: a few hundred for 100,000 models
# The most a read returns. Waitress asks for its socket's send buffer, which on loopback is several
# megabytes: each of those reads would be a copy that large, made and freed for every few sends.
# Under the allocator's mmap threshold (malloc.py), so that reads reuse the heap's blocks.
READ_BYTES = 64 * 1024


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

    def gzipped(self, level: int) -> bytes:
        """The bytes gzip-compressed (mtime 0: the same bytes compress to the same stream), a part at a time."""
        compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip wrapper
        out = [compressor.compress(part) for part in self.parts]
        out.append(compressor.flush())
        return b"".join(out)

    def reader(self) -> Reader:
        """A read-only, seekable file over the bytes (what `wsgi.file_wrapper` sends from)."""
        return Reader(self)


class Reader(io.RawIOBase):
    """A read-only file over `Pieces`: each read makes only the bytes it returns, and a read of a
    size returns at most `READ_BYTES` (a short read, as a file may make: the reader asks again)."""

    def __init__(self, pieces: Pieces) -> None:
        super().__init__()
        self._pieces = pieces
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._pieces.length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self._pieces.length if size is None or size < 0 else self._position + min(size, READ_BYTES)
        data = self._pieces.slice(self._position, end)
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
