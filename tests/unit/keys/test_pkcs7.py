"""Built-in (PKCS#7) signatures: the strict parser and verification against a keyring."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from pyverity.format.formatted_digest import FormattedDigest
from pyverity.keys import BadSignatureError, Keyring, UnknownKeyError, load_certificate
from pyverity.keys.builtin_sig import builtin_signature
from pyverity.keys.pkcs7 import (
    MAX_BUILTIN_SIG_SIZE,
    MalformedSignatureError,
    parse_builtin_signature,
    verify_builtin_signature,
)
from pyverity.keys.signer import load_private_key
from tests.unit.keys.keyhelpers import keyring_dir, make_key

SHA256_FD = FormattedDigest(1, hashlib.sha256(b"file").digest())
SHA512_FD = FormattedDigest(2, hashlib.sha512(b"file").digest())


def _sign(kind: str, size: str, formatted: FormattedDigest = SHA256_FD) -> tuple[bytes, Keyring]:
    k = make_key(kind, size)
    key = load_private_key(k.key_path)
    cert = x509.load_pem_x509_certificate(k.cert_path.read_bytes())
    sig = builtin_signature(formatted, key, cert)  # type: ignore[arg-type]
    return sig, Keyring.from_directory(keyring_dir(k))


@pytest.mark.parametrize(("kind", "size"), [("rsa", "2048"), ("ecdsa", "P-256")])
@pytest.mark.parametrize("formatted", [SHA256_FD, SHA512_FD])
def test_round_trip(kind: str, size: str, formatted: FormattedDigest) -> None:
    sig, keyring = _sign(kind, size, formatted)
    parsed = parse_builtin_signature(sig)
    assert parsed.key_type == ("rsa" if kind == "rsa" else "ecdsa")
    cert = verify_builtin_signature(sig, formatted, keyring)
    assert cert.cert.serial_number == parsed.serial
    other = FormattedDigest(formatted.digest_algorithm, bytes(len(formatted.digest)))
    with pytest.raises(BadSignatureError):
        verify_builtin_signature(sig, other, keyring)


def test_unknown_certificate_and_flipped_signature() -> None:
    sig, _ = _sign("rsa", "2048")
    stranger = Keyring.from_directory(keyring_dir(make_key("rsa", "3072")))
    with pytest.raises(UnknownKeyError):
        verify_builtin_signature(sig, SHA256_FD, stranger)
    _, keyring = _sign("rsa", "2048")
    bad = bytearray(sig)
    bad[-5] ^= 1  # inside the RSA signature value at the end
    with pytest.raises(BadSignatureError):
        verify_builtin_signature(bytes(bad), SHA256_FD, keyring)


def test_wrong_digest_algorithm_for_the_file() -> None:
    sig, keyring = _sign("rsa", "2048", SHA512_FD)
    with pytest.raises(MalformedSignatureError, match="not the file's"):
        verify_builtin_signature(sig, SHA256_FD, keyring)


def _openssl_like(options: list[pkcs7.PKCS7Options], alg: hashes.HashAlgorithm) -> bytes:
    k = make_key("rsa", "2048")
    key = load_private_key(k.key_path)
    cert = x509.load_pem_x509_certificate(k.cert_path.read_bytes())
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(SHA256_FD.to_bytes())
        .add_signer(cert, key, alg)  # type: ignore[arg-type]
        .sign(serialization.Encoding.DER, options)
    )


def test_authenticated_attributes_refused() -> None:
    sig = _openssl_like(
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoCerts], hashes.SHA256()
    )
    with pytest.raises(MalformedSignatureError, match="authenticated attributes"):
        parse_builtin_signature(sig)


def test_attached_content_refused_and_certificates_ignored() -> None:
    attached = _openssl_like(
        [pkcs7.PKCS7Options.NoAttributes, pkcs7.PKCS7Options.Binary], hashes.SHA256()
    )
    with pytest.raises(MalformedSignatureError, match="not detached"):
        parse_builtin_signature(attached)
    with_certs = _openssl_like(
        [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.NoAttributes,
            pkcs7.PKCS7Options.Binary,
        ],
        hashes.SHA256(),
    )
    # The embedded certificate is skipped: an empty keyring of other keys still says ENOKEY.
    stranger = Keyring.from_directory(keyring_dir(make_key("rsa", "3072")))
    with pytest.raises(UnknownKeyError):
        verify_builtin_signature(with_certs, SHA256_FD, stranger)


def test_unsupported_digest_algorithm() -> None:
    sig = _openssl_like(
        [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.NoCerts,
            pkcs7.PKCS7Options.NoAttributes,
        ],
        hashes.SHA384(),
    )
    with pytest.raises(MalformedSignatureError, match="neither sha256 nor sha512"):
        parse_builtin_signature(sig)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s + b"\x00",  # trailing bytes
        lambda s: s[:-1],  # truncated
        lambda s: b"",
        lambda s: b"\x30\x80" + s[2:],  # indefinite length (BER, not DER)
        lambda s: b"\x31" + s[1:],  # SET instead of SEQUENCE
        lambda s: s.replace(
            bytes.fromhex("2a864886f70d010702"), bytes.fromhex("2a864886f70d010701")
        ),
        lambda s: os.urandom(400),
        lambda s: (
            b"\x30"
            + bytes([0x82])
            + (MAX_BUILTIN_SIG_SIZE).to_bytes(2, "big")
            + bytes(MAX_BUILTIN_SIG_SIZE)
        ),  # too large
    ],
)
def test_malformed(mangle: object) -> None:
    sig, keyring = _sign("rsa", "2048")
    bad = mangle(sig)  # type: ignore[operator]
    with pytest.raises(MalformedSignatureError):
        verify_builtin_signature(bad, SHA256_FD, keyring)


def test_non_minimal_length_refused() -> None:
    sig, _ = _sign("rsa", "2048")
    assert sig[1] == 0x82  # outer SEQUENCE, two length bytes
    longer = sig[:1] + b"\x83\x00" + sig[2:]  # the same length in three bytes
    with pytest.raises(MalformedSignatureError, match="minimal"):
        parse_builtin_signature(longer)


def test_keyring_certificate_matched_by_issuer_and_serial() -> None:
    k = make_key("rsa", "2048")
    sig, keyring = _sign("rsa", "2048")
    parsed = parse_builtin_signature(sig)
    cert = load_certificate(k.cert_path)
    assert parsed.serial == cert.cert.serial_number
    assert parsed.issuer == cert.cert.issuer.public_bytes()
    assert len(keyring) == 1
