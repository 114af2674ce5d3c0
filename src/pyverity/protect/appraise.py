"""Appraisal: does a file's content match what its attributes declare, under a keyring?

Given a :class:`~pyverity.protect.attrs.Protection`, what was *computed* from the content and a
:class:`~pyverity.keys.Keyring`, decide the DESIGN.md §3 state:

=================  ==========================================================================
READY              content matches the declared descriptor / signature / hash
MISMATCH           content does not hash to the declared digest, or — signature without
                   descriptor, or classic 0x03 — the signature does not verify over it
INVALID            no or malformed attributes, unknown key, no keyring for a signed file,
                   signature fails over a *declared* descriptor's digest
=================  ==========================================================================

``computed`` is the :class:`~pyverity.format.descriptor.Descriptor` of a tree built with
``protection.tree_params()`` for VERITY / VERITY_SIGNED files, or the whole-file hash (bytes,
with the algorithm :func:`classic_hash_algo` names) for CLASSIC files.

Two forms (STYLE.md): :func:`verify_protection` returns None or raises
(:class:`ContentMismatchError` — an :class:`~pyverity.errors.IntegrityError` —,
:class:`~pyverity.keys.UnknownKeyError`, :class:`~pyverity.keys.BadSignatureError`,
:class:`NotProtectedError`, :class:`MissingKeyringError`); :func:`appraisal_result` returns an
:class:`AppraisalResult` with the state and a precise :class:`Reason`.
:func:`verify_declared_signature` checks a signature over a declared descriptor before any
tree is built (cheap early rejection).
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from pyverity.errors import Error, FormatError, IntegrityError, SignatureError
from pyverity.format.descriptor import Descriptor
from pyverity.format.ima import ImaHash, ImaSignature, KernelHashAlgo
from pyverity.keys.key import BadSignatureError
from pyverity.keys.keyring import Keyring
from pyverity.protect.attrs import Protection, ProtectionKind

__all__ = [
    "AppraisalResult",
    "AppraisalState",
    "ContentMismatchError",
    "MissingKeyringError",
    "NotProtectedError",
    "Reason",
    "appraisal_result",
    "classic_hash_algo",
    "verify_declared_signature",
    "verify_protection",
]


class AppraisalState(enum.Enum):
    READY = "ready"
    MISMATCH = "mismatch"
    INVALID = "invalid"


class Reason(enum.Enum):
    OK = "ok"
    NO_ATTRIBUTE = "no attribute"
    MALFORMED = "malformed"
    NO_KEYRING = "no keyring"
    UNKNOWN_KEY = "unknown key"
    BAD_SIGNATURE = "bad signature"
    CONTENT_MISMATCH = "content does not match"


class NotProtectedError(IntegrityError):
    """The file carries neither attribute."""

    reason = "no attribute"


class ContentMismatchError(IntegrityError):
    """The content does not hash to the declared digest."""

    reason = "content does not match"


class MissingKeyringError(SignatureError):
    """A signed file was appraised without a keyring."""

    reason = "no keyring"


@dataclass(frozen=True)
class AppraisalResult:
    """The outcome of one appraisal, for reporting (never for deciding by truthiness alone)."""

    state: AppraisalState
    reason: Reason
    message: str
    kind: ProtectionKind
    #: The signing keyid, when there is a signature.
    keyid: int | None = None
    #: The computed digest as ``alg:hex`` (fs-verity digest, or whole-file hash for classic).
    digest: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is AppraisalState.READY


def classic_hash_algo(protection: Protection) -> KernelHashAlgo:
    """The algorithm to hash a CLASSIC file's whole content with."""
    value = protection.unverified_ima
    if protection.kind is not ProtectionKind.CLASSIC or value is None:
        raise FormatError(f"a {protection.kind.value} file has no whole-file hash")
    return value.algorithm


def _keyring(keyring: Keyring | None) -> Keyring:
    if keyring is None:
        raise MissingKeyringError("file is signed, but no keyring was given to check it")
    return keyring


