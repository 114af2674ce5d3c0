"""What a file's attributes declare, read from an open descriptor, and the appraisal of a build.

This is the daemon's one door to attribute parsing and signature appraisal. Until
``pyverity.protect`` lands it understands the descriptor-only (unsigned) mode and recognises
classic 0x03/0x04 values; a type-0x06 signature is reported INVALID (not yet appraisable),
never trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from pyverity.errors import Error, FormatError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr
from pyverity.hashing.result import MerkleTree

__all__ = ["Appraisal", "AttrValues", "Protection", "appraise", "parse_protection", "read_attrs"]

#: IMA xattr types that are whole-file hashes or signatures (no tree): digest, v2 sig, digest-ng.
CLASSIC_TYPES = {0x01: "ima-digest", 0x03: "ima-sig", 0x04: "ima-digest-ng"}
VERITY_SIG_TYPE = 0x06


@dataclass(frozen=True)
class AttrValues:
    """The raw, unverified values of ``<ns>.ima`` and ``<ns>.verity`` (None when absent)."""

    unverified_ima: bytes | None
    unverified_verity: bytes | None

    @property
    def present(self) -> bool:
        return self.unverified_ima is not None or self.unverified_verity is not None

    def fingerprint(self) -> bytes:
        """SHA-256 over both values, length-prefixed: equal iff both values are equal."""
        h = hashlib.sha256()
        for v in (self.unverified_ima, self.unverified_verity):
            if v is None:
                h.update(b"\xff" * 8)
            else:
                h.update(len(v).to_bytes(8, "little"))
                h.update(v)
        return h.digest()


@dataclass(frozen=True)
class Protection:
    """A parsed protection: its kind and, for tree kinds, the parameters of the tree to build."""

    kind: str
    params: TreeParams | None = None
    #: The declared descriptor (from ``<ns>.verity``), parsed and bounded, not yet matched.
    unverified_descriptor: Descriptor | None = None

    @property
    def needs_tree(self) -> bool:
        return self.params is not None


@dataclass(frozen=True)
class Appraisal:
    """``state`` is READY, MISMATCH or INVALID; ``reason`` says why when it is not READY."""

    state: str
    reason: str = ""
    digest: str = ""


def read_attrs(fd: int, namespace: str) -> AttrValues:
    """Both attributes, read (size-bounded) from the already opened descriptor ``fd``."""
    return AttrValues(
        get_attr(fd, attr_name(namespace, IMA_SUFFIX)),
        get_attr(fd, attr_name(namespace, VERITY_SUFFIX)),
    )


def parse_protection(values: AttrValues, file_size: int) -> Protection:
    """Parse the attribute pair strictly; raises :class:`FormatError` (→ INVALID) with a reason."""
    desc: Descriptor | None = None
    if values.unverified_verity is not None:
        desc = Descriptor.from_bytes(values.unverified_verity)
        params = desc.params
        params.geometry(desc.data_size).check_bounded()
        if desc.data_size != file_size:
            raise FormatError(
                f"descriptor declares {desc.data_size} bytes, the file has {file_size}"
            )
    ima = values.unverified_ima
    if ima is not None:
        if not ima:
            raise FormatError("empty IMA attribute")
        kind = CLASSIC_TYPES.get(ima[0])
        if kind is not None:
            if desc is not None:
                raise FormatError("a classic IMA value cannot accompany a verity descriptor")
            return Protection(kind)
        if ima[0] == VERITY_SIG_TYPE:
            raise FormatError("v3 verity signatures cannot be appraised yet (no keyring support)")
        raise FormatError(f"unknown IMA attribute type 0x{ima[0]:02x}")
    if desc is None:
        raise FormatError("no attribute present")
    return Protection("descriptor", desc.params, desc)


def appraise(protection: Protection, computed: MerkleTree) -> Appraisal:
    """Compare a freshly built tree with what the attributes declare."""
    digest = str(computed.file_digest())
    declared = protection.unverified_descriptor
    if declared is None:
        return Appraisal("INVALID", "nothing declared to compare with", digest)
    if hmac.compare_digest(declared.to_bytes(), computed.descriptor.to_bytes()):
        return Appraisal("READY", "", digest)
    return Appraisal("MISMATCH", "content does not hash to the declared root", digest)


def describe_error(err: Error) -> str:
    return str(err)
