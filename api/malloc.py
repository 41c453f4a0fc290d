"""The C allocator told to give large blocks back to the system as soon as they are freed.

glibc's malloc serves a block of at least its mmap threshold (128 KiB) with a mapping of its own,
unmapped when freed. But each such block freed raises the threshold to its size (up to 32 MiB), so
that after the first large transient (a Git listing of a namespace of 100,000 files, a rebuilt list's
tables) blocks of that size come from the heap instead, where freed memory stays in the process and
what is allocated around it keeps it from being reused: `serve`'s resident memory grew with every
write and list, with no more Python objects alive (tracemalloc). Set once, the threshold stays fixed.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept from rising
_M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h


def give_back_large_blocks() -> bool:
    """Fix the allocator's mmap threshold at `MMAP_THRESHOLD`; False where the C library cannot (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
