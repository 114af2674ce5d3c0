"""What a tree build produces: the descriptor and, when kept, the tree (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import FileDigest
from pyverity.format.params import TreeParams

__all__ = ["MerkleTree"]


@dataclass(frozen=True)
class MerkleTree:
    """A descriptor and, when it was kept, the tree in the kernel's layout (root level first)."""

    descriptor: Descriptor
    tree: bytes | None = None

    @property
    def params(self) -> TreeParams:
        return self.descriptor.params

    @property
    def root_hash(self) -> bytes:
        return self.descriptor.root_hash

    def file_digest(self) -> FileDigest:
        d = self.descriptor
        return FileDigest(d.hash_alg.name, d.digest(), d.hash_algorithm)