def verify_declared_signature(protection: Protection, keyring: Keyring | None) -> None:
    """For a signed descriptor: the signature must verify over the *declared* digest."""
    sig = protection.signature
    desc = protection.unverified_descriptor
    if sig is None or desc is None or not sig.is_verity:
        return
    _keyring(keyring).verify_ima_signature(sig, desc.digest())


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _verify_tree(protection: Protection, computed: Descriptor, keyring: Keyring | None) -> None:
    if computed.params != protection.tree_params() or computed.data_size != protection.data_size:
        raise FormatError("computed tree does not use the declared parameters (caller error)")
    declared = protection.unverified_descriptor
    sig = protection.signature
    if declared is not None:
        verify_declared_signature(protection, keyring)
        if not _same(declared.to_bytes(), computed.to_bytes()):
            raise ContentMismatchError(
                f"content does not match: root hash {computed.root_hash.hex()},"
                f" declared {declared.root_hash.hex()}"
            )
        return
    if sig is None:  # pragma: no cover - VERITY always has a descriptor
        raise FormatError("no descriptor and no signature")
    _keyring(keyring).verify_ima_signature(sig, computed.digest())


def _verify_classic(protection: Protection, computed: bytes, keyring: Keyring | None) -> None:
    value = protection.unverified_ima
    if isinstance(value, ImaHash):
        if not _same(value.digest, computed):
            raise ContentMismatchError(
                f"content does not match: {value.algorithm.name} {computed.hex()},"
                f" declared {value.digest.hex()}"
            )
        return
    if not isinstance(value, ImaSignature):  # pragma: no cover - CLASSIC always has a value
        raise FormatError("no IMA value")
    _keyring(keyring).verify_ima_signature(value, computed)


def verify_protection(
    protection: Protection, computed: Descriptor | bytes | None, keyring: Keyring | None
) -> None:
    """Raise unless the content (as ``computed``) is what the attributes declare."""
    kind = protection.kind
    if kind is ProtectionKind.NONE:
        raise NotProtectedError("no protection attribute (neither .verity nor .ima)")
    if kind is ProtectionKind.CLASSIC:
        if not isinstance(computed, bytes):
            raise FormatError("a classic file is appraised with its whole-file hash (caller error)")
        _verify_classic(protection, computed, keyring)
        return
    if not isinstance(computed, Descriptor):
        raise FormatError("a verity file is appraised with its computed descriptor (caller error)")
    _verify_tree(protection, computed, keyring)


def _reason_of(err: Error) -> Reason:
    try:
        return Reason(getattr(err, "reason", "malformed"))
    except ValueError:
        return Reason.MALFORMED


def appraisal_result(
    protection: Protection, computed: Descriptor | bytes | None, keyring: Keyring | None
) -> AppraisalResult:
    """Like :func:`verify_protection`, as a result object with the state and the reason."""
    sig = protection.signature
    keyid = sig.keyid if sig is not None else None
    digest: str | None = None
    if isinstance(computed, Descriptor):
        digest = f"{computed.hash_alg.name}:{computed.digest().hex()}"
    elif isinstance(computed, bytes) and protection.unverified_ima is not None:
        digest = f"{protection.unverified_ima.algorithm.name}:{computed.hex()}"
    try:
        verify_protection(protection, computed, keyring)
    except (IntegrityError, SignatureError, FormatError) as e:
        reason = _reason_of(e)
        state = AppraisalState.INVALID
        # A signature checked over the *computed* digest (no descriptor) that fails means the
        # content is what differs; over a declared descriptor it means the attribute is bad.
        sig_over_content = isinstance(e, BadSignatureError) and (
            protection.unverified_descriptor is None
        )
        if isinstance(e, ContentMismatchError) or sig_over_content:
            state = AppraisalState.MISMATCH
        return AppraisalResult(state, reason, str(e), protection.kind, keyid, digest)
    return AppraisalResult(AppraisalState.READY, Reason.OK, "ok", protection.kind, keyid, digest)
