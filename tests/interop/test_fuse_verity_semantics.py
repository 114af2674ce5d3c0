"""fs-verity semantics on a real mount whatever the policy (issue 9, finding 2): under a
measure-only policy a file with a descriptor is verified on every read and answers
``fsverity measure``; a byte changed in SOURCE gives EIO; ``--mode log`` and ``--mode off``
keep this; only ``--unsafe-no-verify`` serves the changed bytes."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.fs.xattr import attr_name, set_attr
from tests.interop.fuse_helpers import NS, flip, fuse_skip_reason, mount_log, mounted, protect

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

MEASURE_ONLY = "measure func=FILE_CHECK template=ima-ng\n"
BLOCK = 4096
DATA = os.urandom(BLOCK * 64 + 77)


def _measure(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["fsverity", "measure", str(path)], capture_output=True, text=True, check=False
    )


def _eio(path: Path, offset: int = 0, size: int = -1) -> None:
    with (  # noqa: PT012 - the open or the read may fail, as fs-verity decides
        pytest.raises(OSError, match="Input/output error") as e,
        path.open("rb", buffering=0) as f,
    ):
        f.seek(offset)
        f.read(size)
    assert e.value.errno == errno.EIO


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    tree = protect(src / "cached", DATA)  # opened before the change: its tree is cached
    protect(src / "fresh", DATA)  # changed before any open: the tree is built at open
    protect(src / "garbage", b"x")
    set_attr(src / "garbage", attr_name(NS, "verity"), b"\0" * 10)
    (src / "plain").write_bytes(b"never protected\n")
    policy = tmp_path / "policy"
    policy.write_text(MEASURE_ONLY)
    return src, tmp_path / "mnt", policy, str(tree.file_digest())


def test_measure_only_policy_verifies_and_measures(setup: tuple[Path, Path, Path, str]) -> None:
    src, mnt, policy, digest = setup
    measurements = mnt.parent / "measurements"
    with mounted(src, mnt, "--policy", str(policy), "--log", str(measurements)):
        assert (mnt / "cached").read_bytes() == DATA
        measured = _measure(mnt / "cached")
        assert measured.returncode == 0, measured.stderr
        assert measured.stdout.split()[0] == digest  # as the kernel's FS_IOC_MEASURE_VERITY
        assert _measure(mnt / "plain").returncode != 0  # no fs-verity: ENODATA
        assert (mnt / "plain").read_bytes() == b"never protected\n"
        flip(src / "cached", 40 * BLOCK + 9)  # a byte changed in SOURCE
        flip(src / "fresh", 40 * BLOCK + 9)
        # cached tree: EIO on the block that differs, correct bytes everywhere else
        _eio(mnt / "cached", 40 * BLOCK, BLOCK)
        with (mnt / "cached").open("rb", buffering=0) as f:
            f.seek(41 * BLOCK)
            assert f.read() == DATA[41 * BLOCK :]
        _eio(mnt / "fresh")  # tree built at open: the open fails
        _eio(mnt / "garbage")  # a malformed descriptor fails the open
    log = mount_log(mnt)
    assert "refused by fs-verity (EIO)" in log
    assert "denied" not in log  # nothing was appraised
    shown = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "log", "show", str(measurements)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert f"{mnt}/cached" in shown.stdout, shown.stderr
    # ima-ng under a rule without digest_type=verity: the whole-file hash, as the kernel's.
    assert f"sha256:{hashlib.sha256(DATA).hexdigest()} {mnt}/cached" in shown.stdout


@pytest.mark.parametrize("mode", ["log", "off"])
def test_log_and_off_modes_keep_fs_verity(setup: tuple[Path, Path, Path, str], mode: str) -> None:
    src, mnt, policy, digest = setup
    flip(src / "fresh", 3)
    for args in (["--policy", str(policy)], []):  # with the measure-only policy, and without
        with mounted(src, mnt, *args, "--mode", mode):
            assert (mnt / "cached").read_bytes() == DATA
            assert _measure(mnt / "cached").stdout.split()[0] == digest
            flip(src / "cached", 5 * BLOCK)
            _eio(mnt / "cached", 5 * BLOCK, 10)
            flip(src / "cached", 5 * BLOCK)  # back as it was
            _eio(mnt / "fresh")
            _eio(mnt / "garbage")


def test_unsafe_no_verify_serves_changed_content(setup: tuple[Path, Path, Path, str]) -> None:
    src, mnt, policy, _ = setup
    flip(src / "fresh", 3)
    changed = (src / "fresh").read_bytes()
    with mounted(src, mnt, "--policy", str(policy), "--unsafe-no-verify"):
        assert (mnt / "fresh").read_bytes() == changed
        assert _measure(mnt / "fresh").returncode != 0  # verification off: no digest enforced
    assert "UNSAFE" in mount_log(mnt)
