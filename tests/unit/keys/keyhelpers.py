"""Keys for tests: generated once per test session into a temp directory (shared helpers)."""

from __future__ import annotations

import atexit
import datetime
import functools
import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pyverity.keys.generate import GeneratedKey, generate_key

_ROOT = Path(tempfile.mkdtemp(prefix="pyverity-test-keys-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "kernel-6.1-ima"


def make_key(kind: str = "rsa", size: str = "2048") -> GeneratedKey:
    """A key pair + certificate, made once per process (RSA 2048 by default; ecdsa P-256)."""
    return _make_key(kind, size)


@functools.cache
def _make_key(kind: str, size: str) -> GeneratedKey:
    out = _ROOT / f"{kind}-{size}-{os.getpid()}"
    if kind == "rsa":
        return generate_key(out, "rsa", bits=int(size))
    return generate_key(out, "ecdsa", curve=size)


def keyring_dir(*keys: GeneratedKey) -> Path:
    """A fresh directory holding the DER certificates of ``keys``."""
    d = Path(tempfile.mkdtemp(prefix="keyring-", dir=_ROOT))
    for k in keys:
        (d / k.der_path.name.replace("ima", f"{k.keyid:08x}")).write_bytes(k.der_path.read_bytes())
    return d


def _self_signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, subject: str
) -> x509.CertificateBuilder:
    """A builder of a one-day self-signed certificate for ``key`` named ``subject``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def ec_certificate(
    subject: str, *, skid: bytes | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a self-signed certificate for it, whose Subject Key Identifier is
    ``skid`` (none without it): certificates ``generate_key`` would never make."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _self_signed(key, subject)
    if skid is not None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(skid), critical=False)
    return key, builder.sign(key, hashes.SHA256())


#: ``certified_key`` kinds: the sizes and curves the kernel verifies, and two it refuses.
KEY_KINDS: dict[str, int | ec.EllipticCurve] = {
    "rsa-1024": 1024,
    "rsa-1536": 1536,
    "rsa-2048": 2048,
    "rsa-3072": 3072,
    "rsa-4096": 4096,
    "rsa-2560": 2560,
    "ecdsa-p192": ec.SECP192R1(),
    "ecdsa-p224": ec.SECP224R1(),
    "ecdsa-p256": ec.SECP256R1(),
    "ecdsa-p384": ec.SECP384R1(),
    "ecdsa-p521": ec.SECP521R1(),
}


@functools.cache
def _private_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    param = KEY_KINDS[kind]
    if isinstance(param, int):
        return rsa.generate_private_key(public_exponent=65537, key_size=param)
    return ec.generate_private_key(param)


def certified_key(
    kind: str, *, skid: bytes | None = None, subject: str = "pyverity test"
) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key of ``kind`` (see :data:`KEY_KINDS`; made once per process) and a fresh
    self-signed certificate for it, whose SKID is ``skid`` or, by default, OpenSSL's
    ``subjectKeyIdentifier=hash`` (SHA-1 of the public key bits)."""
    key = _private_key(kind)
    ident = (
        x509.SubjectKeyIdentifier(skid)
        if skid is not None
        else x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    cert = _self_signed(key, subject).add_extension(ident, critical=False)
    return key, cert.sign(key, hashes.SHA256())


def pkcs8_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM file holds it."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key_files(directory: Path, kind: str, *, skid: bytes | None = None) -> tuple[Path, Path]:
    """``certified_key`` written as ``<kind>.pem`` (PKCS#8, unencrypted) and ``<kind>.der``."""
    key, cert = certified_key(kind, skid=skid)
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / f"{kind}.pem"
    der = directory / f"{kind}.der"
    pem.write_bytes(pkcs8_pem(key))
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return pem, der
