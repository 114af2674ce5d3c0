"""``struct fsverity_formatted_digest`` (spec/fsverity.md §5.1): what built-in signatures sign."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyverity.errors import FormatError
from pyverity.format.hashalg import by_number

__all__ = ["FormattedDigest"]


@dataclass(frozen=True)
class FormattedDigest:
    """``"FSVerity" || le16 digest_algorithm || le16 digest_size || digest``."""

    MAGIC = b"FSVerity"
    HEADER = struct.Struct("<8sHH")

    digest_algorithm: int
    digest: bytes

    def __post_init__(self) -> None:
        alg = by_number(self.digest_algorithm)
        if len(self.digest) != alg.digest_size:
            raise FormatError(f"{alg.name} digest must be {alg.digest_size} bytes")

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.MAGIC, self.digest_algorithm, len(self.digest)) + self.digest

    @classmethod
    def from_bytes(cls, data: bytes) -> FormattedDigest:
        if len(data) < cls.HEADER.size:
            raise FormatError("formatted digest is truncated")
        magic, alg, size = cls.HEADER.unpack_from(data)
        if magic != cls.MAGIC:
            raise FormatError("formatted digest lacks the FSVerity magic")
        if len(data) != cls.HEADER.size + size:
            raise FormatError("formatted digest has the wrong length")
        return cls(alg, bytes(data[cls.HEADER.size :]))
