"""Moved to :mod:`pyverity.format.merkletree` and :mod:`pyverity.format.digest` (pure data).

Kept only for the modules still importing it from here (``hashing.api``, ``hashing.fast`` and
``daemon/``, whose owners switch them); remove once nothing imports it.
"""

from __future__ import annotations

from pyverity.format.digest import FileDigest
from pyverity.format.merkletree import MerkleTree

__all__ = ["FileDigest", "MerkleTree"]
