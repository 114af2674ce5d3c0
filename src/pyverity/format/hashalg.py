"""The hash algorithms fs-verity knows (``FS_VERITY_HASH_ALG_*``), spec/fsverity.md §1.1."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyverity.errors import FormatError, UsageError

__all__ = ["SHA256", "SHA512", "HashAlgorithm", "by_name", "by_number"]


@dataclass(frozen=True)
class HashAlgorithm:
    """One fs-verity hash algorithm.

    ``number`` is fs-verity's numbering (1 = sha256, 2 = sha512), *not* the kernel's
    ``enum hash_algo`` that IMA uses (4 and 6); see :mod:`pyverity.format.ima` for that mapping.
    """

    number: int
    name: str
    digest_size: int
    #: The hash function's compression block size: the padding unit of a salt.
    compression_block_size: int

    def new(self, data: bytes = b"") -> hashlib._Hash:
        """A fresh hashlib object of this algorithm."""
        return hashlib.new(self.name, data)

    def digest(self, data: bytes | memoryview) -> bytes:
        return hashlib.new(self.name, data).digest()


SHA256 = HashAlgorithm(number=1, name="sha256", digest_size=32, compression_block_size=64)
SHA512 = HashAlgorithm(number=2, name="sha512", digest_size=64, compression_block_size=128)

_BY_NUMBER = {alg.number: alg for alg in (SHA256, SHA512)}
_BY_NAME = {alg.name: alg for alg in (SHA256, SHA512)}


def by_number(number: int) -> HashAlgorithm:
    """The algorithm with fs-verity number ``number``; :class:`FormatError` if unknown."""
    try:
        return _BY_NUMBER[number]
    except KeyError:
        raise FormatError(f"unknown hash algorithm: {number}") from None


def by_name(name: str) -> HashAlgorithm:
    """The algorithm called ``name`` (``sha256``/``sha512``, or fs-verity's number as text).

    An unknown name is a :class:`UsageError` listing the available algorithms, as in
    ``fsverity``; an unknown *number* is a :class:`FormatError` (exit 1), also as in ``fsverity``.
    """
    alg = _BY_NAME.get(name.lower())
    if alg is not None:
        return alg
    if name.isdigit():
        return by_number(int(name))
    raise UsageError(
        f"unknown hash algorithm: '{name}'",
        remedy="available hash algorithms: " + ", ".join(_BY_NAME),
    )


def names() -> list[str]:
    return list(_BY_NAME)
