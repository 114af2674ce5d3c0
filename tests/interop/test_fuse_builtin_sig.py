"""``fsverity enable --signature`` on a real mount: built-in signatures checked against --keyring.

The signatures are made by the real ``fsverity sign``; the errors are the kernel's, as
``fsverity enable`` prints them (EKEYREJECTED, ENOKEY, EBADMSG).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.format.descriptor import Descriptor
from pyverity.fs.xattr import attr_name, get_attr
from tests.interop.fuse_helpers import NS, fuse_skip_reason, mount_log, mounted
from tests.unit.keys.keyhelpers import keyring_dir, make_key

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
    pytest.mark.skipif(
        shutil.which("fsverity") is None, reason="fsverity (fsverity-utils) missing"
    ),
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _sign(file: Path, out: Path, kind: str, size: str, *tree_args: str) -> bytes:
    k = make_key(kind, size)
    done = _run(
        "fsverity",
        "sign",
        str(file),
        str(out),
        f"--key={k.key_path}",
        f"--cert={k.cert_path}",
        *tree_args,
    )
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_enable_with_signatures_from_fsverity_sign(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    data = os.urandom(200_000)
    names = ["good", "good512", "untrusted", "flipped", "truncated", "other"]
    for name in names:
        (src / name).write_bytes(data)
    (src / "other").write_bytes(data + b"!")
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    good = _sign(src / "good", sigs / "good", "rsa", "2048")
    _sign(src / "good512", sigs / "good512", "ecdsa", "P-256", "--hash-alg=sha512")
    _sign(src / "untrusted", sigs / "untrusted", "rsa", "3072")
    (sigs / "flipped").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    (sigs / "truncated").write_bytes(good[:-10])
    (sigs / "other").write_bytes(good)  # a valid signature of other content
    keyring = keyring_dir(make_key("rsa", "2048"), make_key("ecdsa", "P-256"))
    expected = {
        "good": None,
        "good512": None,
        "untrusted": "Required key not available",  # ENOKEY
        "flipped": "Key was rejected by service",  # EKEYREJECTED
        "truncated": "Bad message",  # EBADMSG
        "other": "Key was rejected by service",
    }
    with mounted(src, mnt, "--rw", "--keyring", str(keyring)):
        for name, error in expected.items():
            alg = ["--hash-alg=sha512"] if name == "good512" else []
            done = _run("fsverity", "enable", *alg, f"--signature={sigs / name}", str(mnt / name))
            attr = get_attr(src / name, attr_name(NS, "verity"))
            if error is None:
                assert done.returncode == 0, (name, done.stderr, mount_log(mnt))
                assert attr is not None
                # The descriptor written is the one the real tool computes. (Opening the file
                # on this mount would need an IMA signature too: with --keyring, appraisal asks
                # for one, and the built-in signature is not kept.)
                descriptor = Descriptor.from_bytes(attr)
                digest = _run("fsverity", "digest", *alg, str(src / name)).stdout.split()[0]
                assert f"{descriptor.hash_alg.name}:{descriptor.digest().hex()}" == digest
            else:
                assert done.returncode != 0, name
                assert error in done.stderr, (name, done.stderr)
                assert attr is None, name  # nothing written on failure
    log = mount_log(mnt)
    for name, code in [
        ("untrusted", "ENOKEY"),
        ("flipped", "EKEYREJECTED"),
        ("truncated", "EBADMSG"),
    ]:
        assert f"built-in signature of '/{name}' refused ({code})" in log


def test_signed_enable_without_keyring_is_refused(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    (src / "f").write_bytes(b"hello world\n")
    sig = tmp_path / "f.sig"
    _sign(src / "f", sig, "rsa", "2048")
    with mounted(src, mnt, "--rw"):
        done = _run("fsverity", "enable", f"--signature={sig}", str(mnt / "f"))
        assert done.returncode != 0
        assert "Required key not available" in done.stderr
        assert get_attr(src / "f", attr_name(NS, "verity")) is None
    assert "no --keyring" in mount_log(mnt)
