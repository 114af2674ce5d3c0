"""Reading a file's protection: the ``<ns>.verity`` descriptor and the ``<ns>.ima`` value.

:func:`read_protection` reads both attributes from an **open descriptor** (so they belong to
the inode that will be hashed), parses them strictly and checks their bounds (DESIGN.md §2):

* descriptor: block size 1–64 KiB, at most 8 tree levels, ``data_size`` == ``fstat`` size;
* ``<ns>.ima``: one of the types of :mod:`pyverity.format.ima`;
* the pair must agree: a 0x06 signature's algorithm must be the descriptor's; a descriptor with
  a classic (0x01/0x03/0x04) IMA value is refused — the two say different things about how
  the file is protected.

The result is a :class:`Protection` whose :attr:`~Protection.kind` is NONE, VERITY (descriptor
only, unsigned), VERITY_SIGNED (0x06, with or without descriptor) or CLASSIC (whole-file hash or
0x03 signature; no tree). :meth:`Protection.tree_params` gives the parameters to build with:
the descriptor's, or — v3 signature alone — 4096-byte blocks, no salt, the signature's
algorithm. Values are ``unverified_*`` until :mod:`pyverity.protect.gate` checks them.

Malformed or out-of-bounds attributes raise :class:`InvalidProtectionError` (a
:class:`~pyverity.errors.FormatError`) that still carries the :attr:`fingerprint`, so a caller
(the daemon) can remember "this exact value is invalid" and wait for it to change.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass

from pyverity.errors import FormatError
from pyverity.format.descriptor import Descriptor
from pyverity.format.hashalg import by_number
from pyverity.format.ima import (
    MAX_SIGNATURE_SIZE,
    SIGNATURE_HEADER,
    ImaSignature,
    ImaValue,
    parse_ima_value,
    verity_number_for_kernel,
)
from pyverity.format.params import DEFAULT_BLOCK_SIZE, TreeParams
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr

__all__ = [
    "MAX_IMA_SIZE",
    "InvalidProtectionError",
    "Protection",
    "ProtectionKind",
    "fingerprint",
    "parse_protection",
    "read_protection",
]

#: No valid ``<ns>.ima`` value is longer (a header and the largest signature we accept).
MAX_IMA_SIZE = SIGNATURE_HEADER.size + MAX_SIGNATURE_SIZE


class ProtectionKind(enum.Enum):
    NONE = "none"
    VERITY = "verity"
    VERITY_SIGNED = "verity-signed"
    CLASSIC = "classic"


def fingerprint(raw_descriptor: bytes | None, raw_ima: bytes | None) -> bytes:
    """SHA-256 over both raw values (absence distinct from empty): changes iff either changes."""
    h = hashlib.sha256(b"pyverity-protection-v1\0")
    for value in (raw_descriptor, raw_ima):
        if value is None:
            h.update(b"\0")
        else:
            h.update(b"\1" + len(value).to_bytes(4, "big") + value)
    return h.digest()


class InvalidProtectionError(FormatError):
    """The attributes are malformed or out of bounds; :attr:`fingerprint` identifies them.

    :attr:`bad_descriptor` is true when the ``<ns>.verity`` value itself is at fault. When it
    is valid and only the ``<ns>.ima`` value (or the pair) is not, :attr:`verity` is the
    protection the descriptor alone gives: fs-verity still holds for such a file (its reads
    are checked against that descriptor), only its appraisal fails.
    """

    def __init__(
        self,
        message: str,
        *,
        fingerprint: bytes,
        remedy: str | None = None,
        bad_descriptor: bool = False,
        verity: Protection | None = None,
    ) -> None:
        super().__init__(message, remedy=remedy)
        self.fingerprint = fingerprint
        self.bad_descriptor = bad_descriptor
        self.verity = verity


@dataclass(frozen=True)
class Protection:
    """What a file's attributes declare, parsed and bounds-checked but not yet authenticated."""

    kind: ProtectionKind
    unverified_descriptor: Descriptor | None
    unverified_ima: ImaValue | None
    raw_descriptor: bytes | None
    raw_ima: bytes | None
    #: :func:`fingerprint` of the raw values, for change detection.
    fingerprint: bytes
    #: The file size the attributes were checked against (``fstat`` at read time).
    data_size: int

    @property
    def signature(self) -> ImaSignature | None:
        return self.unverified_ima if isinstance(self.unverified_ima, ImaSignature) else None

    @property
    def has_tree(self) -> bool:
        return self.kind in (ProtectionKind.VERITY, ProtectionKind.VERITY_SIGNED)

    def tree_params(self) -> TreeParams:
        """The parameters to build the tree with (only for VERITY and VERITY_SIGNED)."""
        if self.unverified_descriptor is not None:
            return self.unverified_descriptor.params
        sig = self.signature
        if sig is None or not sig.is_verity:
            raise FormatError(f"a {self.kind.value} file has no Merkle tree")
        return TreeParams(by_number(verity_number_for_kernel(sig.hash_algo)), DEFAULT_BLOCK_SIZE)


