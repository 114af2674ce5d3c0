"""Merkle tree builders (DESIGN.md §5): a reference builder and a fast parallel one."""

from pyverity.format.digest import FileDigest
from pyverity.format.merkletree import MerkleTree
from pyverity.hashing.api import build_tree, compute_digest

__all__ = ["FileDigest", "MerkleTree", "build_tree", "compute_digest"]
