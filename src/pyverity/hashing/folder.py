"""Folding level-0 hashes into the upper levels of a Merkle tree as they arrive (spec §2.6).

Both builders hash data blocks (one inline, one in worker processes) and hand the resulting
level-0 digests, in order, to a :class:`TreeFolder`. Only one pending block per level is held,
so memory is O(levels × block) unless the tree itself is kept.
"""

from __future__ import annotations

from pyverity.errors import IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.hashing.blockhash import block_hasher

__all__ = ["TreeFolder"]


class TreeFolder:
    """Accepts level-0 digests in data order; :meth:`finish` returns the descriptor and tree."""

    def __init__(self, params: TreeParams, *, keep_tree: bool = False) -> None:
        self._params = params
        self._hash = block_hasher(params)
        self._bs = params.block_size
        self._ds = params.digest_size
        self._pending: list[bytearray] = [bytearray()]
        self._emitted: list[int] = [0]
        self._blocks: list[list[bytes]] | None = [[]] if keep_tree else None
        self._leaves = 0

    @property
    def leaf_count(self) -> int:
        """Number of data-block digests received so far."""
        return self._leaves

    def add(self, digests: bytes | bytearray | memoryview) -> None:
        """Append the digests of the next data blocks (a multiple of the digest size)."""
        if len(digests) % self._ds:
            raise ValueError("digest stream is not a multiple of the digest size")
        self._leaves += len(digests) // self._ds
        pending = self._pending[0]
        pending += digests
        bs = self._bs
        if len(pending) >= bs:
            full = len(pending) - len(pending) % bs
            view = memoryview(pending)
            for off in range(0, full, bs):
                self._emit(0, view[off : off + bs])
            view.release()
            del pending[:full]

    def _emit(self, level: int, block: bytes | bytearray | memoryview) -> None:
        if level + 1 == len(self._pending):
            self._pending.append(bytearray())
            self._emitted.append(0)
            if self._blocks is not None:
                self._blocks.append([])
        if self._blocks is not None:
            self._blocks[level].append(bytes(block))
        self._emitted[level] += 1
        up = self._pending[level + 1]
        up += self._hash(block)
        if len(up) == self._bs:
            self._emit(level + 1, up)
            up.clear()

    def finish(self, data_size: int) -> MerkleTree:
        """Flush the partial blocks bottom-up and return the result for a ``data_size`` file."""
        params = self._params
        expected = -(-data_size // params.block_size)
        if self._leaves != expected:
            raise IntegrityError(
                f"hashed {self._leaves} data blocks, but {data_size} bytes make {expected}"
            )
        if self._leaves == 0:
            root = bytes(self._ds)
        elif self._leaves == 1:
            root = bytes(self._pending[0])
        else:
            level = 0
            while True:
                pending = self._pending[level]
                if pending:
                    self._emit(level, pending.ljust(self._bs, b"\0"))
                    pending.clear()
                if self._emitted[level] == 1:
                    root = bytes(self._pending[level + 1])
                    break
                level += 1
        tree = None
        if self._blocks is not None:
            tree = b"".join(b"".join(blocks) for blocks in reversed(self._blocks))
        return MerkleTree(Descriptor.for_tree(params, data_size, root), tree)
