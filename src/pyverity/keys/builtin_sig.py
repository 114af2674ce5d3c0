"""fs-verity built-in signatures (spec/fsverity.md §5): PKCS#7 over the formatted digest.

:func:`builtin_signature` returns the DER ``SignedData`` that ``fsverity sign`` writes: detached,
no certificates, no authenticated attributes, the digest algorithm being the file's fs-verity
hash algorithm. With no authenticated attributes the signature is a plain signature over the
hash of the formatted digest, so the message is built here (:mod:`.der`) around
``Signer.sign_digest``: it works for keys in files and in tokens alike, and for RSA it is
OpenSSL's message byte for byte (checked against ``cryptography``'s PKCS#7 builder in the unit
tests and against the real ``fsverity sign`` in the interop tests).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyverity.errors import SignatureError
from pyverity.format.formatted_digest import FormattedDigest
from pyverity.format.ima import algo_by_name
from pyverity.keys import der
from pyverity.keys.signer import FileSigner, PrivateKeyTypes, Signer

__all__ = ["builtin_signature"]

_SIGNED_DATA = "1.2.840.113549.1.7.2"
_DATA = "1.2.840.113549.1.7.1"
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_ECDSA_WITH = {"sha256": "1.2.840.10045.4.3.2", "sha512": "1.2.840.10045.4.3.4"}


def builtin_signature(
    formatted: FormattedDigest, key: Signer | PrivateKeyTypes, cert: x509.Certificate
) -> bytes:
    """The DER PKCS#7 detached signature of ``formatted`` (what ``fsverity sign`` writes)."""
    from pyverity.format.hashalg import by_number

    signer = key if isinstance(key, Signer) else FileSigner(key, 0)
    name = by_number(formatted.digest_algorithm).name
    if name not in _ECDSA_WITH:
        raise SignatureError(f"cannot make a PKCS#7 signature with {name}")
    public = signer.public_key.key
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        raise SignatureError("cannot make the PKCS#7 signature: the certificate is not the key's")
    kernel_alg = algo_by_name(name)
    digest = hashlib.new(name, formatted.to_bytes()).digest()
    signature = signer.sign_digest(digest, kernel_alg.id)
    if isinstance(public, rsa.RSAPublicKey):
        sig_alg = der.algorithm_identifier(_RSA_ENCRYPTION)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        sig_alg = der.algorithm_identifier(_ECDSA_WITH[name], null_params=False)
    else:  # pragma: no cover - signers hold RSA or ECDSA keys only
        raise SignatureError("PKCS#7 needs an RSA or ECDSA key")
    digest_alg = der.algorithm_identifier(der.DIGEST_OIDS[name])
    who = der.tlv(der.SEQUENCE, cert.issuer.public_bytes() + der.integer(cert.serial_number))
    signer_info = der.tlv(
        der.SEQUENCE,
        der.integer(1) + who + digest_alg + sig_alg + der.tlv(der.OCTET_STRING, signature),
    )
    signed_data = der.tlv(
        der.SEQUENCE,
        der.integer(1)
        + der.tlv(der.SET, digest_alg)
        + der.tlv(der.SEQUENCE, der.tlv(der.OID, der.oid(_DATA)))
        + der.tlv(der.SET, signer_info),
    )
    return der.tlv(
        der.SEQUENCE, der.tlv(der.OID, der.oid(_SIGNED_DATA)) + der.tlv(0xA0, signed_data)
    )
