"""A digest as text, ``alg:hex`` (``sha256:3706…``): the one place it is written and parsed.

``fsverity digest``, ``evmctl`` and pyverity's own output, the state database and the cache
keys all use this form. :class:`FileDigest` is an fs-verity file digest with its algorithm;
``str()`` gives its text.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyverity.errors import FormatError
from pyverity.format.formatted_digest import FormattedDigest

__all__ = ["FileDigest", "format_digest", "parse_digest"]


def format_digest(algorithm: str, digest: bytes) -> str:
    """``alg:hex``, e.g. ``sha256:37061ef2…``."""
    return f"{algorithm}:{digest.hex()}"


def parse_digest(text: str) -> tuple[str, bytes]:
    """``(alg, digest)`` from ``alg:hex``; :class:`FormatError` unless both parts are there
    and the digest is hexadecimal (its length is for the caller to check by algorithm)."""
    alg, sep, hexd = text.partition(":")
    if not sep or not alg or not hexd:
        raise FormatError(f"not an ALG:HEX digest: {text[:80]!r}")
    try:
        return alg, bytes.fromhex(hexd)
    except ValueError:
        raise FormatError(f"digest is not hexadecimal: {text[:80]!r}") from None


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
        return format_digest(self.algorithm, self.digest)

    def formatted(self) -> FormattedDigest:
        """The ``FSVerity`` structure signed by built-in signatures."""
        return FormattedDigest(self.algorithm_number, self.digest)
