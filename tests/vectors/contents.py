"""The file contents the vectors are computed over, generated rather than stored.

Each generator is named in the data files (``content`` field) and takes the file size.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CONTENTS", "content"]


def _pattern_11_439_1103(size: int) -> bytes:
    """fsverity-utils ``test_compute_digest.c``: byte i is ``(i%11 + i%439 + i%1103) & 0xff``."""
    period = 11 * 439 * 1103
    one = bytes(((i % 11) + (i % 439) + (i % 1103)) & 0xFF for i in range(min(size, period)))
    return (one * (size // period + 1))[:size]


def _mod251(size: int) -> bytes:
    """spec §11 ``pat1m``: byte ``i`` is ``i % 251``."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def _yes_abcdefg(size: int) -> bytes:
    """spec §11 ``y4097``: the output of ``yes abcdefg``."""
    return (b"abcdefg\n" * (size // 8 + 1))[:size]


def _letter_a(size: int) -> bytes:
    return b"a" * size


def _zeros(size: int) -> bytes:
    return bytes(size)


CONTENTS: dict[str, Callable[[int], bytes]] = {
    "pattern_11_439_1103": _pattern_11_439_1103,
    "mod251": _mod251,
    "yes_abcdefg": _yes_abcdefg,
    "letter_a": _letter_a,
    "zeros": _zeros,
}


def content(name: str, size: int) -> bytes:
    return CONTENTS[name](size)
