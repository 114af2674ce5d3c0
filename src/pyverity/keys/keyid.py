"""IMA keyids (spec/ima.md §2.5): what the kernel looks a signing key up by.

The kernel finds a key by the last 4 bytes of its X.509 Subject Key Identifier. A key without a
certificate (or a certificate without SKID) gets evmctl's ``calc_keyid_v2``: the last 4 bytes
of SHA-1 over the ``subjectPublicKey`` BIT STRING contents — which is also what OpenSSL's default
``subjectKeyIdentifier=hash`` puts in the SKID, so for ordinary certificates both agree.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyverity.errors import SignatureError, UsageError

__all__ = ["keyid_from_public_key", "parse_keyid", "public_key_bits", "skid_keyid"]


def public_key_bits(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """The contents of the ``subjectPublicKey`` BIT STRING (PKCS#1 for RSA, X9.62 point for EC)."""
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def keyid_from_public_key(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> int:
    """``calc_keyid_v2``: SHA-1 of the public key bits, last 4 bytes, as a big-endian int."""
    return int.from_bytes(hashlib.sha1(public_key_bits(key)).digest()[-4:], "big")  # noqa: S324


def skid_keyid(cert: x509.Certificate) -> int | None:
    """Last 4 bytes of the certificate's Subject Key Identifier, or None without one."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    digest = ext.value.digest
    if len(digest) < 4:
        raise SignatureError("certificate Subject Key Identifier is shorter than 4 bytes")
    return int.from_bytes(digest[-4:], "big")


def parse_keyid(text: str) -> int:
    """A keyid given on the command line: 1–8 hex digits (``0x`` allowed), not zero."""
    t = text.lower().removeprefix("0x")
    if not t or len(t) > 8 or any(c not in "0123456789abcdef" for c in t):
        raise UsageError(f"invalid keyid '{text}': expected up to 8 hex digits")
    value = int(t, 16)
    if value == 0:
        raise UsageError("keyid 0 is not valid")
    return value
