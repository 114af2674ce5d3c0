"""The tree of a small file, read in one ``pread`` and hashed in the calling thread.

For files of a few blocks the cost of a build is everything around the hashing: a worker
process, a thread pool, a chunk buffer. The daemon builds files up to
:data:`SMALL_FILE_MAX` bytes with :func:`build_small`, in its own process (ADR 0006); the result
is the one :func:`pyverity.hashing.build_tree` gives (tests compare them byte for byte).
"""

from __future__ import annotations

import functools
import os

from pyverity.errors import FileChangedError
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity, identity
from pyverity.fs.readexact import pread_blocks
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.runhash import RunHasher, run_hasher

__all__ = ["SMALL_FILE_MAX", "build_small", "is_small"]

#: Files up to this size are built by the daemon itself: about 0.3 ms of hashing at most.
SMALL_FILE_MAX = 1 << 20


def is_small(size: int) -> bool:
    """A file of ``size`` bytes (-1: unknown) is small: built by :func:`build_small`."""
    return 0 <= size <= SMALL_FILE_MAX


@functools.lru_cache(maxsize=64)
def _hasher(params: TreeParams) -> RunHasher:
    return run_hasher(params)


def build_small(fd: int, params: TreeParams, snapshot: FileIdentity) -> MerkleTree:
    """The descriptor and tree of the regular file open as ``fd``, whose identity must be
    ``snapshot`` before and after (:class:`FileChangedError` otherwise, or if it grew)."""
    if identity(os.fstat(fd)) != snapshot:
        raise FileChangedError("file changed since it was queued")
    size = snapshot.size
    bs = params.block_size
    folder = TreeFolder(params, keep_tree=True)
    if size:
        buffer = memoryview(bytearray(-(-size // bs) * bs))
        folder.add(_hasher(params)(pread_blocks(fd, buffer, 0, size, bs)))
    if os.pread(fd, 1, size):
        raise FileChangedError("file grew while it was being hashed")
    if identity(os.fstat(fd)) != snapshot:
        raise FileChangedError("file changed while it was being hashed")
    return folder.finish(size)
