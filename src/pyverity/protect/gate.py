"""The one appraisal gate: does this content match this protection, and is its signature trusted?

Every caller that decides a file's state asks here — ``pyverity verify``, :func:`appraise_file`,
the batch verifier, the reader's open (and so the mount's), and the mount's
``FS_IOC_ENABLE_VERITY`` with a built-in signature. The dispatch over protection kinds and the
comparison of computed and declared digests are written once, in this module.

Inputs: a :class:`~pyverity.protect.attrs.Protection` (what the attributes declare), what was
*computed* from the content — the :class:`~pyverity.format.descriptor.Descriptor` of a tree built
with ``protection.tree_params()`` (VERITY, VERITY_SIGNED), the whole-file hash (CLASSIC, with
:func:`classic_hash_algo`), or None when nothing was computed yet — and a keyring.
:func:`compute` computes it from an open file as the protection says.

The outcome is a :class:`Verdict`; its :class:`VerdictState` maps one to one onto the daemon's
``State`` (same names and values):

=========  ===========================================================================
READY      the content matches the declared descriptor / signature / hash
PENDING    nothing computed yet, and the declaration holds (its signature, if checked, verifies
           over the declared descriptor): the content is still to be checked against it
MISMATCH   the content does not hash to the declared digest, or — a signature without a
           descriptor, or a classic 0x03 signature — the signature does not verify over it
INVALID    malformed attributes, unknown key, no keyring for a signed file, no signature where
           one is required, a signature that fails over a *declared* descriptor
CLASSIC    a classic value, judged without its content (no whole-file hash was given)
NONE       no protection attribute at all
=========  ===========================================================================

Two forms (STYLE.md): :func:`verify_protection` returns the state or raises the error (each
carries its :class:`~pyverity.errors.Reason`); :func:`appraisal_result` returns the
:class:`Verdict`, which keeps that error (``verdict.raise_if_failed()``).
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyverity.errors import Error, FormatError, IntegrityError, Reason, SignatureError
from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import format_digest
from pyverity.format.ima import ImaHash, ImaSignature, KernelHashAlgo
from pyverity.protect.attrs import Protection, ProtectionKind

if TYPE_CHECKING:  # keys (and cryptography) are imported only by whoever holds a keyring
    from pyverity.format.merkletree import MerkleTree
    from pyverity.hashing.progress import CancelCheck, ProgressFn
    from pyverity.keys.keyring import Keyring

__all__ = [
    "AppraisalResult",
    "AppraisalState",
    "Computed",
    "ContentMismatchError",
    "MissingKeyringError",
    "NotProtectedError",
    "NotVerityError",
    "SignatureCheck",
    "SignatureRequiredError",
    "Verdict",
    "VerdictState",
    "appraisal_result",
    "builtin_signature_result",
    "classic_hash_algo",
    "compute",
    "failure_result",
    "verify_declared_signature",
    "verify_protection",
]


class VerdictState(enum.StrEnum):
    """The outcome of an appraisal (see the module table); the daemon's ``State`` by name."""

    READY = "READY"
    PENDING = "PENDING"
    MISMATCH = "MISMATCH"
    INVALID = "INVALID"
    CLASSIC = "CLASSIC"
    NONE = "NONE"


#: Earlier names of the verdict types (``pyverity.appraise_file`` returned these).
AppraisalState = VerdictState


class SignatureCheck(enum.Enum):
    """What a signature must do for the content to pass."""

    #: A signature must be present and verify (``appraise_type=sigv3|imasig``; a keyring given
    #: to a reader without a policy).
    REQUIRE = "require"
    #: A signature that is present must verify; without a keyring that is NO_KEYRING
    #: (``pyverity verify``, the daemon).
    VERIFY = "verify"
    #: A signature that is present is checked when a keyring is given; without one a declared
    #: descriptor is checked alone (the reader without a policy or with a lenient one).
    IF_KEYRING = "if keyring"
    #: Signatures are not looked at: only the content against a declared descriptor (the
    #: fs-verity layer of a read, below any appraisal).
    IGNORE = "ignore"


