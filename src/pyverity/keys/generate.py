"""Making signing keys: a private key and a self-signed X.509 certificate for IMA.

:func:`generate_key` writes, into a directory, without overwriting anything:

* ``<name>.key`` — the private key, PKCS#8 PEM, mode 0600 (encrypted when a passphrase is given);
* ``<name>.pem`` — the self-signed certificate, PEM;
* ``<name>.der`` — the same certificate in DER, which is what ``evmctl ima_verify`` reads and
  what the kernel loads into its IMA keyring (``keyctl padd asymmetric "" %keyring:.ima <
  name.der``, or ``_ima`` on kernels without ``CONFIG_INTEGRITY_TRUSTED_KEYRING``).

The certificate carries a Subject Key Identifier (SHA-1 of the public key, so the keyid agrees
with evmctl's ``calc_keyid_v2``), an Authority Key Identifier, ``basicConstraints CA:FALSE``,
``keyUsage digitalSignature`` and ``extendedKeyUsage codeSigning``, as the kernel's IMA wants.
Files are published with temp file + fsync + rename; the directory is fsynced.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyverity.errors import StorageError, UsageError
from pyverity.fs.atomic import publish_bytes
from pyverity.keys.key import CURVES, MAX_RSA_BITS, MIN_RSA_BITS
from pyverity.keys.keyid import skid_keyid

__all__ = ["GeneratedKey", "generate_key", "publish_file"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class GeneratedKey:
    keyid: int
    key_path: Path
    cert_path: Path
    der_path: Path


def publish_file(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`pyverity.fs.atomic.publish_bytes`).

    Without ``overwrite`` an existing ``path`` is refused, even one that appears meanwhile.
    """
    if not overwrite and path.exists():
        raise StorageError(f"'{path}' already exists; not overwriting it")
    try:
        publish_bytes(path, data, mode=mode, exclusive=not overwrite)
    except FileExistsError as e:
        raise StorageError(f"'{path}' already exists; not overwriting it") from e
    except OSError as e:
        raise StorageError(f"cannot write '{path}': {e.strerror}") from e


def _new_private_key(kind: str, bits: int | None, curve: str | None) -> PrivateKey:
    if kind == "rsa":
        if curve is not None:
            raise UsageError("--curve is for ecdsa keys")
        size = bits or 3072
        if not MIN_RSA_BITS <= size <= MAX_RSA_BITS or size % 8:
            raise UsageError(f"RSA keys must have {MIN_RSA_BITS}–{MAX_RSA_BITS} bits, not {size}")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if kind == "ecdsa":
        if bits is not None:
            raise UsageError("--bits is for rsa keys")
        name = (curve or "P-256").upper()
        if name not in CURVES:
            raise UsageError(f"unknown curve '{curve}' (use P-256 or P-384)")
        return ec.generate_private_key(CURVES[name]())
    raise UsageError(f"unknown key type '{kind}' (use rsa or ecdsa)")


def _certificate(key: PrivateKey, subject: str, days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    pub = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    hash_alg = (
        hashes.SHA384()
        if isinstance(key, ec.EllipticCurvePrivateKey) and (key.curve.key_size > 256)
        else hashes.SHA256()
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hash_alg)
    )


def generate_key(
    out_dir: str | os.PathLike[str],
    kind: str = "rsa",
    *,
    bits: int | None = None,
    curve: str | None = None,
    name: str = "ima",
    subject: str = "pyverity IMA signing key",
    days: int = 3650,
    passphrase: bytes | None = None,
) -> GeneratedKey:
    """Generate a key pair and a self-signed certificate into ``out_dir`` (created 0700)."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid key name '{name}'")
    out = Path(out_dir)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create '{out}': {e.strerror}") from e
    paths = [out / f"{name}.key", out / f"{name}.pem", out / f"{name}.der"]
    for p in paths:
        if p.exists():
            raise StorageError(f"'{p}' already exists; not overwriting it")
    key = _new_private_key(kind, bits, curve)
    cert = _certificate(key, subject, days)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    publish_file(paths[0], key_pem, 0o600)
    publish_file(paths[1], cert.public_bytes(serialization.Encoding.PEM))
    publish_file(paths[2], cert.public_bytes(serialization.Encoding.DER))
    keyid = skid_keyid(cert)
    assert keyid is not None  # noqa: S101 - we just added the SKID
    return GeneratedKey(keyid, *paths)
