"""Hashing one Merkle tree block: ``H(padded_salt || block)`` (spec/fsverity.md §2.1)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from pyverity.format.params import TreeParams

__all__ = ["BlockHasher", "block_hasher"]

Buffer = bytes | bytearray | memoryview
BlockHasher = Callable[[Buffer], bytes]


def block_hasher(params: TreeParams) -> BlockHasher:
    """A function hashing one full ``block_size`` buffer with the tree's salt.

    The padded salt is absorbed once and the saved state copied per block, as the kernel does.
    The caller passes exactly ``block_size`` bytes (the last data block zero-padded).
    """
    ctor = getattr(hashlib, params.hash_alg.name)
    if not params.salt:

        def plain(block: Buffer) -> bytes:
            return ctor(block).digest()  # type: ignore[no-any-return]

        return plain
    base = ctor(params.padded_salt)

    def salted(block: Buffer) -> bytes:
        h = base.copy()
        h.update(block)
        return h.digest()  # type: ignore[no-any-return]

    return salted