class NotProtectedError(IntegrityError):
    """The file carries neither attribute."""

    reason = Reason.NO_ATTRIBUTE


class ContentMismatchError(IntegrityError):
    """The content does not hash to the declared digest."""

    reason = Reason.CONTENT_MISMATCH


class MissingKeyringError(SignatureError):
    """A signed file was appraised without a keyring."""

    reason = Reason.NO_KEYRING


class SignatureRequiredError(SignatureError):
    """The file carries no signature, and the policy (or the keyring given) requires one."""

    reason = Reason.NO_SIGNATURE


class NotVerityError(SignatureError):
    """``digest_type=verity``: the file is protected by a classic (whole-file) value instead."""

    reason = Reason.NOT_VERITY


@dataclass(frozen=True)
class Verdict:
    """The outcome of one appraisal. ``error`` is the failure (None unless it failed), so the
    result form and the raising form can never disagree."""

    state: VerdictState
    reason: Reason
    message: str
    kind: ProtectionKind
    #: The signing keyid, when there is a signature.
    keyid: int | None = None
    #: The computed digest as ``alg:hex`` (fs-verity digest, or whole-file hash for classic).
    digest: str | None = None
    error: Error | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """READY: the content was checked and matches."""
        return self.state is VerdictState.READY

    @property
    def failed(self) -> bool:
        return self.error is not None

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


AppraisalResult = Verdict


@dataclass(frozen=True)
class Computed:
    """What :func:`compute` got from the content: the value :func:`appraisal_result` compares,
    and with ``keep_tree`` the Merkle tree (for a classic file, one of the same bytes)."""

    value: Descriptor | bytes
    tree: MerkleTree | None = None


def classic_hash_algo(protection: Protection) -> KernelHashAlgo:
    """The algorithm to hash a CLASSIC file's whole content with."""
    value = protection.unverified_ima
    if protection.kind is not ProtectionKind.CLASSIC or value is None:
        raise FormatError(f"a {protection.kind.value} file has no whole-file hash")
    return value.algorithm


