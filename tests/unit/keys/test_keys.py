"""Keys, certificates, keyids, keyrings, passphrases (spec/ima.md §2.3–2.5)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyverity.errors import ConfigurationError, SignatureError, StorageError, UsageError
from pyverity.format.ima import ImaSignature, file_id_hash, parse_ima_value
from pyverity.keys import (
    BadSignatureError,
    Keyring,
    UnknownKeyError,
    keyid_from_public_key,
    load_certificate,
    load_private_key,
    load_signer,
    parse_keyid,
    sign_v2,
    sign_v3,
)
from pyverity.keys.generate import generate_key
from tests.unit.keys.keyhelpers import VECTORS, ec_certificate, keyring_dir, make_key, pkcs8_pem

HELLO_VERITY = bytes.fromhex("37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92")


def test_vector_certificate_keyid() -> None:
    c = load_certificate(VECTORS / "cert.der")
    assert c.keyid == 0x872439D8
    assert c.keyid_from_skid
    assert c.algorithm == "rsa-2048"
    assert keyid_from_public_key(c.public_key.key) == c.keyid  # SKID = SHA-1 of key bits


def test_vector_v3_signature_verifies() -> None:
    ring = Keyring.from_certificates([load_certificate(VECTORS / "cert.der")])
    value = (VECTORS / "hello.sig").read_text().strip()
    sig = parse_ima_value(bytes.fromhex(value.removeprefix("0x")))
    assert isinstance(sig, ImaSignature)
    ring.verify_ima_signature(sig, HELLO_VERITY)
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(sig, hashlib.sha256(b"other").digest())


@pytest.mark.parametrize(
    ("kind", "size"), [("rsa", "2048"), ("ecdsa", "P-256"), ("ecdsa", "P-384")]
)
def test_sign_and_verify_v2_v3(kind: str, size: str) -> None:
    k = make_key(kind, size)
    signer = load_signer(str(k.key_path), cert=k.cert_path)
    assert signer.keyid == k.keyid
    ring = Keyring.from_directory(keyring_dir(k))
    file_hash = hashlib.sha256(b"data").digest()
    v2 = sign_v2(signer, 4, file_hash)
    ring.verify_ima_signature(parse_ima_value(v2.to_bytes()), file_hash)  # type: ignore[arg-type]
    v3 = sign_v3(signer, 1, HELLO_VERITY)
    assert v3.to_bytes()[:3] == b"\x06\x03\x04"
    ring.verify_ima_signature(v3, HELLO_VERITY)
    # v3 signs H(file id): the same bytes verify as a v2 signature over that hash
    signer.public_key.verify_signature(v3.signature, file_id_hash(4, HELLO_VERITY), 4)
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(v3, file_hash)
    v3_512 = sign_v3(signer, 2, hashlib.sha512(b"x").digest())
    assert v3_512.hash_algo == 6
    ring.verify_ima_signature(v3_512, hashlib.sha512(b"x").digest())


def test_remembering_keyring_checks_again_what_did_not_verify() -> None:
    k = make_key("ecdsa", "P-256")
    signer = load_signer(str(k.key_path), cert=k.cert_path)
    ring = Keyring.from_directory(keyring_dir(k)).remembering(2)
    sig = sign_v3(signer, 1, HELLO_VERITY)
    for _ in range(2):  # the second time from memory
        ring.verify_ima_signature(sig, HELLO_VERITY)
    other = hashlib.sha256(b"other").digest()
    for _ in range(2):  # a failure is never remembered
        with pytest.raises(BadSignatureError):
            ring.verify_ima_signature(sig, other)
    forged = ImaSignature.v3(4, k.keyid, bytes(len(sig.signature)))
    with pytest.raises(BadSignatureError):  # same keyid and digest, other signature bytes
        ring.verify_ima_signature(forged, HELLO_VERITY)
    for n in range(3):  # bounded: the oldest entries go
        ring.verify_ima_signature(sign_v3(signer, 1, bytes([n]) * 32), bytes([n]) * 32)
    assert ring._verified is not None
    assert len(ring._verified) == 2
    assert ring.certificates.keys() == {k.keyid}


def test_rsa_signature_is_deterministic_and_the_v3_patch_of_v2() -> None:
    k = make_key()
    signer = load_signer(str(k.key_path), cert=k.cert_path)
    v3 = sign_v3(signer, 1, HELLO_VERITY)
    v2 = sign_v2(signer, 4, file_id_hash(4, HELLO_VERITY))
    assert v3.to_bytes() == b"\x06\x03" + v2.to_bytes()[2:]


def test_unknown_key_and_bad_signature_are_distinct() -> None:
    a, b = make_key("rsa", "2048"), make_key("ecdsa", "P-256")
    ring = Keyring.from_directory(keyring_dir(a))
    sig = sign_v3(load_signer(str(b.key_path), cert=b.cert_path), 1, HELLO_VERITY)
    with pytest.raises(UnknownKeyError) as unknown:
        ring.verify_ima_signature(sig, HELLO_VERITY)
    assert unknown.value.reason == "unknown key"
    assert isinstance(unknown.value, SignatureError)
    # same keyid, wrong key bytes: bad signature
    forged = ImaSignature.v3(4, a.keyid, sig.signature)
    with pytest.raises(BadSignatureError) as bad:
        ring.verify_ima_signature(forged, HELLO_VERITY)
    assert bad.value.reason == "bad signature"


def test_encrypted_key_passphrases(tmp_path: Path) -> None:
    k = generate_key(tmp_path / "enc", "ecdsa", passphrase=b"s3cret")
    assert b"ENCRYPTED" in k.key_path.read_bytes()
    assert (k.key_path.stat().st_mode & 0o777) == 0o600
    assert isinstance(load_private_key(k.key_path, b"s3cret"), ec.EllipticCurvePrivateKey)
    assert isinstance(load_private_key(k.key_path, lambda: b"s3cret"), ec.EllipticCurvePrivateKey)
    with pytest.raises(SignatureError, match="wrong passphrase"):
        load_private_key(k.key_path, b"nope")
    with pytest.raises(SignatureError, match="is encrypted") as e:
        load_private_key(k.key_path, None)
    assert e.value.remedy is not None
    plain = make_key("ecdsa", "P-256")
    with pytest.raises(SignatureError, match="not encrypted"):
        load_private_key(plain.key_path, b"pw")


def test_der_key_and_garbage(tmp_path: Path) -> None:
    key = load_private_key(make_key().key_path)
    der = tmp_path / "k.der"
    der.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    assert load_private_key(der).public_key().public_numbers() == key.public_key().public_numbers()
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a key")
    with pytest.raises(SignatureError, match="not a private key"):
        load_private_key(junk)
    with pytest.raises(SignatureError, match=r"not an X\.509 certificate"):
        load_certificate(junk)


def test_small_rsa_key_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    p = tmp_path / "small.pem"
    p.write_bytes(pkcs8_pem(small))
    with pytest.raises(SignatureError, match="RSA-1024"):
        load_private_key(p)
    with pytest.raises(UsageError):
        generate_key(tmp_path / "x", "rsa", bits=1024)
    with pytest.raises(UsageError):
        generate_key(tmp_path / "x", "ecdsa", curve="P-521")


def _cert_without_skid(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = ec_certificate("no skid")
    kp, cp = tmp_path / "noskid.key", tmp_path / "noskid.pem"
    kp.write_bytes(pkcs8_pem(key))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


def test_cert_without_skid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kp, cp = _cert_without_skid(tmp_path)
    with caplog.at_level(logging.WARNING):
        c = load_certificate(cp)
    assert not c.keyid_from_skid
    assert "no Subject Key Identifier" in caplog.text
    assert c.keyid == keyid_from_public_key(c.public_key.key)
    with pytest.raises(SignatureError, match="no Subject Key Identifier") as e:
        load_signer(str(kp), cert=cp)
    assert "--keyid" in (e.value.remedy or "")
    assert load_signer(str(kp), cert=cp, keyid=0x1234).keyid == 0x1234


def test_key_certificate_mismatch_and_keyid_rules() -> None:
    a, b = make_key("rsa", "2048"), make_key("ecdsa", "P-256")
    with pytest.raises(SignatureError, match="does not match certificate"):
        load_signer(str(a.key_path), cert=b.cert_path)
    with pytest.raises(SignatureError, match="no certificate given"):
        load_signer(str(a.key_path))
    assert load_signer(str(a.key_path), allow_computed_keyid=True).keyid == a.keyid
    assert load_signer("file:" + str(a.key_path), keyid=7).keyid == 7
    with pytest.raises(UsageError, match="'https:' is not supported"):
        load_signer("https://keys.example/x")


def test_key_file_with_embedded_certificate(tmp_path: Path) -> None:
    a = make_key()
    combined = tmp_path / "both.pem"
    combined.write_bytes(a.key_path.read_bytes() + a.cert_path.read_bytes())
    assert load_signer(str(combined)).keyid == a.keyid


def test_parse_keyid() -> None:
    assert parse_keyid("0x459481dd") == 0x459481DD
    assert parse_keyid("1") == 1
    for bad in ("", "0", "123456789", "xyz"):
        with pytest.raises(UsageError):
            parse_keyid(bad)


def test_keyring_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="No such file or directory"):
        Keyring.from_directory(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"'.*file' is a regular file, not a directory"):
        Keyring.from_directory(tmp_path / "file")
    (tmp_path / "file").unlink()
    (tmp_path / "dir.pem").mkdir()  # not a certificate, and must not stop the others
    os.mkfifo(tmp_path / "fifo.pem")  # nor hang the load
    with pytest.raises(ConfigurationError, match="no usable certificate"):
        Keyring.from_directory(tmp_path)
    a = make_key()
    (tmp_path / "a.der").write_bytes(a.der_path.read_bytes())
    (tmp_path / "a.pem").write_bytes(a.cert_path.read_bytes())  # same key twice: fine
    (tmp_path / "junk.pem").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    with caplog.at_level(logging.WARNING):
        ring = Keyring.from_directory(tmp_path)
    assert "skipping" in caplog.text
    assert len(ring) == 1
    assert ring.get(a.keyid).keyid == a.keyid
    with pytest.raises(UnknownKeyError):
        ring.get(a.keyid ^ 1)


def test_keyring_refuses_two_keys_with_one_keyid(tmp_path: Path) -> None:
    kp, cp = _cert_without_skid(tmp_path)
    c1 = load_certificate(cp)
    other = load_certificate(make_key("ecdsa", "P-256").cert_path)
    from pyverity.keys.cert import Certificate
    from pyverity.keys.key import PublicKey

    clash = Certificate(other.cert, PublicKey(c1.keyid, other.public_key.key, "x"), True)
    with pytest.raises(ConfigurationError, match="two different keys"):
        Keyring.from_certificates([c1, clash])
    del kp


def test_generate_refuses_overwrite(tmp_path: Path) -> None:
    generate_key(tmp_path, "ecdsa")
    with pytest.raises(StorageError, match="already exists"):
        generate_key(tmp_path, "ecdsa")
    cert = x509.load_pem_x509_certificate((tmp_path / "ima.pem").read_bytes())
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert not ku.key_cert_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert (tmp_path / "ima.der").read_bytes() == cert.public_bytes(serialization.Encoding.DER)
