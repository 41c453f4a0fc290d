"""The C allocator gives large blocks back as soon as they are freed and keeps few heaps
(`api/malloc.py`), counted by glibc's own tallies (`mallinfo2`, `malloc_info`), never by resident memory."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

# In a fresh interpreter (a used one may have a large free chunk in its heap, which glibc would
# reuse whatever the threshold): after an 8 MiB block is freed, is a 2 MiB block mapped apart?
PROBE = r"""
import ctypes, sys
from ollama_gitops.api import malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
fixed = malloc.give_back_large_blocks() if sys.argv[1] == "fixed" else None
large = bytearray(8 << 20)
del large
before = mallinfo2().hblks
block = bytearray(2 << 20)
print(fixed, mallinfo2().hblks - before)
"""


def _probe(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_after_a_large_transient_a_large_block_is_still_mapped_apart() -> None:
    """Unfixed, freeing an 8 MiB block raises glibc's threshold to 8 MiB, and the next 2 MiB block
    comes from the heap (where it stays once freed); fixed, it is mapped apart."""
    try:
        ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("not glibc 2.33 or later: no mallinfo2 to count mapped blocks with")
    assert _probe("unfixed") == ["None", "0"]
    assert _probe("fixed") == ["True", "1"]


# Six threads allocate at once, then glibc's report (`malloc_info`) of its heaps is counted.
HEAPS_PROBE = r"""
import ctypes, os, sys, tempfile, threading
from ollama_gitops.api import malloc

limited = malloc.limit_heaps() if sys.argv[1] == "fixed" else None
barrier, held = threading.Barrier(7), []

def allocate():
    held.append([bytearray(4096) for _ in range(64)])  # over pymalloc's 512 bytes: glibc's malloc
    barrier.wait()
    barrier.wait()

threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
barrier.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes, libc.fclose.argtypes = (ctypes.c_int, ctypes.c_void_p), (ctypes.c_void_p,)
handle, path = tempfile.mkstemp()
os.close(handle)
report = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, report)
libc.fclose(report)
barrier.wait()
print(limited, open(path).read().count("<heap nr="))
os.unlink(path)
"""


def test_threads_share_at_most_two_heaps() -> None:
    """Unfixed, glibc gives each of six threads allocating at once a heap of its own; limited, they
    share `ARENA_MAX` (two)."""
    def heaps(mode: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        done = subprocess.run([sys.executable, "-c", HEAPS_PROBE, mode], capture_output=True, text=True, timeout=60,
                              env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    try:
        ctypes.CDLL(None).malloc_info
    except AttributeError:
        pytest.skip("not glibc: no malloc_info to count heaps with")
    limited, unlimited = heaps("fixed"), heaps("unfixed")
    assert limited == ["True", "2"], limited
    assert unlimited[0] == "None" and int(unlimited[1]) > 2, unlimited
