"""The C allocator gives large blocks back as soon as they are freed (`api/malloc.py`), counted by
glibc's own tally of mapped blocks (`mallinfo2`), never by resident memory."""

from __future__ import annotations

import ctypes

import pytest

from ollama_gitops.api import malloc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped_blocks() -> int:
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("not glibc 2.33 or later: no mallinfo2 to count mapped blocks with")
    mallinfo2.restype = _MallInfo2
    return mallinfo2().hblks


def test_after_a_large_transient_a_block_over_the_threshold_is_still_mapped_apart() -> None:
    """Unfixed, freeing an 8 MiB block would raise glibc's threshold to 8 MiB, and the next block
    of 4x the threshold would come from the heap (and stay in the process once freed)."""
    assert malloc.give_back_large_blocks()
    large = bytearray(8 << 20)
    del large
    before = _mapped_blocks()
    block = bytearray(4 * malloc.MMAP_THRESHOLD)
    assert _mapped_blocks() == before + 1
    del block
    assert _mapped_blocks() == before