def _check_descriptor(raw: bytes, size: int) -> Descriptor:
    desc = Descriptor.from_bytes(raw)
    params = desc.params
    params.check_bounded()
    if desc.data_size != size:
        raise FormatError(f"descriptor data_size {desc.data_size} is not the file's size {size}")
    params.geometry(size).check_bounded()
    return desc


def parse_protection(raw_descriptor: bytes | None, raw_ima: bytes | None, size: int) -> Protection:
    """Parse and check a pair of raw values for a file of ``size`` bytes (no I/O)."""
    fp = fingerprint(raw_descriptor, raw_ima)
    try:
        desc = None if raw_descriptor is None else _check_descriptor(raw_descriptor, size)
    except FormatError as e:
        message = str(e) if "descriptor" in str(e) else f"verity descriptor: {e}"
        raise InvalidProtectionError(
            message, fingerprint=fp, remedy=e.remedy, bad_descriptor=True
        ) from e
    verity = None
    if desc is not None:
        only = fingerprint(raw_descriptor, None)
        verity = Protection(ProtectionKind.VERITY, desc, None, raw_descriptor, None, only, size)
    try:
        ima = None if raw_ima is None else parse_ima_value(raw_ima)
    except FormatError as e:
        message = str(e) if "IMA" in str(e) else f"IMA attribute: {e}"
        raise InvalidProtectionError(message, fingerprint=fp, remedy=e.remedy, verity=verity) from e
    if ima is None:
        kind = ProtectionKind.NONE if desc is None else ProtectionKind.VERITY
    elif isinstance(ima, ImaSignature) and ima.is_verity:
        kind = ProtectionKind.VERITY_SIGNED
        if desc is not None and verity_number_for_kernel(ima.hash_algo) != desc.hash_algorithm:
            raise InvalidProtectionError(
                f"signature is over a {ima.algorithm.name} digest, the descriptor uses"
                f" {desc.hash_alg.name}",
                fingerprint=fp,
                verity=verity,
            )
    else:
        kind = ProtectionKind.CLASSIC
        if desc is not None:
            raise InvalidProtectionError(
                "a verity descriptor together with a classic (whole-file) IMA value",
                fingerprint=fp,
                remedy="sign the file again, or remove one of the two attributes",
                verity=verity,
            )
    return Protection(kind, desc, ima, raw_descriptor, raw_ima, fp, size)


def read_protection(fd: int, namespace: str = "security") -> Protection:
    """Read ``<ns>.verity`` and ``<ns>.ima`` from the open file ``fd`` and check them."""
    raws: list[bytes | None] = []
    for suffix in (VERITY_SUFFIX, IMA_SUFFIX):
        name = attr_name(namespace, suffix)
        try:
            raws.append(get_attr(fd, name))
        except FormatError as e:  # larger than any attribute: cannot even be fingerprinted
            raise InvalidProtectionError(
                str(e),
                fingerprint=fingerprint(b"oversized:" + name.encode(), None),
                bad_descriptor=suffix == VERITY_SUFFIX,
            ) from e
    raw_desc, raw_ima = raws
    return parse_protection(raw_desc, raw_ima, os.fstat(fd).st_size)
