"""Signing keys (the ``Signer`` half of securesystemslib's shape) and IMA signatures.

* :class:`Signer` — abstract: ``keyid``, ``public_key`` and ``sign_digest(digest, hash_algo)``
  returning the raw signature over a pre-hashed digest. :class:`FileSigner` holds a private key
  loaded from a file; :func:`load_signer` picks the signer by URI scheme (``file:`` or a plain
  path; ``pkcs11:`` for a key in a token, :mod:`pyverity.keys.pkcs11`, imported only then).
* :func:`load_private_key` reads PEM or DER, encrypted or not; a passphrase is bytes, or a
  callable asked only if the key turns out to be encrypted (the CLI reads prompt/file/env).
* :func:`sign_v2` / :func:`sign_v3` make :class:`~pyverity.format.ima.ImaSignature` values:
  v2 over a whole-file hash (as ``evmctl ima_sign``), v3 over ``H(ima_file_id)`` of an
  fs-verity digest (spec/ima.md §2.3).

Keyid choice (spec §2.5): an explicit keyid, else the certificate's SKID tail; a certificate
without SKID, or no certificate at all, is refused without an explicit keyid unless
``allow_computed_keyid`` (then: SHA-1 of the public key, what evmctl does), because the kernel
finds keys only by SKID.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pyverity.errors import ConfigurationError, SignatureError, UnsupportedError, UsageError
from pyverity.format.ima import (
    ImaSignature,
    algo_by_id,
    file_id_hash,
    kernel_algo_for_verity,
)
from pyverity.keys.cert import Certificate, load_certificate, parse_certificate, read_bounded
from pyverity.keys.key import PublicKey, PublicKeyTypes, check_key_type, crypto_hash
from pyverity.keys.keyid import keyid_from_public_key

__all__ = [
    "FileSigner",
    "Passphrase",
    "PrivateKeyTypes",
    "Signer",
    "choose_keyid",
    "load_private_key",
    "load_signer",
    "sign_v2",
    "sign_v3",
    "with_keyid",
]

PrivateKeyTypes = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
#: A passphrase, or a function asked for one only when the key is encrypted.
Passphrase = bytes | Callable[[], bytes] | None

MAX_KEY_FILE_SIZE = 64 * 1024


class Signer(abc.ABC):
    """Something that signs pre-hashed digests under one IMA keyid."""

    @property
    @abc.abstractmethod
    def keyid(self) -> int: ...

    @property
    @abc.abstractmethod
    def public_key(self) -> PublicKey: ...

    @abc.abstractmethod
    def sign_digest(self, digest: bytes, hash_algo: int) -> bytes:
        """The raw signature over ``digest``, already hashed with kernel algorithm ``hash_algo``."""

    @property
    def certificate(self) -> Certificate | None:
        """The key's certificate, when one was given or found (PKCS#7 names it)."""
        return None


@dataclass(frozen=True)
class FileSigner(Signer):
    """A private key held in memory (loaded from a file)."""

    private_key: PrivateKeyTypes
    _keyid: int
    _certificate: Certificate | None = None

    @property
    def keyid(self) -> int:
        return self._keyid

    @property
    def certificate(self) -> Certificate | None:
        return self._certificate

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self._keyid, self.private_key.public_key(), "private key")

    def sign_digest(self, digest: bytes, hash_algo: int) -> bytes:
        alg = algo_by_id(hash_algo)
        if len(digest) != alg.digest_size:
            raise SignatureError(f"{alg.name} digest must be {alg.digest_size} bytes")
        chosen = Prehashed(crypto_hash(alg))
        try:
            if isinstance(self.private_key, rsa.RSAPrivateKey):
                return self.private_key.sign(digest, padding.PKCS1v15(), chosen)
            return self.private_key.sign(digest, ec.ECDSA(chosen))
        except UnsupportedAlgorithm:
            raise UnsupportedError(
                f"signing {alg.name} digests with this key is not supported by pyverity's"
                " cryptography library"
            ) from None


@dataclass(frozen=True)
class _RekeyedSigner(Signer):
    """Another signer's key under another keyid (see :func:`with_keyid`)."""

    inner: Signer
    _keyid: int

    @property
    def keyid(self) -> int:
        return self._keyid

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self._keyid, self.inner.public_key.key, self.inner.public_key.source)

    @property
    def certificate(self) -> Certificate | None:
        return self.inner.certificate

    def sign_digest(self, digest: bytes, hash_algo: int) -> bytes:
        return self.inner.sign_digest(digest, hash_algo)


def with_keyid(signer: Signer, keyid: int) -> Signer:
    """``signer`` writing ``keyid`` into its signatures (e.g. evmctl's default, the SHA-1 of
    the public key, :func:`~pyverity.keys.keyid.keyid_from_public_key`, where the
    certificate's SKID differs)."""
    inner = signer.inner if isinstance(signer, _RekeyedSigner) else signer
    if keyid == signer.keyid:
        return signer
    if keyid == inner.keyid:
        return inner
    return _RekeyedSigner(inner, keyid)


def sign_v2(signer: Signer, hash_algo: int, file_hash: bytes) -> ImaSignature:
    """A 0x03 v2 signature over a whole-file hash (``evmctl ima_sign``)."""
    return ImaSignature.v2(hash_algo, signer.keyid, signer.sign_digest(file_hash, hash_algo))


