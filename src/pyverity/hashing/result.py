"""What a tree build produces."""

from __future__ import annotations

from dataclasses import dataclass

from pyverity.format.descriptor import Descriptor
from pyverity.format.formatted_digest import FormattedDigest
from pyverity.format.params import TreeParams

__all__ = ["FileDigest", "MerkleTree"]


@dataclass(frozen=True)
class FileDigest:
    """An fs-verity file digest with the algorithm that made it; ``str()`` is ``alg:hex``."""

    algorithm: str
    digest: bytes
    #: fs-verity's number of the algorithm (1 = sha256, 2 = sha512).
    algorithm_number: int

    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest.hex()}"

    def formatted(self) -> FormattedDigest:
        """The ``FSVerity`` structure signed by built-in signatures."""
        return FormattedDigest(self.algorithm_number, self.digest)


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
