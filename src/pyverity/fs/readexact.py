"""Positional reads that do not stop short: one place for the "pread until full" loop.

``pread(2)`` may return fewer bytes than asked (a signal, a read capped near 2 GiB, a FUSE or
network filesystem). These helpers read again until the request is met or the file ends, so
a short result means end of file and nothing else. Callers decide what a short result means
to them (zero-padding, :class:`~pyverity.errors.FileChangedError`, a storage error), except
:func:`pread_blocks`, the tree builders' read: whole blocks, zero-padded, or the file changed.
"""

from __future__ import annotations

import os

from pyverity.errors import FileChangedError

__all__ = ["pread_blocks", "pread_exact", "pread_exact_into"]


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes of ``fd`` at ``offset``, fewer only where the file ends.

    One ``pread`` into a fresh ``bytes`` object in the common case (no copy); the rest is
    gathered only after a short read.
    """
    data = os.pread(fd, size, offset)
    if len(data) >= size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def pread_exact_into(fd: int, buffer: memoryview, offset: int) -> int:
    """``preadv`` into ``buffer`` until it is full or the file ends; the bytes read."""
    got = 0
    size = len(buffer)
    while got < size:
        n = os.preadv(fd, [buffer[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def pread_blocks(
    fd: int, buffer: memoryview, offset: int, want: int, block_size: int
) -> memoryview:
    """``want`` bytes of ``fd`` at ``offset`` read into ``buffer``, zero-padded to whole blocks.

    Returns the filled part of ``buffer`` (``want`` rounded up to ``block_size``), which must be
    that large. The file must still hold the bytes (its size was taken before):
    :class:`FileChangedError` when it ends first.
    """
    end = -(-want // block_size) * block_size
    if pread_exact_into(fd, buffer[:want], offset) != want:
        raise FileChangedError("file shrank while it was being hashed")
    if end != want:
        buffer[want:end] = bytes(end - want)
    return buffer[:end]