def sign_v3(signer: Signer, verity_algorithm: int, fsverity_digest: bytes) -> ImaSignature:
    """A 0x06 v3 signature over an fs-verity digest (fs-verity algorithm number 1 or 2)."""
    alg = kernel_algo_for_verity(verity_algorithm)
    signed = file_id_hash(alg.id, fsverity_digest)
    return ImaSignature.v3(alg.id, signer.keyid, signer.sign_digest(signed, alg.id))


def _is_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED" in data[:4096] or b"Proc-Type: 4,ENCRYPTED" in data


def load_private_key(
    path: str | os.PathLike[str], passphrase: Passphrase = None
) -> PrivateKeyTypes:
    """Load an RSA (2048–4096) or ECDSA (P-256/P-384) private key, PEM or DER, maybe encrypted."""
    name = os.fsdecode(path)
    data = read_bounded(path, "key", MAX_KEY_FILE_SIZE)
    pem = data.lstrip().startswith(b"-----BEGIN")
    loader = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    password = passphrase if isinstance(passphrase, bytes) else None
    for attempt in range(2):
        try:
            key = loader(data, password=password)
            break
        except TypeError as e:
            # Encrypted without a password (or a password given for a plain key).
            if password is None and callable(passphrase) and attempt == 0:
                password = passphrase()
                continue
            if password is None:
                raise SignatureError(
                    f"key '{name}' is encrypted",
                    remedy="give its passphrase with --pass-file FILE or --pass-env VAR",
                ) from e
            raise SignatureError(
                f"key '{name}' is not encrypted, but a passphrase was given"
            ) from e
        except ValueError as e:
            if password is not None and (not pem or _is_encrypted(data)):
                raise SignatureError(f"wrong passphrase for key '{name}' (or a corrupt key)") from e
            raise SignatureError(f"'{name}' is not a private key (PEM or DER)") from e
    else:  # pragma: no cover - the loop always breaks or raises
        raise SignatureError(f"cannot load key '{name}'")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise SignatureError(f"key '{name}' is neither RSA nor ECDSA")
    check_key_type(key, f"key '{name}'")
    return key


def _same_key(a: PrivateKeyTypes, cert: Certificate) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return a.public_key().public_bytes(der, pub) == cert.public_key.key.public_bytes(der, pub)


def choose_keyid(
    public: PublicKeyTypes,
    cert: Certificate | None,
    cert_name: str,
    keyid: int | None,
    *,
    allow_computed_keyid: bool,
) -> int:
    """The keyid to sign under (spec §2.5): ``keyid``, else the certificate's SKID tail, else
    (only if ``allow_computed_keyid``) SHA-1 of the public key, as evmctl."""
    if keyid is not None:
        return keyid
    if cert is not None:
        if not cert.keyid_from_skid:
            raise SignatureError(
                f"certificate '{cert_name}' has no Subject Key Identifier:"
                " the kernel could never find this key",
                remedy="give the keyid with --keyid HEX, or use a certificate with an SKID",
            )
        return cert.keyid
    if not allow_computed_keyid:
        raise SignatureError(
            "no certificate given: cannot know the keyid the kernel will look up",
            remedy="give --cert CERT (its SKID is the keyid) or --keyid HEX",
        )
    return keyid_from_public_key(public)


def load_signer(
    key: str | os.PathLike[str],
    *,
    cert: str | os.PathLike[str] | None = None,
    keyid: int | None = None,
    passphrase: Passphrase = None,
    allow_computed_keyid: bool = False,
    pkcs11_module: str | None = None,
) -> Signer:
    """A signer for ``key``: a path, a ``file:`` URI, or a ``pkcs11:`` URI (RFC 7512).

    With ``cert``: the key must match it, and the keyid is its SKID tail. ``keyid`` overrides.
    Without either, the keyid is SHA-1 of the public key only if ``allow_computed_keyid``.
    A ``pkcs11:`` key needs the optional ``python-pkcs11`` (``pyverity[pkcs11]``), imported only
    then; ``passphrase`` is its PIN and ``pkcs11_module`` the module used when the URI names
    none (see :mod:`pyverity.keys.pkcs11`).
    """
    key = os.fsdecode(key)
    if key.startswith("pkcs11:"):
        try:
            from pyverity.keys.pkcs11 import load_pkcs11_signer
        except ModuleNotFoundError as e:
            if e.name != "pkcs11":
                raise
            raise ConfigurationError(
                "PKCS#11 keys need python-pkcs11, which is not installed",
                remedy="pip install 'pyverity[pkcs11]'",
            ) from e
        return load_pkcs11_signer(
            key,
            cert=cert,
            keyid=keyid,
            pin=passphrase,
            allow_computed_keyid=allow_computed_keyid,
            module=pkcs11_module,
        )
    if ":" in key.split("/", 1)[0] and not key.startswith("file:"):
        scheme = key.split(":", 1)[0]
        raise UsageError(f"key URI scheme '{scheme}:' is not supported (a path, file: or pkcs11:)")
    path = key.removeprefix("file:")
    private = load_private_key(path, passphrase)
    c: Certificate | None = None
    if cert is not None:
        c = load_certificate(cert)
    else:  # like evmctl: a PEM certificate in the key file itself names the keyid
        data = read_bounded(path, "key", MAX_KEY_FILE_SIZE)
        start = data.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            c = parse_certificate(data[start:], path)
    cert_name = os.fsdecode(cert) if cert is not None else path
    if c is not None and not _same_key(private, c):
        raise SignatureError(f"key '{path}' does not match certificate '{cert_name}'")
    chosen = choose_keyid(
        private.public_key(), c, cert_name, keyid, allow_computed_keyid=allow_computed_keyid
    )
    return FileSigner(private, chosen, c)
