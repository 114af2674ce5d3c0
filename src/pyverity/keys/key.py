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

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pyverity.errors import Reason, SignatureError, UnsupportedError
from pyverity.format.ima import KernelHashAlgo, algo_by_id

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "VERIFY_CURVES",
    "VERIFY_RSA_BITS",
    "BadSignatureError",
    "PublicKey",
    "PublicKeyTypes",
    "UnknownKeyError",
    "UnsupportedKeyError",
    "check_key_type",
    "crypto_hash",
    "describe_key",
]

logger = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
#: RSA sizes the kernel's ``rsa_check_key_length`` takes (512 too, outside FIPS mode: not
#: here). Verifying accepts them all, warning below 2048 bits; signing needs 2048 or more.
VERIFY_RSA_BITS = (1024, 1536, 2048, 3072, 4096)
#: Curves the kernel's IMA verifies that pyverity signs with (DESIGN.md §7).
CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
#: Curves the kernel's ecdsa verifies (``crypto/ecdsa.c``): P-192, P-256, P-384, and P-521
#: from 6.10. Verifying accepts them all; signing keeps to :data:`CURVES`.
VERIFY_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-192": ec.SECP192R1,
    **CURVES,
    "P-521": ec.SECP521R1,
}

PublicKeyTypes = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class UnknownKeyError(SignatureError):
    """No key in the keyring has the signature's keyid."""

    reason = Reason.UNKNOWN_KEY


class UnsupportedKeyError(SignatureError):
    """A key of a type, size or curve the kernel's IMA does not take (reason ``unsupported``)."""

    reason = Reason.UNSUPPORTED


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
    "sm3": hashes.SM3,
}


class _NamedHash(hashes.HashAlgorithm):
    """A kernel hash ``cryptography`` has no class for (rmd160, md4, …), by its OpenSSL name:
    enough for a pre-hashed digest (ECDSA takes any digest; RSA needs OpenSSL to know the
    name for the DigestInfo, else ``cryptography`` raises ``UnsupportedAlgorithm``)."""

    def __init__(self, name: str, digest_size: int) -> None:
        self._name = name
        self._digest_size = digest_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def digest_size(self) -> int:
        return self._digest_size

    @property
    def block_size(self) -> int | None:
        return None


def crypto_hash(alg: KernelHashAlgo) -> hashes.HashAlgorithm:
    """The ``cryptography`` hash object for a kernel hash algorithm (pre-hashed use only)."""
    known = _CRYPTO_HASHES.get(alg.name)
    if known is not None:
        return known()
    return _NamedHash(alg.hashlib_name or alg.name, alg.digest_size)


def _rsa_sizes(sizes: tuple[int, ...]) -> str:
    return ", ".join(str(b) for b in sizes[:-1]) + f" or {sizes[-1]}"


def check_key_type(key: object, what: str, *, verifying: bool = False) -> None:
    """Refuse keys the kernel's IMA does not take. Signing: RSA 2048–4096, ECDSA P-256/P-384;
    ``verifying``: also RSA-1024 and RSA-1536 (with a warning: weak) and P-192 and P-521, as
    the kernel verifies them. A key of another size or curve is :class:`UnsupportedKeyError`."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        bits = key.key_size
        if verifying and bits in VERIFY_RSA_BITS:
            if bits < MIN_RSA_BITS:
                logger.warning("%s is RSA-%d: weak (under %d bits)", what, bits, MIN_RSA_BITS)
            return
        if not verifying and MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            return
        need = (
            f"the kernel verifies RSA of {_rsa_sizes(VERIFY_RSA_BITS)} bits"
            if verifying
            else f"signing needs {MIN_RSA_BITS}–{MAX_RSA_BITS} bits"
        )
        raise UnsupportedKeyError(f"{what} is RSA-{bits}; {need}")
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        curves = VERIFY_CURVES if verifying else CURVES
        if not any(isinstance(key.curve, c) for c in curves.values()):
            raise UnsupportedKeyError(
                f"{what} uses curve {key.curve.name}; use " + ", ".join(curves)
            )
        return
    raise UnsupportedKeyError(f"{what} is neither RSA nor ECDSA")


def describe_key(key: PublicKeyTypes) -> str:
    """``rsa-2048``, ``ecdsa-p256`` …"""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    name = key.curve.name
    return "ecdsa-" + {"secp192r1": "p192", "secp256r1": "p256", "secp384r1": "p384",
                       "secp521r1": "p521"}.get(name, name)  # fmt: skip


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
        except UnsupportedAlgorithm:
            raise UnsupportedError(
                f"{describe_key(self.key)} signatures over {alg.name} digests are not supported"
                " by pyverity's cryptography library"
            ) from None
        except InvalidSignature:
            raise BadSignatureError(
                f"signature does not verify with key {self.keyid:08x}"
            ) from None
        except ValueError as e:  # e.g. a malformed DER ECDSA signature
            raise BadSignatureError(f"signature is malformed for key {self.keyid:08x}: {e}") from e
