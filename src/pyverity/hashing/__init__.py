"""Merkle tree builders (DESIGN.md §5): a reference builder and a fast parallel one.

Entry points (:mod:`.api`): ``build_tree`` and ``compute_digest``; their results are the pure
:class:`~pyverity.format.merkletree.MerkleTree` and :class:`~pyverity.format.digest.FileDigest`
of ``format/``. Builders: :mod:`.reference` (streaming, obviously correct), :mod:`.fast`
(forked workers), :mod:`.small` (one read, this thread), :mod:`.onepass` (the tree and
whole-file hashes in one read), :mod:`.subtree` (aligned subtrees, for cluster workers) and
:mod:`.resumable` (from a checkpoint's offset on, stoppable between chunks: the daemon's
workers run it). Shared parts: :mod:`.folder` (levels above 0), :mod:`.runhash` and
:mod:`.blockhash` (hashing blocks), :mod:`.spool`, :mod:`.progress`. Every builder reads
through :func:`pyverity.fs.readexact.pread_blocks` (whole blocks, or the file changed).
"""

from pyverity.format.digest import FileDigest
from pyverity.format.merkletree import MerkleTree
from pyverity.hashing.api import build_tree, compute_digest

__all__ = ["FileDigest", "MerkleTree", "build_tree", "compute_digest"]
