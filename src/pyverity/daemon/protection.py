"""The daemon's one door to the attributes: reading them from an open descriptor and appraising
a finished build, both through :mod:`pyverity.protect` (no second parser or verifier here).

:func:`observe_fd` turns one ``fstat`` plus one read of both attributes into what the lifecycle
needs: the fingerprint of the raw values, whether any is present, the parsed protection or the
reason it is INVALID. A signature over a declared descriptor is checked right away for a file
that is not small (no content involved), so an untrusted key or a forged signature is INVALID
without a long build; a small file's is checked by the gate with its build (ADR 0006).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pyverity.daemon.protocol import KeyringCertificates
from pyverity.errors import Error, Reason
from pyverity.format.digest import format_digest
from pyverity.format.merkletree import MerkleTree
from pyverity.protect import (
    InvalidProtectionError,
    ProtectionKind,
    read_protection,
    verify_declared_signature,
)
from pyverity.protect.gate import Verdict, VerdictState, appraisal_result

if TYPE_CHECKING:
    from pyverity.keys import Keyring
    from pyverity.protect import Protection

__all__ = [
    "Declared",
    "appraise",
    "keyring_certificates",
    "keyring_from_certificates",
    "load_keyring",
    "mismatch",
    "read_declared",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Declared:
    """What one read of a file's two attributes showed."""

    #: Changes iff either raw value changes (absent and empty differ).
    fingerprint: bytes
    present: bool
    protection: Protection | None = None
    #: Why the values are INVALID (empty when ``protection`` is usable).
    invalid_reason: str = ""

    @property
    def kind(self) -> str:
        return self.protection.kind.value if self.protection is not None else ""

    @property
    def needs_tree(self) -> bool:
        return self.protection is not None and self.protection.has_tree

    @property
    def declared_digest(self) -> str:
        desc = self.protection.unverified_descriptor if self.protection else None
        return format_digest(desc.hash_alg.name, desc.digest()) if desc is not None else ""


def load_keyring(path: Path | None) -> Keyring | None:
    if path is None:
        return None
    from pyverity.keys import Keyring

    return Keyring.from_directory(path)


def keyring_certificates(keyring: Keyring | None) -> KeyringCertificates | None:
    """``keyring``'s certificates, for a worker to appraise with exactly the daemon's keys
    (not the directory's contents at some later time)."""
    if keyring is None:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding

    return tuple((c.cert.public_bytes(Encoding.DER), c.public_key.source) for c in keyring)


def keyring_from_certificates(certs: KeyringCertificates | None) -> Keyring | None:
    """The keyring :func:`keyring_certificates` described."""
    if certs is None:
        return None
    from pyverity.keys import Keyring, parse_certificate

    return Keyring.from_certificates(parse_certificate(der, source) for der, source in certs)


def read_declared(
    fd: int, namespace: str, keyring: Keyring | None, *, check_signature: bool = True
) -> Declared:
    """Read and check both attributes of the open file ``fd``. ``check_signature`` False leaves
    a signed descriptor's signature to the gate at the end of the build (a small file's build
    costs less than the check, and a worker does both: ADR 0006)."""
    try:
        prot = read_protection(fd, namespace)
    except InvalidProtectionError as e:
        return Declared(e.fingerprint, True, None, str(e))
    if prot.kind is ProtectionKind.NONE:
        return Declared(prot.fingerprint, False)
    signed = prot.kind is ProtectionKind.VERITY_SIGNED
    if check_signature and signed and prot.unverified_descriptor is not None:
        try:
            verify_declared_signature(prot, keyring)
        except Error as e:
            return Declared(prot.fingerprint, True, None, f"{e.reason or Reason.MALFORMED}: {e}")
    if signed and keyring is None:
        return Declared(prot.fingerprint, True, None, "signed, but the daemon has no keyring")
    return Declared(prot.fingerprint, True, prot)


def appraise(protection: Protection, built: MerkleTree, keyring: Keyring | None) -> Verdict:
    """The gate's verdict on a freshly built tree (:func:`pyverity.protect.gate.appraisal_result`:
    what the attributes declare, and their signature), with the computed digest; a failure's
    message starts with its reason."""
    verdict = appraisal_result(protection, built.descriptor, keyring)
    digest = str(built.file_digest())
    message = verdict.message
    if not verdict.ok and not message.startswith(verdict.reason.value):
        message = f"{verdict.reason.value}: {message}"
    return replace(verdict, digest=digest, message=message)


def mismatch(protection: Protection, message: str, digest: str | None) -> Verdict:
    """A MISMATCH verdict the daemon finds itself (the kernel enforces another digest)."""
    return Verdict(
        VerdictState.MISMATCH, Reason.CONTENT_MISMATCH, message, protection.kind, digest=digest
    )
