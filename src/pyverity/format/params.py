"""Merkle tree parameters and geometry (spec/fsverity.md §1, §2).

:class:`TreeParams` is what a user or an attribute chooses (algorithm, block size, salt);
:class:`TreeGeometry` is what follows from the parameters and a file size (level counts, where
each level starts in the kernel's tree layout, the tree size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from pyverity.errors import FormatError
from pyverity.format.hashalg import SHA256, HashAlgorithm

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "KERNEL_MAX_BLOCK_SIZE",
    "KERNEL_MAX_LEVELS",
    "KERNEL_MIN_BLOCK_SIZE",
    "MAX_SALT_SIZE",
    "TreeGeometry",
    "TreeParams",
]

DEFAULT_BLOCK_SIZE = 4096
MAX_SALT_SIZE = 32
#: Bounds applied to parameters that come from untrusted attributes (DESIGN.md §2).
KERNEL_MIN_BLOCK_SIZE = 1024
KERNEL_MAX_BLOCK_SIZE = 65536
KERNEL_MAX_LEVELS = 8
#: Bound for an explicit ``digest`` request: libfsverity has none, but we allocate a few blocks.
MAX_BLOCK_SIZE = 1 << 30


@dataclass(frozen=True)
class TreeParams:
    """Algorithm, block size and salt of one Merkle tree, validated as libfsverity does.

    Construction accepts what ``fsverity digest`` accepts (any power of two with
    ``block_size >= 2 * digest_size``, a salt of at most 32 bytes). Parameters that come from an
    attribute must also pass :meth:`check_bounded` (1 KiB–64 KiB blocks, at most 8 levels).
    """

    hash_alg: HashAlgorithm = SHA256
    block_size: int = DEFAULT_BLOCK_SIZE
    salt: bytes = b""

    def __post_init__(self) -> None:
        bs = self.block_size
        if bs <= 0 or bs & (bs - 1):
            raise FormatError(f"Invalid block size: {bs}.  Must be power of 2")
        if bs < 2 * self.hash_alg.digest_size:
            raise FormatError(
                f"block size {bs} is too small for {self.hash_alg.name}"
                f" (at least {2 * self.hash_alg.digest_size} bytes)"
            )
        if bs > MAX_BLOCK_SIZE:
            raise FormatError(f"block size {bs} is too large (at most {MAX_BLOCK_SIZE})")
        if len(self.salt) > MAX_SALT_SIZE:
            raise FormatError(f"unsupported salt size ({len(self.salt)})")

    @property
    def digest_size(self) -> int:
        return self.hash_alg.digest_size

    @property
    def log_blocksize(self) -> int:
        return self.block_size.bit_length() - 1

    @property
    def arity(self) -> int:
        """Hashes per tree block (``A = B / D``)."""
        return self.block_size // self.hash_alg.digest_size

    @property
    def padded_salt(self) -> bytes:
        """The salt zero-padded to the compression block size; empty when there is no salt."""
        if not self.salt:
            return b""
        unit = self.hash_alg.compression_block_size
        return self.salt.ljust(-(-len(self.salt) // unit) * unit, b"\0")

    def check_bounded(self) -> None:
        """Raise :class:`FormatError` unless the block size is in the kernel's 1–64 KiB range."""
        if not KERNEL_MIN_BLOCK_SIZE <= self.block_size <= KERNEL_MAX_BLOCK_SIZE:
            raise FormatError(
                f"block size {self.block_size} is out of bounds"
                f" ({KERNEL_MIN_BLOCK_SIZE}..{KERNEL_MAX_BLOCK_SIZE})"
            )

    def geometry(self, data_size: int) -> TreeGeometry:
        return TreeGeometry(self, data_size)


@dataclass(frozen=True)
class TreeGeometry:
    """The shape of the tree of a ``data_size``-byte file under ``params`` (spec §2.1, §2.4).

    Levels are numbered as the kernel does: level 0 holds the data blocks' hashes, the last
    level is the single root block. The on-disk layout stores the root level first.
    """

    params: TreeParams
    data_size: int
    #: Number of blocks per level, level 0 first (empty for files of at most one block).
    level_counts: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.data_size < 0:
            raise FormatError(f"negative data size {self.data_size}")
        counts: list[int] = []
        n = -(-self.data_size // self.params.block_size)
        arity = self.params.arity
        while n > 1:
            n = -(-n // arity)
            counts.append(n)
        object.__setattr__(self, "level_counts", tuple(counts))

    @property
    def num_levels(self) -> int:
        return len(self.level_counts)

    @property
    def num_data_blocks(self) -> int:
        return -(-self.data_size // self.params.block_size)

    @cached_property
    def level_start(self) -> tuple[int, ...]:
        """Index (in blocks) of the first block of each level in the tree layout."""
        starts = [0] * self.num_levels
        for level in range(self.num_levels - 2, -1, -1):
            starts[level] = starts[level + 1] + self.level_counts[level + 1]
        return tuple(starts)

    @property
    def tree_blocks(self) -> int:
        return sum(self.level_counts)

    @property
    def tree_size(self) -> int:
        return self.tree_blocks * self.params.block_size

    def check_bounded(self) -> None:
        """Raise :class:`FormatError` if the parameters or the level count exceed the kernel's."""
        self.params.check_bounded()
        if self.num_levels > KERNEL_MAX_LEVELS:
            raise FormatError(
                f"tree of {self.num_levels} levels exceeds the limit of {KERNEL_MAX_LEVELS}"
            )

    def hash_location(self, level: int, index: int) -> tuple[int, int]:
        """Where the hash of block ``index`` of ``level - 1`` (data when ``level == 0``) lives.

        Returns ``(tree block number, byte offset within that block)``.
        """
        arity = self.params.arity
        return self.level_start[level] + index // arity, (index % arity) * self.params.digest_size
