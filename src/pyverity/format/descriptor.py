"""``struct fsverity_descriptor`` (spec/fsverity.md §4): 256 bytes whose hash is the file digest."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from pyverity.errors import FormatError
from pyverity.format.hashalg import HashAlgorithm, by_number
from pyverity.format.params import MAX_SALT_SIZE, TreeParams

__all__ = ["Descriptor"]

_ROOT_FIELD = 64
_SALT_FIELD = 32
_RESERVED = 144


@dataclass(frozen=True)
class Descriptor:
    """The fs-verity descriptor, in the kernel's layout, with ``sig_size`` = 0.

    Field names are the kernel's. ``root_hash`` and ``salt`` hold only the meaningful bytes;
    the zero padding of the 64- and 32-byte fields is implied.
    """

    STRUCT = struct.Struct("<BBBBIQ64s32s144s")
    SIZE = 256
    VERSION = 1

    hash_algorithm: int
    log_blocksize: int
    data_size: int
    root_hash: bytes
    salt: bytes = b""
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != self.VERSION:
            raise FormatError(f"unsupported fs-verity descriptor version {self.version}")
        alg = by_number(self.hash_algorithm)
        if len(self.root_hash) != alg.digest_size:
            raise FormatError(
                f"root hash is {len(self.root_hash)} bytes, {alg.name} needs {alg.digest_size}"
            )
        if len(self.salt) > MAX_SALT_SIZE:
            raise FormatError(f"unsupported salt size ({len(self.salt)})")
        if not 0 <= self.log_blocksize < 64:
            raise FormatError(f"log_blocksize {self.log_blocksize} out of range")
        if not 0 <= self.data_size < 1 << 64:
            raise FormatError(f"data_size {self.data_size} out of range")

    @classmethod
    def for_tree(cls, params: TreeParams, data_size: int, root_hash: bytes) -> Descriptor:
        return cls(
            hash_algorithm=params.hash_alg.number,
            log_blocksize=params.log_blocksize,
            data_size=data_size,
            root_hash=root_hash,
            salt=params.salt,
        )

    @property
    def hash_alg(self) -> HashAlgorithm:
        return by_number(self.hash_algorithm)

    @property
    def block_size(self) -> int:
        return 1 << self.log_blocksize

    @property
    def params(self) -> TreeParams:
        """The tree parameters; raises :class:`FormatError` if they are not acceptable."""
        return TreeParams(self.hash_alg, self.block_size, self.salt)

    def to_bytes(self) -> bytes:
        return self.STRUCT.pack(
            self.version,
            self.hash_algorithm,
            self.log_blocksize,
            len(self.salt),
            0,
            self.data_size,
            self.root_hash,
            self.salt,
            b"",
        )

    def digest(self) -> bytes:
        """The fs-verity file digest: ``H(descriptor)``, unsalted (spec §4)."""
        return hashlib.new(self.hash_alg.name, self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Descriptor:
        """Parse exactly 256 bytes strictly: reserved and unused bytes zero, ``sig_size`` 0.

        The kernel tolerates junk in the unused parts of ``root_hash`` and ``salt`` (they are
        hashed, so they change the digest); we refuse it, as no honest writer produces it.
        """
        if len(data) != cls.SIZE:
            raise FormatError(f"fs-verity descriptor is {len(data)} bytes, expected {cls.SIZE}")
        (version, alg_number, log_bs, salt_size, sig_size, data_size, root, salt, reserved) = (
            cls.STRUCT.unpack(data)
        )
        if version != cls.VERSION:
            raise FormatError(f"unsupported fs-verity descriptor version {version}")
        alg = by_number(alg_number)
        if sig_size != 0:
            raise FormatError("fs-verity descriptor has a non-zero sig_size")
        if any(reserved):
            raise FormatError("fs-verity descriptor has non-zero reserved bytes")
        if salt_size > MAX_SALT_SIZE:
            raise FormatError(f"unsupported salt size ({salt_size})")
        if any(root[alg.digest_size :]) or any(salt[salt_size:]):
            raise FormatError("fs-verity descriptor has non-zero padding")
        return cls(
            hash_algorithm=alg_number,
            log_blocksize=log_bs,
            data_size=data_size,
            root_hash=root[: alg.digest_size],
            salt=salt[:salt_size],
            version=version,
        )
