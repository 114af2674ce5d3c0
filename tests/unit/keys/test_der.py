"""The DER encoders: DigestInfo and ECDSA-Sig-Value agree with ``cryptography``, and the
built-in PKCS#7 message built around ``Signer.sign_digest`` equals OpenSSL's for RSA."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.serialization import pkcs7

from pyverity.format.formatted_digest import FormattedDigest
from pyverity.keys import Keyring, der, load_certificate, load_private_key, load_signer
from pyverity.keys.builtin_sig import builtin_signature
from pyverity.keys.pkcs7 import verify_builtin_signature
from tests.unit.keys.keyhelpers import make_key


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 1 << 255])
def test_integer_is_minimal(value: int) -> None:
    enc = der.tlv(der.SEQUENCE, der.integer(value) + der.integer(1))
    assert utils.decode_dss_signature(enc) == (value, 1)  # cryptography parses strict DER
    assert der.integer(127) == b"\x02\x01\x7f"
    assert der.integer(128) == b"\x02\x02\x00\x80"
    with pytest.raises(ValueError, match="negative"):
        der.integer(-1)


@pytest.mark.parametrize("length", [0, 1, 127, 128, 255, 256, 70000])
def test_lengths(length: int) -> None:
    out = der.tlv(der.OCTET_STRING, bytes(length))
    assert out.endswith(bytes(length))
    assert len(out) - length in (2, 3, 4, 5)
    if length >= 0x80:
        assert out[1] & 0x80


def test_ecdsa_signature_from_raw_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"x").digest()
    r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    key.public_key().verify(
        der.ecdsa_signature(raw), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )
    with pytest.raises(ValueError, match="odd length"):
        der.ecdsa_signature(raw[:-1])


@pytest.mark.parametrize("name", ["sha1", "sha256", "sha384", "sha512"])
def test_digest_info_is_what_pkcs1_signs(name: str) -> None:
    k = make_key("rsa", "2048")
    key = load_private_key(k.key_path)
    digest = hashlib.new(name, b"data").digest()
    sig = key.sign(b"data", padding.PKCS1v15(), getattr(hashes, name.upper())())
    numbers = key.public_key().public_numbers()
    m = pow(int.from_bytes(sig, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert m.endswith(der.digest_info(name, digest))


@pytest.mark.parametrize("alg", [1, 2])
def test_builtin_signature_equals_openssl_for_rsa(alg: int) -> None:
    k = make_key("rsa", "2048")
    key = load_private_key(k.key_path)
    cert = load_certificate(k.cert_path).cert
    formatted = FormattedDigest(alg, bytes(range(32 if alg == 1 else 64)))
    options = [
        pkcs7.PKCS7Options.DetachedSignature,
        pkcs7.PKCS7Options.NoCerts,
        pkcs7.PKCS7Options.NoAttributes,
        pkcs7.PKCS7Options.Binary,
    ]
    h = hashes.SHA256() if alg == 1 else hashes.SHA512()
    openssl = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(formatted.to_bytes())
        .add_signer(cert, key, h)
        .sign(serialization.Encoding.DER, options)
    )
    assert builtin_signature(formatted, key, cert) == openssl
    signer = load_signer(k.key_path, cert=k.cert_path)
    assert builtin_signature(formatted, signer, cert) == openssl


@pytest.mark.parametrize("alg", [1, 2])
def test_builtin_signature_ecdsa_verifies(alg: int) -> None:
    k = make_key("ecdsa", "P-256")
    signer = load_signer(k.key_path, cert=k.cert_path)
    c = load_certificate(k.cert_path)
    formatted = FormattedDigest(alg, bytes(32 if alg == 1 else 64))
    sig = builtin_signature(formatted, signer, c.cert)
    assert verify_builtin_signature(sig, formatted, Keyring.from_certificates([c])) == c


def test_builtin_signature_refuses_another_keys_certificate() -> None:
    from pyverity.errors import SignatureError

    signer = load_signer(make_key("rsa", "2048").key_path, allow_computed_keyid=True)
    other = load_certificate(make_key("ecdsa", "P-256").cert_path).cert
    with pytest.raises(SignatureError, match="not the key's"):
        builtin_signature(FormattedDigest(1, bytes(32)), signer, other)
