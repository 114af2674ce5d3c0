"""X.509 certificates (PEM or DER) as IMA verification keys.

:func:`load_certificate` reads one certificate and returns a :class:`Certificate`: the parsed
certificate, its :class:`~pyverity.keys.key.PublicKey` and whether the keyid came from the SKID
(``keyid_from_skid``). A certificate without SKID gets the SHA-1-of-public-key keyid and a
logged warning: the kernel could never find it, so signing with it needs an explicit keyid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyverity.errors import SignatureError
from pyverity.fs.inputs import read_input
from pyverity.keys.key import PublicKey, check_key_type
from pyverity.keys.keyid import keyid_from_public_key, skid_keyid

__all__ = [
    "MAX_CERT_SIZE",
    "Certificate",
    "load_certificate",
    "parse_certificate",
    "read_bounded",
]

logger = logging.getLogger(__name__)

MAX_CERT_SIZE = 64 * 1024


@dataclass(frozen=True)
class Certificate:
    """A certificate, its verification key and the provenance of its keyid."""

    cert: x509.Certificate
    public_key: PublicKey
    keyid_from_skid: bool

    @property
    def keyid(self) -> int:
        return self.public_key.keyid

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def algorithm(self) -> str:
        return self.public_key.algorithm


def parse_certificate(data: bytes, source: str = "certificate") -> Certificate:
    """Parse PEM or DER bytes; :class:`SignatureError` if unusable as an IMA key."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        key = cert.public_key()
    except ValueError as e:
        raise SignatureError(f"{source}: not an X.509 certificate (PEM or DER)") from e
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise SignatureError(f"{source}: key is neither RSA nor ECDSA")
    check_key_type(key, f"{source}: key", verifying=True)
    keyid = skid_keyid(cert)
    from_skid = keyid is not None
    if keyid is None:
        keyid = keyid_from_public_key(key)
        logger.warning(
            "%s has no Subject Key Identifier: using keyid %08x (SHA-1 of the public key);"
            " the kernel cannot find this key",
            source,
            keyid,
        )
    return Certificate(cert, PublicKey(keyid, key, source), from_skid)


def read_bounded(
    path: str | os.PathLike[str],
    what: str,
    limit: int = MAX_CERT_SIZE,
    *,
    dir_fd: int | None = None,
) -> bytes:
    """Read a small key or certificate file; :class:`InputError` if unreadable, not a regular
    file, or too large (:func:`pyverity.fs.inputs.read_input`)."""
    return read_input(path, what, limit, dir_fd=dir_fd)


def load_certificate(path: str | os.PathLike[str]) -> Certificate:
    """Read and parse a certificate file (bounded size)."""
    return parse_certificate(read_bounded(path, "certificate"), os.fsdecode(path))
