"""The C allocator gives large blocks back as soon as they are freed (`api/malloc.py`), counted by
glibc's own tally of mapped blocks (`mallinfo2`), never by resident memory."""

from __future__ import annotations

import ctypes
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
