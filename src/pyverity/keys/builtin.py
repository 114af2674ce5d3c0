"""fs-verity built-in signatures (spec/fsverity.md §5): PKCS#7 over the formatted digest.

:func:`builtin_signature` returns the DER ``SignedData`` that ``fsverity sign`` writes: detached,
no certificates, no authenticated attributes, the digest algorithm being the file's fs-verity
hash algorithm. ``cryptography``'s PKCS#7 builder with those options produces exactly
OpenSSL's bytes for RSA (checked against the real ``fsverity sign`` in the interop tests).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from pyverity.errors import SignatureError
from pyverity.format.formatted_digest import FormattedDigest
from pyverity.keys.signer import PrivateKeyTypes

__all__ = ["builtin_signature"]

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha512": hashes.SHA512,
}


def builtin_signature(
    formatted: FormattedDigest, key: PrivateKeyTypes, cert: x509.Certificate
) -> bytes:
    """The DER PKCS#7 detached signature of ``formatted`` (what ``fsverity sign`` writes)."""
    from pyverity.format.hashalg import by_number

    alg = by_number(formatted.digest_algorithm)
    options = [
        pkcs7.PKCS7Options.DetachedSignature,
        pkcs7.PKCS7Options.NoCerts,
        pkcs7.PKCS7Options.NoAttributes,
        pkcs7.PKCS7Options.Binary,
    ]
    try:
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(formatted.to_bytes())
            .add_signer(cert, key, _HASHES[alg.name]())
            .sign(serialization.Encoding.DER, options)
        )
    except (TypeError, ValueError) as e:
        raise SignatureError(f"cannot make the PKCS#7 signature: {e}") from e
