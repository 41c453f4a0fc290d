"""Sizes as the seed operator shows them (`formattedSize`)."""

from __future__ import annotations

_UNITS = "KMGTPE"


def format_size(size: int) -> str:
    """`1815319791` -> `1.7 GiB`, `815319791` -> `777.5 MiB`, `512` -> `512 B`.

    The seed's algorithm exactly (Go's `%.1f` and Python's `.1f` both round the exact binary value
    correctly, so they agree): divide by the largest power of 1024 that leaves at least 1.
    """
    if size < 1024:
        return f"{size} B"
    divisor, exponent = 1024, 0
    quotient = size // 1024
    while quotient >= 1024:
        divisor *= 1024
        exponent += 1
        quotient //= 1024
    return f"{size / divisor:.1f} {_UNITS[exponent]}iB"
