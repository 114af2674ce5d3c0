"""Hashing byte ranges of whole, aligned Merkle subtrees, and folding their roots (spec §2.6).

A subtree of height ``h`` covers ``arity ** h`` data blocks, ``S = block_size * arity ** h``
bytes, starting at a multiple of ``S``. Its root is one digest of tree level ``h``: the hash
of its single level ``h - 1`` block. Every level of a subtree is cut into blocks exactly as
the whole file's tree is (the file's last partial blocks are zero-padded at each level), so a
worker that hashes a range of whole subtrees returns one digest per subtree, never level-0
digests, and :func:`fold_roots` turns the roots of a file, in order, into its descriptor.

For a file of at most one subtree there is nothing to fold: hash it whole
(:func:`~pyverity.hashing.build_tree`). Splitting pays off only above that size.
"""

from __future__ import annotations

from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.readexact import pread_blocks
from pyverity.hashing.blockhash import block_hasher
from pyverity.hashing.runhash import run_hasher

__all__ = ["fold_roots", "hash_subtrees", "subtree_bytes", "subtree_height"]

#: Bytes read per ``preadv`` inside a subtree.
_READ = 1 << 20


def subtree_height(params: TreeParams, target: int) -> int:
    """The largest height ``h >= 1`` whose subtrees hold at most ``target`` bytes (at least 1)."""
    h = 1
    while params.block_size * params.arity ** (h + 1) <= target:
        h += 1
    return h


def subtree_bytes(params: TreeParams, height: int) -> int:
    """Data bytes covered by one subtree of ``height``."""
    if height < 1:
        raise ValueError("a subtree has a height of at least 1")
    return int(params.block_size * params.arity**height)


def _fold_level(params: TreeParams, digests: bytes) -> bytes:
    """Hash ``digests`` (one level) block by block, the last block zero-padded."""
    bs = params.block_size
    hash_block = block_hasher(params)
    out = bytearray()
    for off in range(0, len(digests), bs):
        out += hash_block(digests[off : off + bs].ljust(bs, b"\0"))
    return bytes(out)


def hash_subtrees(fd: int, params: TreeParams, start: int, end: int, height: int) -> list[bytes]:
    """The roots of the subtrees of ``height`` covering bytes ``[start, end)`` of ``fd``.

    ``start`` is a multiple of the subtree size and ``end`` one too, or the end of the file.
    A short read (the file shrank) raises :class:`~pyverity.errors.FileChangedError`.
    """
    size = subtree_bytes(params, height)
    if start % size or start >= end:
        raise ValueError("the range is not one of whole, aligned subtrees")
    bs = params.block_size
    run = run_hasher(params)
    buf = bytearray(min(_READ, -(-(end - start) // bs) * bs))
    view = memoryview(buf)
    roots: list[bytes] = []
    for first in range(start, end, size):
        last = min(first + size, end)
        level = bytearray()
        offset = first
        while offset < last:
            want = min(len(buf), last - offset)
            level += run(pread_blocks(fd, view, offset, want, bs))
            offset += want
        digests = bytes(level)
        for _ in range(height):
            digests = _fold_level(params, digests)
        roots.append(digests)
    return roots


def fold_roots(params: TreeParams, data_size: int, height: int, roots: list[bytes]) -> Descriptor:
    """The descriptor of a ``data_size`` file from the roots of its subtrees of ``height``.

    The file must be larger than one subtree (else hash it whole); the roots come in order.
    """
    size = subtree_bytes(params, height)
    count = -(-data_size // size)
    if data_size <= size or len(roots) != count:
        raise ValueError(f"{data_size} bytes make {count} subtrees, not {len(roots)}")
    level = b"".join(roots)
    while len(level) > params.block_size:
        level = _fold_level(params, level)
    root = _fold_level(params, level)
    return Descriptor.for_tree(params, data_size, root)
