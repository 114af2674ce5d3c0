"""Where a reader gets tree blocks from: untrusted sources, checked by :mod:`.verifier`.

A tree source only hands out bytes in the kernel's layout (root level first, spec/fsverity.md
§2.4). Nothing it returns is trusted: the verifier hashes every tree block up to the root in
the descriptor the first time it is used, and keeps its own private copy afterwards, so a
source that changes later (a cache file rewritten under us) can cause EIO, never a wrong byte.
"""

from __future__ import annotations

import os
from typing import Protocol

from pyverity.fs.readexact import pread_exact

__all__ = ["FileTree", "MemoryTree", "TreeSource"]


class TreeSource(Protocol):
    """Untrusted tree bytes: ``read(offset, length)`` may return fewer bytes (EOF) or junk."""

    def read(self, offset: int, length: int) -> bytes: ...


class MemoryTree:
    """A tree held in memory (built inline, or handed over by the caller)."""

    def __init__(self, tree: bytes | bytearray | memoryview) -> None:
        self._tree = bytes(tree)

    def read(self, offset: int, length: int) -> bytes:
        return self._tree[offset : offset + length]

    def __len__(self) -> int:
        return len(self._tree)


class FileTree:
    """A tree read with ``pread`` from an open file (a cache object), starting at ``base``.

    The descriptor is not closed here unless ``closefd`` is true; the caller owns it.
    """

    def __init__(self, fd: int, base: int = 0, *, closefd: bool = False) -> None:
        self._fd = fd
        self._base = base
        self._closefd = closefd

    def read(self, offset: int, length: int) -> bytes:
        return pread_exact(self._fd, length, self._base + offset)

    def close(self) -> None:
        if self._closefd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
