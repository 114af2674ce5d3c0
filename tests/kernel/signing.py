"""Test-side key and v3 signature maker (spec/ima.md §2.3, §2.5), built on ``cryptography``.

Used for the kernel suite while pyverity's own ``key``/``sign`` are not there; an independent
implementation of the same bytes, so the kernel judges both.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.x509.oid import NameOID

__all__ = ["TestKey", "make_key", "v3_signature"]

#: The kernel's ``enum hash_algo`` numbers IMA uses (spec/ima.md §1.3).
IMA_HASH_ALGO = {"sha256": 4, "sha512": 6}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha512": hashes.SHA512}


@dataclass(frozen=True)
class TestKey:
    key: rsa.RSAPrivateKey
    cert_der: bytes
    keyid: bytes  # last 4 bytes of the certificate's SKID

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_key(common_name: str) -> TestKey:
    """A fresh RSA-2048 key with a self-signed certificate carrying a SKID."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    skid = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(skid, critical=False)
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
        .sign(key, hashes.SHA256())
    )
    return TestKey(key, cert.public_bytes(serialization.Encoding.DER), skid.digest[-4:])


def v3_signature(key: TestKey, algorithm: str, verity_digest: bytes) -> bytes:
    """The ``security.ima`` value 0x06 v3 over an fs-verity digest."""
    algo = IMA_HASH_ALGO[algorithm]
    h = hashes.Hash(_HASHES[algorithm]())
    h.update(bytes([0x06, algo]) + verity_digest)
    signed = h.finalize()
    sig = key.key.sign(signed, padding.PKCS1v15(), utils.Prehashed(_HASHES[algorithm]()))
    return bytes([0x06, 0x03, algo]) + key.keyid + struct.pack(">H", len(sig)) + sig
