"""Interop with the real ``evmctl`` (ima-evm-utils 1.4): v2 signatures both ways, ima_hash
values, and v3 = evmctl's v2 signature over H(ima_file_id) with bytes 0..1 set to 06 03."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format import TreeParams
from pyverity.format.hashalg import by_name
from pyverity.format.ima import ImaHash, ImaSignature, file_id_hash, parse_ima_value
from pyverity.hashing import compute_digest
from pyverity.keys.generate import GeneratedKey
from tests.unit.keys.keyhelpers import keyring_dir, make_key

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("evmctl") is None, reason="evmctl (ima-evm-utils) missing"),
]

NAMESPACES = [
    pytest.param(
        "security",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="security.ima needs root"),
    ),
    "user",
]


def _evmctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["evmctl", *args], input=stdin, capture_output=True, text=True, check=False
    )


def _user(ns: str) -> list[str]:
    return ["--xattr-user"] if ns == "user" else []


def _file(tmp_path: Path, size: int = 70000) -> Path:
    f = tmp_path / "data"
    f.write_bytes(os.urandom(size))
    return f


def _ima(f: Path, ns: str) -> bytes:
    return os.getxattr(f, f"{ns}.ima")


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("alg", ["sha256", "sha512", "sha1"])
def test_rsa_v2_bytes_equal_and_cross_verify(tmp_path: Path, ns: str, alg: str) -> None:
    k = make_key("rsa", "2048")
    f = _file(tmp_path)
    ev = _evmctl("ima_sign", *_user(ns), "-a", alg, "--key", str(k.key_path), str(f))
    assert ev.returncode == 0, ev.stderr
    theirs = _ima(f, ns)
    os.removexattr(f, f"{ns}.ima")
    args = ["sign", "--imasig", "--hash-alg", alg, "--xattr-ns", ns]
    assert main([*args, "--key", str(k.key_path), "--cert", str(k.cert_path), str(f)]) == 0
    ours = _ima(f, ns)
    assert ours == theirs  # RSA PKCS#1 v1.5 is deterministic
    ok = _evmctl("ima_verify", *_user(ns), "--key", str(k.der_path), str(f))
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "verification is OK" in ok.stdout + ok.stderr
    f.write_bytes(f.read_bytes()[:-1] + b"!")
    bad = _evmctl("ima_verify", *_user(ns), "--key", str(k.der_path), str(f))
    assert bad.returncode != 0


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_ecdsa_both_ways(
    tmp_path: Path, ns: str, curve: str, capsys: pytest.CaptureFixture[str]
) -> None:
    k = make_key("ecdsa", curve)
    f = _file(tmp_path, 5000)
    ev = _evmctl("ima_sign", *_user(ns), "-a", "sha256", "--key", str(k.key_path), str(f))
    assert ev.returncode == 0, ev.stderr
    sig = parse_ima_value(_ima(f, ns))
    assert isinstance(sig, ImaSignature)
    assert sig.keyid == k.keyid
    ring = str(keyring_dir(k))
    assert main(["verify", "--xattr-ns", ns, "--keyring", ring, str(f)]) == 0
    assert ": ok (classic, sha256:" in capsys.readouterr().out
    args = [
        "sign",
        "--imasig",
        "--xattr-ns",
        ns,
        "--key",
        str(k.key_path),
        "--cert",
        str(k.cert_path),
    ]
    assert main([*args, str(f)]) == 0
    ok = _evmctl("ima_verify", *_user(ns), "--key", str(k.der_path), str(f))
    assert ok.returncode == 0, ok.stderr + ok.stdout


@pytest.mark.parametrize("ns", NAMESPACES)
def test_evmctl_rsa_signature_passes_pyverity_verify(tmp_path: Path, ns: str) -> None:
    k = make_key("rsa", "2048")
    f = _file(tmp_path, 123457)
    assert _evmctl("ima_sign", *_user(ns), "--key", str(k.key_path), str(f)).returncode == 0
    ring = str(keyring_dir(k))
    assert main(["verify", "--xattr-ns", ns, "--keyring", ring, str(f)]) == 0
    with f.open("ab") as fh:
        fh.write(b"x")
    assert main(["verify", "--xattr-ns", ns, "--keyring", ring, str(f)]) == 1


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha512", "sha384", "sha224"])
def test_ima_hash_values_parse_and_verify(tmp_path: Path, ns: str, alg: str) -> None:
    f = _file(tmp_path, 3333)
    assert _evmctl("ima_hash", *_user(ns), "-a", alg, str(f)).returncode == 0
    value = parse_ima_value(_ima(f, ns))
    assert isinstance(value, ImaHash)
    assert value.algorithm.name == alg
    assert value.digest == hashlib.new(alg, f.read_bytes()).digest()
    assert value.to_bytes() == _ima(f, ns)
    assert main(["verify", "--xattr-ns", ns, str(f)]) == 0


def _sign_hash(k: GeneratedKey, alg: str, digest: bytes) -> bytes:
    ev = _evmctl("sign_hash", "-a", alg, "--key", str(k.key_path), stdin=f"{digest.hex()} x\n")
    assert ev.returncode == 0, ev.stderr
    return bytes.fromhex(ev.stdout.split()[2])


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_v3_is_evmctl_v2_over_file_id_hash_patched(tmp_path: Path, alg: str) -> None:
    """spec/ima.md §2.3: what evmctl >= 1.5 `sign_hash --veritysig` does, with 1.4."""
    k = make_key("rsa", "2048")
    f = _file(tmp_path, 9000)
    assert (
        main(
            [
                "sign",
                "--sigfile",
                "--hash-alg",
                alg,
                "--key",
                str(k.key_path),
                "--cert",
                str(k.cert_path),
                str(f),
            ]
        )
        == 0
    )
    ours = (tmp_path / "data.sig").read_bytes()
    d = compute_digest(f, TreeParams(by_name(alg)))
    algo_id = 4 if alg == "sha256" else 6
    v2 = _sign_hash(k, alg, file_id_hash(algo_id, d.digest))
    assert v2[:3] == bytes([3, 2, algo_id])
    assert ours == b"\x06\x03" + v2[2:]


def test_kernel_vector_v3_matches_evmctl_construction() -> None:
    """The kernel-accepted `hello.sig` is the same construction: its signature bytes verify as
    a plain v2 signature over H(ima_file_id) (the vector's private key is not stored)."""
    from tests.unit.keys.keyhelpers import VECTORS

    raw = bytes.fromhex((VECTORS / "hello.sig").read_text().strip().removeprefix("0x"))
    sig = parse_ima_value(raw)
    assert isinstance(sig, ImaSignature)
    m = file_id_hash(4, compute_digest(VECTORS / "hello").digest)
    from pyverity.keys import load_certificate

    load_certificate(VECTORS / "cert.der").public_key.verify_signature(sig.signature, m, 4)


def test_sigfile_matches_evmctl_sigfile(tmp_path: Path) -> None:
    """`--imasig --sigfile` writes FILE.sig as evmctl does (raw xattr bytes), no attributes."""
    k = make_key("rsa", "2048")
    f = _file(tmp_path, 4321)
    args = ["sign", "--imasig", "--sigfile", "--key", str(k.key_path), "--cert", str(k.cert_path)]
    assert main([*args, str(f)]) == 0
    sigfile = tmp_path / "data.sig"
    ours = sigfile.read_bytes()
    assert os.listxattr(f) == []
    ok = _evmctl("ima_verify", "--sigfile", "--key", str(k.der_path), str(f))
    assert ok.returncode == 0, ok.stderr + ok.stdout
    sigfile.unlink()
    assert _evmctl("ima_sign", "--sigfile", "-n", "--key", str(k.key_path), str(f)).returncode == 0
    assert sigfile.read_bytes() == ours
