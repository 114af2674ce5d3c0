"""Merkle tree builders (DESIGN.md §5): a reference builder and a fast parallel one."""

from pyverity.hashing.api import build_tree, compute_digest
from pyverity.hashing.result import FileDigest, MerkleTree

__all__ = ["FileDigest", "MerkleTree", "build_tree", "compute_digest"]
