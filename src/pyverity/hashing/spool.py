"""Keeping a large tree without holding it twice in memory.

:class:`TreeFolder` keeps tree blocks in lists and joins them at the end, so a kept tree
briefly costs twice its size. For large trees (a 16 GiB file has a 129 MiB tree with 4 KiB
blocks) the fast builder instead writes each block, as it is emitted, at its place in the
kernel's layout in an anonymous temporary file, and reads the finished tree back in one
``pread``: the kernel fills a single ``bytes`` object, so the peak is one tree plus a block.
"""

from __future__ import annotations

import os
import tempfile

from pyverity.errors import StorageError
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.readexact import pread_exact
from pyverity.hashing.folder import TreeFolder

__all__ = ["SpoolingFolder"]


class SpoolingFolder(TreeFolder):
    """A :class:`TreeFolder` that keeps the tree in a temporary file instead of lists."""

    def __init__(self, params: TreeParams, data_size: int) -> None:
        super().__init__(params, keep_tree=False)
        geometry = params.geometry(data_size)
        self._level_start = geometry.level_start
        self._tree_size = geometry.tree_size
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()/close()

    def _emit(self, level: int, block: bytes | bytearray | memoryview) -> None:
        index = self._level_start[level] + self._emitted[level]
        offset = index * self._bs
        if os.pwrite(self._file.fileno(), block, offset) != len(block):
            raise StorageError("short write to the temporary tree file")
        super()._emit(level, block)

    def finish(self, data_size: int) -> MerkleTree:
        try:
            result = super().finish(data_size)
            tree = self._read_back()
        finally:
            self.close()
        return MerkleTree(result.descriptor, tree)

    def _read_back(self) -> bytes:
        tree = pread_exact(self._file.fileno(), self._tree_size, 0)  # reads cap near 2 GiB
        if len(tree) != self._tree_size:
            raise StorageError("the temporary tree file is shorter than the tree")
        return tree

    def close(self) -> None:
        self._file.close()
