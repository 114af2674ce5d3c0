"""``pyverity sign --builtin-sig`` equals the real ``fsverity sign`` byte for byte (RSA)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.cli import main
from tests.unit.keys.keyhelpers import make_key

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("fsverity") is None, reason="fsverity (fsverity-utils) missing"
    ),
]


@pytest.mark.parametrize(
    ("size", "tree_args"),
    [
        (12, []),
        (0, []),
        (100_000, ["--hash-alg=sha512"]),
        (70_000, ["--block-size=1024", "--salt=0011223344"]),
        (5000, ["--hash-alg=sha512", "--block-size=65536", "--salt=" + "ab" * 32]),
    ],
)
def test_builtin_signature_equals_fsverity_sign(
    tmp_path: Path, size: int, tree_args: list[str]
) -> None:
    k = make_key("rsa", "2048")
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size) if size != 12 else b"hello world\n")
    theirs, ours = tmp_path / "theirs.sig", tmp_path / "ours.sig"
    proc = subprocess.run(
        [
            "fsverity",
            "sign",
            str(f),
            str(theirs),
            f"--key={k.key_path}",
            f"--cert={k.cert_path}",
            *tree_args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    args = ["sign", "--key", str(k.key_path), "--cert", str(k.cert_path)]
    split = [a for t in tree_args for a in t.split("=", 1)]
    assert main([*args, *split, "--builtin-sig", str(ours), str(f)]) == 0
    assert ours.read_bytes() == theirs.read_bytes()
    assert os.listxattr(f) == []  # a built-in signature is written to OUT only


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command missing")
def test_builtin_signature_ecdsa_verifies_with_openssl(tmp_path: Path) -> None:
    """ECDSA signatures are randomized: check the structure with openssl instead of bytes."""
    k = make_key("ecdsa", "P-256")
    f = tmp_path / "f"
    f.write_bytes(b"hello world\n")
    out = tmp_path / "sig"
    assert (
        main(
            [
                "sign",
                "--key",
                str(k.key_path),
                "--cert",
                str(k.cert_path),
                "--builtin-sig",
                str(out),
                str(f),
            ]
        )
        == 0
    )
    digest = tmp_path / "formatted"
    from pyverity.format.formatted_digest import FormattedDigest
    from pyverity.hashing import compute_digest

    digest.write_bytes(FormattedDigest(1, compute_digest(f).digest).to_bytes())
    check = subprocess.run(
        ["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(out),
         "-content", str(digest), "-certfile", str(k.cert_path), "-nointern", "-noverify",
         "-out", os.devnull],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert b"Verification successful" in check.stderr