def compute(
    fd: int,
    protection: Protection,
    *,
    keep_tree: bool = False,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> Computed:
    """Hash the open file ``fd`` as ``protection`` says: its tree, or its whole-file hash."""
    from pyverity.hashing import build_tree

    if protection.kind is ProtectionKind.CLASSIC:
        alg = classic_hash_algo(protection)
        if keep_tree:
            from pyverity.protect.content import hash_and_tree

            whole, tree = hash_and_tree(fd, alg)
            return Computed(whole, tree)
        from pyverity.protect.sign import whole_file_hash

        return Computed(whole_file_hash(fd, alg, progress))
    if not protection.has_tree:
        raise NotProtectedError("not protected (no .verity or .ima attribute): nothing to hash")
    built = build_tree(
        fd,
        protection.tree_params(),
        keep_tree=keep_tree,
        jobs=jobs,
        progress=progress,
        cancel=cancel,
    )
    return Computed(built.descriptor, built if keep_tree else None)


def _prefix(name: str | None) -> str:
    return f"'{name}': " if name is not None else ""


def _ring(keyring: Keyring | None, name: str | None) -> Keyring:
    if keyring is None:
        raise MissingKeyringError(
            f"{_prefix(name)}file is signed, but no keyring was given to check it",
            remedy="give the directory of trusted certificates (--keyring)",
        )
    return keyring


def _same(computed: bytes, declared: bytes) -> bool:
    """The one comparison of a computed value with a declared one (constant time)."""
    return hmac.compare_digest(computed, declared)


def _judge_classic(
    protection: Protection,
    computed: Descriptor | bytes | None,
    keyring: Keyring | None,
    verity: bool,
    name: str | None,
) -> VerdictState:
    if verity:
        raise NotVerityError(
            f"{_prefix(name)}a verity signature is required (verity-signature-required),"
            " the file carries a classic (whole-file) IMA value"
        )
    if computed is None:
        return VerdictState.CLASSIC
    if not isinstance(computed, bytes):
        raise FormatError("a classic file is appraised with its whole-file hash (caller error)")
    value = protection.unverified_ima
    if isinstance(value, ImaHash):
        if not _same(computed, value.digest):
            raise ContentMismatchError(
                f"{_prefix(name)}content does not match: {value.algorithm.name} {computed.hex()},"
                f" declared {value.digest.hex()}",
                remedy="the file changed since it was protected; sign it again",
            )
        return VerdictState.READY
    if not isinstance(value, ImaSignature):  # pragma: no cover - CLASSIC always has a value
        raise FormatError("no IMA value")
    _ring(keyring, name).verify_ima_signature(value, computed)
    return VerdictState.READY


def _judge_tree(
    protection: Protection,
    computed: Descriptor | bytes | None,
    keyring: Keyring | None,
    signature: SignatureCheck,
    name: str | None,
) -> VerdictState:
    if computed is not None:
        if not isinstance(computed, Descriptor):
            raise FormatError(
                "a verity file is appraised with its computed descriptor (caller error)"
            )
        if (
            computed.params != protection.tree_params()
            or computed.data_size != protection.data_size
        ):
            raise FormatError("computed tree does not use the declared parameters (caller error)")
    declared = protection.unverified_descriptor
    sig = protection.signature
    if declared is not None:
        checked = signature is not SignatureCheck.IGNORE and (
            keyring is not None or signature is not SignatureCheck.IF_KEYRING
        )
        if sig is not None and checked:
            _ring(keyring, name).verify_ima_signature(sig, declared.digest())
        if computed is None:
            return VerdictState.PENDING
        if not _same(computed.to_bytes(), declared.to_bytes()):
            its = " its descriptor" if name is not None else ""
            raise ContentMismatchError(
                f"{_prefix(name)}content does not match{its}: root hash"
                f" {computed.root_hash.hex()}, declared {declared.root_hash.hex()}",
                remedy="the file changed since it was protected; sign or enable it again",
            )
        return VerdictState.READY
    if sig is None:  # pragma: no cover - VERITY always has a descriptor
        raise FormatError("no descriptor and no signature")
    if signature is SignatureCheck.IGNORE:
        return VerdictState.PENDING  # nothing declared to compare the content with
    ring = _ring(keyring, name)
    if computed is None:
        return VerdictState.PENDING
    ring.verify_ima_signature(sig, computed.digest())
    return VerdictState.READY


def verify_protection(
    protection: Protection,
    computed: Descriptor | bytes | None,
    keyring: Keyring | None,
    *,
    signature: SignatureCheck = SignatureCheck.VERIFY,
    verity: bool = False,
    name: str | None = None,
) -> VerdictState:
    """Raise unless the content (as ``computed``) is what the attributes declare, with a
    signature as ``signature`` asks; ``verity`` (``digest_type=verity``) refuses classic values.

    Returns READY, or — nothing computed — PENDING (the declaration holds) or CLASSIC.
    ``name`` (a path) starts the messages.
    """
    kind = protection.kind
    if kind is ProtectionKind.NONE:
        raise NotProtectedError(
            f"{_prefix(name)}not protected (no .verity or .ima attribute)",
            remedy="protect it with `pyverity enable` or `pyverity sign`",
        )
    if signature is SignatureCheck.REQUIRE and protection.signature is None:
        raise SignatureRequiredError(
            f"{_prefix(name)}carries no signature, and the policy requires one",
            remedy="sign it with `pyverity sign`",
        )
    if kind is ProtectionKind.CLASSIC:
        return _judge_classic(protection, computed, keyring, verity, name)
    return _judge_tree(protection, computed, keyring, signature, name)


def _digest_text(protection: Protection, computed: Descriptor | bytes | None) -> str | None:
    if isinstance(computed, Descriptor):
        return format_digest(computed.hash_alg.name, computed.digest())
    if isinstance(computed, bytes) and protection.unverified_ima is not None:
        return format_digest(protection.unverified_ima.algorithm.name, computed)
    return None


def failure_result(
    err: Error, protection: Protection | None = None, digest: str | None = None
) -> Verdict:
    """The verdict of a failed appraisal, from its error (and the protection, when parsed):
    NONE for no attribute, MISMATCH when the content is what differs, INVALID otherwise."""
    reason = err.reason if err.reason is not None else Reason.MALFORMED
    kind = protection.kind if protection is not None else ProtectionKind.NONE
    sig = protection.signature if protection is not None else None
    if reason is Reason.NO_ATTRIBUTE:
        state = VerdictState.NONE
    elif reason is Reason.CONTENT_MISMATCH:
        state = VerdictState.MISMATCH
    elif (
        reason is Reason.BAD_SIGNATURE
        and digest is not None
        and (protection is not None and protection.unverified_descriptor is None)
    ):
        # A signature checked over the *computed* digest (no descriptor) that fails means the
        # content is what differs; over a declared descriptor it means the attribute is bad.
        state = VerdictState.MISMATCH
    else:
        state = VerdictState.INVALID
    return Verdict(state, reason, str(err), kind, sig.keyid if sig else None, digest, err)


def appraisal_result(
    protection: Protection,
    computed: Descriptor | bytes | None,
    keyring: Keyring | None,
    *,
    signature: SignatureCheck = SignatureCheck.VERIFY,
    verity: bool = False,
    name: str | None = None,
) -> Verdict:
    """Like :func:`verify_protection`, as a :class:`Verdict` (never raises an appraisal error)."""
    digest = _digest_text(protection, computed)
    try:
        state = verify_protection(
            protection, computed, keyring, signature=signature, verity=verity, name=name
        )
    except (IntegrityError, SignatureError, FormatError) as e:
        return failure_result(e, protection, digest)
    sig = protection.signature
    return Verdict(state, Reason.OK, "ok", protection.kind, sig.keyid if sig else None, digest)


def verify_declared_signature(protection: Protection, keyring: Keyring | None) -> None:
    """For a signed descriptor: the signature must verify over the *declared* digest (cheap
    early rejection, before any tree is built). Other kinds pass."""
    if protection.has_tree and protection.unverified_descriptor is not None:
        verify_protection(protection, None, keyring)


def builtin_signature_result(
    descriptor: Descriptor, signature: bytes, keyring: Keyring | None, *, name: str | None = None
) -> Verdict:
    """A built-in (PKCS#7) fs-verity signature over ``descriptor``'s digest, checked as the
    kernel checks it against its ``.fs-verity`` keyring: READY, or INVALID with the reason
    (MALFORMED, NO_KEYRING, UNKNOWN_KEY, BAD_SIGNATURE). ``message`` names the signer."""
    from pyverity.format.formatted_digest import FormattedDigest

    kind = ProtectionKind.VERITY_SIGNED
    digest = format_digest(descriptor.hash_alg.name, descriptor.digest())
    try:
        ring = _ring(keyring, name)
        from pyverity.keys.pkcs7 import verify_builtin_signature

        formatted = FormattedDigest(descriptor.hash_algorithm, descriptor.digest())
        cert = verify_builtin_signature(signature, formatted, ring)
    except SignatureError as e:
        reason = e.reason if e.reason is not None else Reason.MALFORMED
        return Verdict(VerdictState.INVALID, reason, str(e), kind, None, digest, e)
    return Verdict(VerdictState.READY, Reason.OK, f"signed by '{cert.subject}'", kind, None, digest)
