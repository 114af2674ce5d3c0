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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
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


def ec_certificate(
    subject: str, *, skid: bytes | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a self-signed certificate for it, whose Subject Key Identifier is
    ``skid`` (none without it): certificates ``generate_key`` would never make."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if skid is not None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(skid), critical=False)
    return key, builder.sign(key, hashes.SHA256())
