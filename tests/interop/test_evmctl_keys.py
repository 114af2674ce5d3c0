"""Keys, hashes and keyids against the real ``evmctl`` (ima-evm-utils 1.4; issue 10, item 4).

- v2 signatures made by ``evmctl ima_sign`` with RSA-1024/1536 and P-192/P-256/P-521 keys, and
  over sm3 and rmd160 hashes, are verified by ``pyverity verify``; v2 signatures made with those
  keys by ``cryptography`` (pyverity refuses to *sign* with them) are verified by
  ``evmctl ima_verify``.
- keyids, with a certificate whose SKID is *not* the SHA-1 of its key: ``pyverity sign
  --imasig`` writes exactly what ``evmctl ima_sign --keyid-from-cert CERT`` writes, and with
  ``--keyid-from-key`` exactly what plain ``evmctl ima_sign`` writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format.ima import ImaSignature, algo_by_name, parse_ima_value
from pyverity.keys.keyid import keyid_from_public_key
from tests.unit.keys.keyhelpers import certified_key, write_key_files
from tests.unit.keys.test_kernel_keys import _sign

pytestmark = pytest.mark.interop

EVMCTL = shutil.which("evmctl")
if EVMCTL is None:
    pytest.skip("evmctl (ima-evm-utils) is not installed", allow_module_level=True)

KINDS = ["rsa-1024", "rsa-1536", "ecdsa-p192", "ecdsa-p256", "ecdsa-p521"]


def _evmctl(*args: str) -> subprocess.CompletedProcess[str]:
    assert EVMCTL is not None
    return subprocess.run([EVMCTL, *args], capture_output=True, text=True, check=False, timeout=60)


def _file(tmp_path: Path, name: str = "data") -> Path:
    f = tmp_path / name
    f.write_bytes(os.urandom(5000))
    return f


def _ring(tmp_path: Path, der: Path) -> Path:
    ring = tmp_path / "ring"
    ring.mkdir(exist_ok=True)
    shutil.copy(der, ring / der.name)
    return ring


#: RSA with sm3 is left out: neither the kernel's pkcs1pad nor OpenSSL 3.0 (evmctl's) has an
#: sm3 DigestInfo ("digest not allowed"); sm3 signatures are ECDSA (or SM2) ones.
CASES = [(k, a) for k in KINDS for a in ("sha256", "sm3", "rmd160")
         if not (k.startswith("rsa") and a == "sm3")]  # fmt: skip


@pytest.mark.parametrize(("kind", "alg"), CASES)
def test_evmctl_signatures_verify_in_pyverity(
    tmp_path: Path, kind: str, alg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    openssl = {"sha256": "sha256", "sm3": "sm3", "rmd160": "ripemd160"}[alg]
    if openssl not in hashlib.algorithms_available:
        pytest.fail(f"this Python's OpenSSL has no {openssl}, which evmctl's has")
    pem, der = write_key_files(tmp_path / "keys", kind)
    f = _file(tmp_path)
    made = _evmctl("ima_sign", "--xattr-user", "-a", alg, "--key", str(pem), str(f))
    assert made.returncode == 0, made.stdout + made.stderr
    value = parse_ima_value(os.getxattr(f, "user.ima"))
    assert isinstance(value, ImaSignature)
    assert value.algorithm.name == alg
    rc = main(["verify", "--xattr-user", "--keyring", str(_ring(tmp_path, der)), str(f)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"ok (classic, {alg}:" in out
    f.write_bytes(f.read_bytes() + b"!")
    assert main(["verify", "--xattr-user", "--keyring", str(tmp_path / "ring"), str(f)]) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_signatures_with_kernel_keys_verify_in_evmctl(tmp_path: Path, kind: str) -> None:
    key, _ = certified_key(kind)
    _, der = write_key_files(tmp_path / "keys", kind)
    sha256 = algo_by_name("sha256")
    f = _file(tmp_path)
    digest = hashlib.sha256(f.read_bytes()).digest()
    keyid = keyid_from_public_key(key.public_key())
    sig = ImaSignature.v2(sha256.id, keyid, _sign(key, sha256, digest))
    os.setxattr(f, "user.ima", sig.to_bytes())
    ok = _evmctl("ima_verify", "--xattr-user", "--key", str(der), str(f))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verification is OK" in ok.stdout + ok.stderr
    f.write_bytes(f.read_bytes() + b"!")
    assert _evmctl("ima_verify", "--xattr-user", "--key", str(der), str(f)).returncode != 0


def test_imasig_keyids_match_evmctl_both_ways(tmp_path: Path) -> None:
    skid = bytes(range(1, 21))  # not the SHA-1 of the key
    pem, der = write_key_files(tmp_path / "keys", "rsa-2048", skid=skid)
    key, _ = certified_key("rsa-2048")
    from_key = keyid_from_public_key(key.public_key())
    from_skid = int.from_bytes(skid[-4:], "big")
    assert from_key != from_skid
    f = _file(tmp_path)

    def evmctl_value(*extra: str) -> bytes:
        made = _evmctl("ima_sign", "--xattr-user", "-a", "sha256", *extra, "--key", str(pem),
                       str(f))  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        value = os.getxattr(f, "user.ima")
        os.removexattr(f, "user.ima")
        return value

    def pyverity_value(*extra: str) -> bytes:
        args = ["sign", "--imasig", "--xattr-user", "--key", str(pem), "--cert", str(der)]
        assert main([*args, *extra, str(f)]) == 0
        value = os.getxattr(f, "user.ima")
        os.removexattr(f, "user.ima")
        return value

    by_cert = evmctl_value("--keyid-from-cert", str(der))
    by_key = evmctl_value()
    for value, keyid in ((by_cert, from_skid), (by_key, from_key)):
        sig = parse_ima_value(value)
        assert isinstance(sig, ImaSignature)
        assert sig.keyid == keyid
    # pyverity's default is the SKID, the key the kernel finds; RSA PKCS#1 v1.5 is
    # deterministic, so the values are byte-equal.
    assert pyverity_value() == by_cert
    assert pyverity_value("--keyid-from-key") == by_key
