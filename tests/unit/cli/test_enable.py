"""``pyverity enable``: only the descriptor attribute."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format import Descriptor


def test_enable_writes_descriptor_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello world\n")
    assert main(["enable", "--xattr-ns", "user", str(f)]) == 0
    digest = "sha256:37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"
    assert capsys.readouterr().out == f"Protected file '{f}' ({digest}) in user.verity\n"
    assert os.listxattr(f) == ["user.verity"]
    assert Descriptor.from_bytes(os.getxattr(f, "user.verity")).data_size == 12
    assert main(["verify", "--xattr-user", str(f)]) == 0
    assert ": ok (verity, sha256:" in capsys.readouterr().out
    f.write_bytes(b"hello World\n")
    assert main(["verify", "--xattr-user", str(f)]) == 1
    assert "FAILED: content does not match" in capsys.readouterr().out


def test_enable_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(9000))
    args = ["--hash-alg", "sha512", "--block-size", "65536", "--salt", "00" * 32]
    assert main(["enable", "--xattr-user", *args, str(f)]) == 0
    d = Descriptor.from_bytes(os.getxattr(f, "user.verity"))
    assert (d.hash_algorithm, d.block_size, d.salt) == (2, 65536, bytes(32))
    capsys.readouterr()
    assert main(["enable", "--xattr-user", "--salt", "00" * 33, str(f)]) == 2
    assert capsys.readouterr().err.startswith("ERROR: unsupported salt size (33)")
    assert main(["enable", "--xattr-user", str(tmp_path)]) == 1
    assert "Is a directory" in capsys.readouterr().err
    assert main(["enable", "--xattr-user", "--jobs", "0", str(f)]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert main(["enable", "--xattr-ns", "trusted", str(f)]) == 2
    assert "invalid choice" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_bytes(b"x")
    assert main(["enable", "-r", "--xattr-user", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == "enable: 1 file done\n"


def test_enable_imports_no_cryptography(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "f"
    f.write_bytes(b"x")
    code = (
        "import sys; from pyverity.cli import main; "
        f"rc = main(['enable', '--xattr-user', {str(f)!r}]); "
        "assert 'cryptography' not in sys.modules, 'cryptography imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
