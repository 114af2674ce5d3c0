"""Public keys and IMA signature verification (the ``Key`` half of securesystemslib's shape).

:class:`PublicKey` wraps an RSA or ECDSA public key with its IMA keyid and verifies a raw
signature over a pre-hashed digest, raising on failure (never returning False):

* :class:`UnknownKeyError` — no key with the signature's keyid (the kernel's ENOKEY);
* :class:`BadSignatureError` — the key is known but the signature does not verify
  (wrong key, other content, flipped bit, wrong algorithm).

Both are :class:`~pyverity.errors.SignatureError`, so callers that do not care which may catch
that. Keyids are computed by :mod:`pyverity.keys.keyid`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pyverity.errors import FormatError, Reason, SignatureError
from pyverity.format.ima import KernelHashAlgo, algo_by_id

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "BadSignatureError",
    "PublicKey",
    "PublicKeyTypes",
    "UnknownKeyError",
    "check_key_type",
    "crypto_hash",
    "describe_key",
]

logger = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
#: Curves the kernel's IMA verifies that pyverity signs with (DESIGN.md §7).
CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}

PublicKeyTypes = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class UnknownKeyError(SignatureError):
    """No key in the keyring has the signature's keyid."""

    reason = Reason.UNKNOWN_KEY


class BadSignatureError(SignatureError):
    """The key is known, but the signature does not verify over the digest."""

    reason = Reason.BAD_SIGNATURE


_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}


def crypto_hash(alg: KernelHashAlgo) -> hashes.HashAlgorithm:
    """The ``cryptography`` hash object for a kernel hash algorithm."""
    try:
        return _CRYPTO_HASHES[alg.name]()
    except KeyError:
        raise FormatError(f"hash algorithm {alg.name} is not supported for signatures") from None


def check_key_type(key: object, what: str) -> None:
    """Refuse keys the kernel's IMA (and pyverity) do not use: RSA 2048–4096, ECDSA P-256/384."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise SignatureError(
                f"{what} is RSA-{key.key_size}; pyverity needs {MIN_RSA_BITS}–{MAX_RSA_BITS} bits"
            )
        return
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if not any(isinstance(key.curve, c) for c in CURVES.values()):
            raise SignatureError(f"{what} uses curve {key.curve.name}; use P-256 or P-384")
        return
    raise SignatureError(f"{what} is neither RSA nor ECDSA")


def describe_key(key: PublicKeyTypes) -> str:
    """``rsa-2048``, ``ecdsa-p256`` …"""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "ecdsa-" + {"secp256r1": "p256", "secp384r1": "p384"}.get(key.curve.name, key.curve.name)


@dataclass(frozen=True)
class PublicKey:
    """A verification key with its IMA keyid (32-bit) and where it came from."""

    keyid: int
    key: PublicKeyTypes
    source: str = ""

    @property
    def algorithm(self) -> str:
        return describe_key(self.key)

    def verify_signature(self, signature: bytes, digest: bytes, hash_algo: int) -> None:
        """Verify ``signature`` over the pre-hashed ``digest``; raise :class:`BadSignatureError`.

        RSA: PKCS#1 v1.5 with the DigestInfo of ``hash_algo``; ECDSA: ``digest`` is the message
        hash (spec/ima.md §2.3–2.4). As in the kernel and every ECDSA implementation, only the
        leftmost curve-size bits of a longer digest are used (SEC 1 §4.1.4): a v2 SHA-512
        digest under P-256 is bound by its first 256 bits (v3 signs ``H(file id)``, so there a
        change anywhere in the fs-verity digest changes everything signed).
        """
        alg = algo_by_id(hash_algo)
        if len(digest) != alg.digest_size:
            raise BadSignatureError(
                f"digest is {len(digest)} bytes, {alg.name} needs {alg.digest_size}"
            )
        chosen = Prehashed(crypto_hash(alg))
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, digest, padding.PKCS1v15(), chosen)
            else:
                self.key.verify(signature, digest, ec.ECDSA(chosen))
        except InvalidSignature:
            raise BadSignatureError(
                f"signature does not verify with key {self.keyid:08x}"
            ) from None
        except ValueError as e:  # e.g. a malformed DER ECDSA signature
            raise BadSignatureError(f"signature is malformed for key {self.keyid:08x}: {e}") from e
