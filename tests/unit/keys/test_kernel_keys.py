"""Keys and hashes the kernel's IMA accepts (issue 10, item 4): verification takes RSA of 1024,
1536, 2048, 3072 and 4096 bits (warning under 2048) and P-192, P-256, P-384 and P-521; signing
keeps to RSA 2048–4096 and P-256/P-384; every ``hash_algo`` of the kernel is known by name and
size, the ones hashlib computes are used (sm3, rmd160 where OpenSSL has them), and one pyverity
cannot use is reason ``unsupported``, never ``malformed``."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pyverity.errors import Reason, UnsupportedError, UsageError
from pyverity.format.ima import (
    HASH_ALGOS,
    ImaSignature,
    KernelHashAlgo,
    algo_by_name,
    algo_named,
    file_id_hash,
)
from pyverity.fs.xattr import set_attr
from pyverity.keys import Keyring, load_signer
from pyverity.keys.cert import parse_certificate
from pyverity.keys.key import BadSignatureError, UnsupportedKeyError, crypto_hash
from pyverity.keys.keyid import keyid_from_public_key
from tests.unit.keys.keyhelpers import certified_key, write_key_files

VERIFIED = ["rsa-1024", "rsa-1536", "rsa-2048", "rsa-3072", "rsa-4096",
            "ecdsa-p192", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"]  # fmt: skip
REFUSED = ["rsa-2560", "ecdsa-p224"]

#: ``include/uapi/linux/hash_info.h`` and ``hash_digest_size[]`` (crypto/hash_info.c).
KERNEL_HASH_ALGOS = [
    ("md4", 16), ("md5", 16), ("sha1", 20), ("rmd160", 20), ("sha256", 32), ("sha384", 48),
    ("sha512", 64), ("sha224", 28), ("rmd128", 16), ("rmd256", 32), ("rmd320", 40),
    ("wp256", 32), ("wp384", 48), ("wp512", 64), ("tgr128", 16), ("tgr160", 20),
    ("tgr192", 24), ("sm3", 32), ("streebog256", 32), ("streebog512", 64), ("sha3-256", 32),
    ("sha3-384", 48), ("sha3-512", 64),
]  # fmt: skip


def _sign(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: KernelHashAlgo,
          digest: bytes) -> bytes:  # fmt: skip
    """A raw signature over a pre-hashed digest, made with ``cryptography`` directly (pyverity
    refuses to sign with weak keys)."""
    chosen = Prehashed(crypto_hash(alg))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), chosen)
    return key.sign(digest, ec.ECDSA(chosen))


def _ring(kind: str) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, Keyring]:
    key, cert = certified_key(kind)
    parsed = parse_certificate(cert.public_bytes(serialization.Encoding.DER), kind)
    return key, Keyring.from_certificates([parsed])


@pytest.mark.parametrize("kind", VERIFIED)
def test_every_kernel_key_verifies(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        key, ring = _ring(kind)
    weak = kind in ("rsa-1024", "rsa-1536")
    assert ("weak (under 2048 bits)" in caplog.text) is weak
    keyid = keyid_from_public_key(key.public_key())
    sha256 = algo_by_name("sha256")
    digest = hashlib.sha256(b"content").digest()
    sig = ImaSignature.v2(sha256.id, keyid, _sign(key, sha256, digest))
    ring.verify_ima_signature(sig, digest)
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(sig, hashlib.sha256(b"other").digest())
    # v3, over the fs-verity digest's file id
    verity = bytes(range(32))
    v3 = ImaSignature.v3(sha256.id, keyid, _sign(key, sha256, file_id_hash(sha256.id, verity)))
    ring.verify_ima_signature(v3, verity)


@pytest.mark.parametrize("kind", REFUSED)
def test_other_sizes_and_curves_are_unsupported(kind: str) -> None:
    _, cert = certified_key(kind)
    with pytest.raises(UnsupportedKeyError) as e:
        parse_certificate(cert.public_bytes(serialization.Encoding.DER), kind)
    assert e.value.reason is Reason.UNSUPPORTED
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["rsa-1024", "rsa-1536", "ecdsa-p192", "ecdsa-p521"])
def test_signing_keeps_refusing_weak_and_newer_keys(kind: str, tmp_path: Path) -> None:
    pem, der = write_key_files(tmp_path, kind)
    with pytest.raises(UnsupportedKeyError, match=r"RSA-1|curve secp") as e:
        load_signer(str(pem), cert=der)
    assert e.value.reason is Reason.UNSUPPORTED


def test_the_kernel_hash_table_by_name_and_size() -> None:
    assert [(a.name, a.digest_size) for a in HASH_ALGOS] == KERNEL_HASH_ALGOS
    assert [a.id for a in HASH_ALGOS] == list(range(len(KERNEL_HASH_ALGOS)))
    for name, size in KERNEL_HASH_ALGOS:
        alg = algo_named(name.upper())
        assert alg is not None
        assert alg.digest_size == size
    assert algo_named("blake2b") is None


@pytest.mark.parametrize(
    ("name", "openssl", "vector"),
    [
        ("sm3", "sm3", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
        ("rmd160", "ripemd160", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    ],
)
def test_sm3_and_rmd160_are_computed_where_openssl_has_them(
    name: str, openssl: str, vector: str
) -> None:
    alg = algo_named(name)
    assert alg is not None
    if openssl not in hashlib.algorithms_available:
        with pytest.raises(UnsupportedError):
            alg.hash(b"abc")
        pytest.skip(f"this Python's OpenSSL has no {openssl}: reported as unsupported")
    assert alg.hash(b"abc").hex() == vector  # the published test vector of "abc"
    assert algo_by_name(name) is alg


@pytest.mark.parametrize("name", ["md5", "sha1", "rmd160", "sha224", "sha256", "sha384",
                                  "sha512", "sm3", "sha3-256", "sha3-384", "sha3-512"])  # fmt: skip
@pytest.mark.parametrize("kind", ["rsa-2048", "ecdsa-p256"])
def test_v2_signatures_over_every_computable_hash(name: str, kind: str) -> None:
    alg = algo_named(name)
    assert alg is not None
    if alg.hashlib_name is None:
        pytest.skip(f"hashlib here cannot compute {name}")
    key, ring = _ring(kind)
    digest = alg.hash(b"content")
    sig = ImaSignature.v2(alg.id, keyid_from_public_key(key.public_key()), _sign(key, alg, digest))
    ring.verify_ima_signature(sig, digest)
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(sig, alg.hash(b"other"))


def test_a_hash_pyverity_cannot_use_is_unsupported() -> None:
    streebog = algo_named("streebog256")
    assert streebog is not None
    with pytest.raises(UnsupportedError) as e:
        streebog.hash(b"x")
    assert e.value.reason is Reason.UNSUPPORTED
    with pytest.raises(UsageError, match="not supported by pyverity on this system"):
        algo_by_name("streebog256")
    # RSA needs the algorithm's DigestInfo, which OpenSSL lacks: unsupported, not malformed
    key, ring = _ring("rsa-2048")
    keyid = keyid_from_public_key(key.public_key())
    sig = ImaSignature.v2(streebog.id, keyid, bytes(256))
    with pytest.raises(UnsupportedError, match="streebog256") as e:
        ring.verify_ima_signature(sig, bytes(32))
    assert e.value.reason is Reason.UNSUPPORTED
    # ECDSA signs the digest itself: a given streebog digest verifies without computing it
    eckey, ecring = _ring("ecdsa-p256")
    digest = bytes(range(32))
    raw = _sign(eckey, algo_by_name("sha256"), digest)
    ecring.verify_ima_signature(
        ImaSignature.v2(streebog.id, keyid_from_public_key(eckey.public_key()), raw), digest
    )


def _verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "verify", "--xattr-user", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_cli_verify_reasons(tmp_path: Path) -> None:
    """A file signed with sm3 by a P-192 key verifies; a streebog hash is one line, exit 1,
    reason unsupported."""
    sm3 = algo_named("sm3")
    assert sm3 is not None
    if sm3.hashlib_name is None:
        pytest.skip("hashlib here has no sm3")
    key, cert = certified_key("ecdsa-p192")
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "p192.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    signed = tmp_path / "signed"
    signed.write_bytes(b"signed with sm3\n")
    digest = sm3.hash(signed.read_bytes())
    sig = ImaSignature.v2(sm3.id, keyid_from_public_key(key.public_key()), _sign(key, sm3, digest))
    try:
        set_attr(signed, "user.ima", sig.to_bytes())
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no user xattrs here: {e}")
    res = _verify_cli("--keyring", str(ring), str(signed))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok (classic, sm3:" in res.stdout
    odd = tmp_path / "streebog"
    odd.write_bytes(b"x")
    set_attr(odd, "user.ima", b"\x04\x12" + bytes(32))
    res = _verify_cli(str(odd))
    assert res.returncode == 1
    expected = f"{odd}: FAILED: unsupported: hash algorithm streebog256 is not supported\n"
    assert res.stdout == expected
    assert "Traceback" not in res.stderr


def test_keyid_from_key_and_keyid_exclude_each_other(tmp_path: Path) -> None:
    pem, der = write_key_files(tmp_path, "rsa-2048", skid=bytes(20))
    f = tmp_path / "f"
    f.write_bytes(b"x")
    res = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "sign", "--imasig", "--xattr-user", "--key",
         str(pem), "--cert", str(der), "--keyid", "1234", "--keyid-from-key", str(f)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "not allowed with argument" in res.stderr


def test_with_keyid_keeps_the_key_and_certificate(tmp_path: Path) -> None:
    from pyverity.keys.signer import with_keyid

    pem, der = write_key_files(tmp_path, "rsa-2048", skid=bytes(range(20)))
    signer = load_signer(str(pem), cert=der)
    assert signer.keyid == 0x10111213
    rekeyed = with_keyid(signer, 0xDEADBEEF)
    assert rekeyed.keyid == rekeyed.public_key.keyid == 0xDEADBEEF
    assert rekeyed.certificate is signer.certificate
    assert with_keyid(with_keyid(rekeyed, 1), signer.keyid) is signer
    digest = hashlib.sha256(b"x").digest()
    assert rekeyed.sign_digest(digest, 4) == signer.sign_digest(digest, 4)  # RSA: deterministic
