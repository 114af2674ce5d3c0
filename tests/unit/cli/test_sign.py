"""``pyverity sign``: attributes, sigfiles, classic signatures, passphrases, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format import Descriptor
from pyverity.format.ima import ImaSignature, parse_ima_value
from pyverity.keys.generate import generate_key
from tests.unit.keys.keyhelpers import keyring_dir, make_key

HELLO_DIGEST = "sha256:37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"


def _hello(tmp_path: Path, name: str = "f") -> Path:
    f = tmp_path / name
    f.write_bytes(b"hello world\n")
    return f


def _key_args() -> list[str]:
    k = make_key()
    return ["--key", str(k.key_path), "--cert", str(k.cert_path)]


def test_sign_writes_both_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _hello(tmp_path)
    assert main(["sign", "--xattr-user", *_key_args(), str(f)]) == 0
    assert capsys.readouterr().out == f"Signed file '{f}' ({HELLO_DIGEST})\n"
    desc = Descriptor.from_bytes(os.getxattr(f, "user.verity"))
    sig = parse_ima_value(os.getxattr(f, "user.ima"))
    assert isinstance(sig, ImaSignature)
    assert (sig.xattr_type, sig.version, sig.hash_algo, sig.keyid) == (6, 3, 4, make_key().keyid)
    assert f"sha256:{desc.digest().hex()}" == HELLO_DIGEST
    ring = keyring_dir(make_key())
    assert main(["verify", "--xattr-user", "--keyring", str(ring), str(f)]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="security.* attributes need root")
def test_sign_security_namespace_by_default(tmp_path: Path) -> None:
    f = _hello(tmp_path)
    args = [*_key_args(), "--hash-alg", "sha512", "--block-size", "1024", "--salt", "ab"]
    assert main(["sign", *args, str(f)]) == 0
    desc = Descriptor.from_bytes(os.getxattr(f, "security.verity"))
    assert (desc.hash_algorithm, desc.block_size, desc.salt) == (2, 1024, b"\xab")
    assert os.getxattr(f, "security.ima")[:3] == b"\x06\x03\x06"
    assert main(["verify", "--keyring", str(keyring_dir(make_key())), str(f)]) == 0


def test_sigfile_and_imasig(tmp_path: Path) -> None:
    f = _hello(tmp_path)
    assert main(["sign", "--sigfile", *_key_args(), str(f)]) == 0
    sig = parse_ima_value((tmp_path / "f.sig").read_bytes())
    assert isinstance(sig, ImaSignature)
    assert sig.is_verity
    assert os.listxattr(f) == []
    assert (
        main(["sign", "--imasig", "--xattr-user", "--hash-alg", "sha1", *_key_args(), str(f)]) == 0
    )
    classic = parse_ima_value(os.getxattr(f, "user.ima"))
    assert isinstance(classic, ImaSignature)
    assert (classic.xattr_type, classic.version, classic.hash_algo) == (3, 2, 2)
    assert main(["verify", "--xattr-user", "--keyring", str(keyring_dir(make_key())), str(f)]) == 0


def test_recursive_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(6):
        (tree / "a" / ("b" if i % 2 else "") / f"f{i}").write_bytes(os.urandom(i * 3000))
    (tree / "link").symlink_to("/etc/passwd")
    assert main(["sign", "-r", "--xattr-user", "--jobs", "2", *_key_args(), str(tree)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "sign: 6 files done"
    ring = str(keyring_dir(make_key()))
    assert main(["verify", "-r", "--xattr-user", "--keyring", ring, str(tree)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_passphrases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    k = generate_key(tmp_path / "k", "ecdsa", passphrase=b"pw pw")
    f = _hello(tmp_path)
    base = ["sign", "--xattr-user", "--key", str(k.key_path), "--cert", str(k.cert_path)]
    (tmp_path / "pass").write_bytes(b"pw pw\n")
    assert main([*base, "--pass-file", str(tmp_path / "pass"), str(f)]) == 0
    monkeypatch.setenv("PV_PASS", "pw pw")
    assert main([*base, "--pass-env", "PV_PASS", str(f)]) == 0
    monkeypatch.setenv("PV_PASS", "wrong")
    capsys.readouterr()
    assert main([*base, "--pass-env", "PV_PASS", str(f)]) == 1
    assert capsys.readouterr().err.startswith("ERROR: wrong passphrase for key")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main([*base, str(f)]) == 2
    assert "no terminal" in capsys.readouterr().err
    assert main([*base, "--pass-env", "PV_UNSET_VAR", str(f)]) == 2


def test_bad_input_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _hello(tmp_path)
    other = generate_key(tmp_path / "other", "ecdsa")
    cases: list[tuple[list[str], int, str]] = [
        (["--key", str(other.key_path), "--cert", str(make_key().cert_path)], 1, "does not match"),
        ([*_key_args(), "--block-size", "512"], 2, "out of bounds"),
        ([*_key_args(), "--hash-alg", "md5"], 2, "unknown hash algorithm"),
        ([*_key_args(), "--salt", "xyz"], 2, "invalid salt"),
        ([*_key_args(), "--keyid", "0"], 2, "keyid 0"),
        ([*_key_args(), "--imasig", "--block-size", "1024"], 2, "do not apply"),
        (["--key", str(tmp_path / "nokey")], 1, "can't read key"),
        ([*_key_args(), "--builtin-sig", str(tmp_path / "o"), str(f)], 2, "exactly one"),
        (["--key", str(make_key().key_path), "--builtin-sig", str(tmp_path / "o")], 2, "--cert"),
        ([*_key_args(), "--sigfile", "--builtin-sig", str(tmp_path / "o")], 2, "exclusive"),
    ]
    for extra, code, message in cases:
        assert main(["sign", "--xattr-user", *extra, str(f)]) == code, extra
        err = capsys.readouterr().err
        assert err.startswith("ERROR: ")
        assert message in err.splitlines()[0], (extra, err)
        assert "Traceback" not in err
    assert os.listxattr(f) == []  # nothing written by any failed attempt
    assert main(["sign", "--xattr-user", *_key_args(), str(tmp_path / "missing"), str(f)]) == 1
    assert "missing" in capsys.readouterr().err
    assert sorted(os.listxattr(f)) == ["user.ima", "user.verity"]  # the good file is signed


def test_no_traceback_in_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "sign", "--key", str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"ERROR: key '{tmp_path}' is a directory\n"
    assert "Traceback" not in proc.stderr
