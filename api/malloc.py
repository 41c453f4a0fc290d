"""The C allocator told to give large blocks back to the system as soon as they are freed, and to
keep few heaps.

glibc's malloc serves a block of at least its mmap threshold (128 KiB) with a mapping of its own,
unmapped when freed. But each such block freed raises the threshold to its size (up to 32 MiB), so
that after the first large transient (a Git listing of a namespace of 100,000 files, a rebuilt list's
tables) blocks of that size come from the heap instead, where freed memory stays in the process and
what is allocated around it keeps it from being reused: `serve`'s resident memory grew with every
write and list, with no more Python objects alive (tracemalloc). Set once, the threshold stays fixed.

glibc also gives each thread that allocates a heap (an arena) of its own, up to eight per core, each
holding its freed memory apart. `serve` has dozens of threads (pulls, listings, requests), and the
GIL lets one of them allocate at a time anyway: two heaps (`ARENA_MAX`) were 3 MiB less of serve's
resident memory at 10,000 models (bench_scale), 12% of what the models cost it.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept from rising
ARENA_MAX = 2  # heaps the threads share
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt's parameters, from glibc's malloc.h


def give_back_large_blocks() -> bool:
    """Fix the allocator's mmap threshold at `MMAP_THRESHOLD`; False where the C library cannot (not glibc)."""
    return _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def limit_heaps() -> bool:
    """At most `ARENA_MAX` heaps for all threads (those made after this); False where the C library
    cannot (not glibc), or where `MALLOC_ARENA_MAX` in the environment made the operator's choice."""
    return "MALLOC_ARENA_MAX" not in os.environ and _mallopt(_M_ARENA_MAX, ARENA_MAX)


def _mallopt(parameter: int, value: int) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(parameter, value) == 1
