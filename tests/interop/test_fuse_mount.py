"""A real FUSE mount in a subprocess: verified reads, EIO for tampered blocks, appraisal, ioctls."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from pyverity.format.descriptor import Descriptor
from pyverity.fs.xattr import attr_name, get_attr, set_attr
from tests.interop.fuse_helpers import (
    NS,
    flip,
    fuse_skip_reason,
    mount_log,
    mounted,
    protect,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

MIB = 1 << 20


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    return src, tmp_path / "mnt"


def test_reads_identical_and_tamper_gives_eio_for_that_block(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    data = os.urandom(8 * MIB + 123)
    protect(src / "big", data)
    small = os.urandom(5000)
    protect(src / "small", small)
    (src / "plain").write_bytes(b"not protected\n")
    with mounted(src, mnt):
        assert (mnt / "small").read_bytes() == small
        assert (mnt / "plain").read_bytes() == b"not protected\n"
        with (mnt / "big").open("rb", buffering=0) as f:
            assert f.read(4096) == data[:4096]  # opened and partly read ...
            flip(src / "big", 6 * MIB + 5)  # ... then a byte of the backing file flipped
            f.seek(6 * MIB)
            with pytest.raises(OSError, match="Input/output error") as e:
                f.read(4096)
            assert e.value.errno == errno.EIO
            f.seek(4 * MIB)
            assert f.read(MIB) == data[4 * MIB : 5 * MIB]
            f.seek(7 * MIB)
            assert f.read() == data[7 * MIB :]
    assert "FILE CORRUPTED" in mount_log(mnt)


def test_appraisal_enforce_and_log(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    protect(src / "changed", b"original content")
    (src / "changed").write_bytes(b"other  content!!")  # same size, other bytes
    protect(src / "ok", b"fine")
    (src / "garbage").write_bytes(b"x")
    set_attr(src / "garbage", attr_name(NS, "verity"), b"\0" * 10)
    with mounted(src, mnt):
        for name in ("changed", "garbage"):
            with pytest.raises(PermissionError):
                (mnt / name).read_bytes()
        assert (mnt / "ok").read_bytes() == b"fine"
    assert "access denied" in mount_log(mnt)
    with mounted(src, mnt, "--mode", "log"):
        # The failures are only logged, but fs-verity still refuses both files: a descriptor
        # that does not match the content, or does not parse, fails the open with EIO.
        for name in ("changed", "garbage"):
            with pytest.raises(OSError, match="Input/output error") as e:
                (mnt / name).read_bytes()
            assert e.value.errno == errno.EIO
        assert (mnt / "ok").read_bytes() == b"fine"
    assert "not enforced" in mount_log(mnt)
    assert "refused by fs-verity (EIO)" in mount_log(mnt)


def test_concurrent_readers_and_mmap(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    data = os.urandom(4 * MIB)
    protect(src / "f", data)
    results: list[bool] = []

    def reader() -> None:
        with (mnt / "f").open("rb") as f:
            results.append(f.read() == data)

    with mounted(src, mnt, "--no-keep-cache"):
        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True] * 8
        with (mnt / "f").open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[: 3 * MIB : 4096] == data[: 3 * MIB : 4096]
            assert m[-100:] == data[-100:]


def test_fsverity_tools_on_the_mount(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    data = os.urandom(300000)
    tree = protect(src / "signed", data)
    (src / "new").write_bytes(data)
    with mounted(src, mnt, "--rw"):
        out = subprocess.run(
            ["fsverity", "measure", str(mnt / "signed")], capture_output=True, text=True, check=True
        ).stdout
        assert out.split()[0] == str(tree.file_digest())
        flags = subprocess.run(
            ["lsattr", str(mnt / "signed"), str(mnt / "new")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert "V" in flags[0].split()[0]  # FS_VERITY_FL, as on a real verity file
        assert "V" not in flags[1].split()[0]
        plain = subprocess.run(
            ["fsverity", "measure", str(mnt / "new")], capture_output=True, text=True, check=False
        )
        assert plain.returncode != 0
        subprocess.run(
            [
                "fsverity",
                "enable",
                "--hash-alg=sha512",
                "--block-size=1024",
                "--salt=0badc0de",
                str(mnt / "new"),
            ],
            check=True,
        )
        digest = subprocess.run(
            [
                "fsverity",
                "digest",
                "--hash-alg=sha512",
                "--block-size=1024",
                "--salt=0badc0de",
                str(src / "new"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
        measured = subprocess.run(
            ["fsverity", "measure", str(mnt / "new")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        assert measured == digest
        raw = get_attr(src / "new", attr_name(NS, "verity"))
        assert raw is not None
        assert Descriptor.from_bytes(raw).block_size == 1024
        again = subprocess.run(
            ["fsverity", "enable", str(mnt / "new")], capture_output=True, text=True, check=False
        )
        assert again.returncode != 0
        assert "File exists" in again.stderr
        assert (mnt / "new").read_bytes() == data


def test_rw_write_makes_protected_file_stale(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    protect(src / "f", b"a" * 10000)
    with mounted(src, mnt, "--rw"):
        assert (mnt / "f").read_bytes() == b"a" * 10000
        with (mnt / "f").open("r+b") as w:
            w.seek(5)
            w.write(b"B")
        assert (src / "f").read_bytes()[5:6] == b"B"
        with pytest.raises(PermissionError):
            (mnt / "f").read_bytes()
        protect(src / "f", (src / "f").read_bytes())  # signed again
        assert (mnt / "f").read_bytes()[:6] == b"aaaaaB"
        (mnt / "created").write_bytes(b"new file")
        assert (src / "created").read_bytes() == b"new file"


def test_read_only_mount_refuses_writes(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    protect(src / "f", b"data")
    with mounted(src, mnt):
        with pytest.raises(OSError, match="Read-only") as e:
            (mnt / "f").open("r+b")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError, match="Read-only"):
            (mnt / "g").write_bytes(b"x")


def test_umount_command_and_sigint(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    protect(src / "f", b"data")
    with mounted(src, mnt) as proc:
        done = subprocess.run(
            [sys.executable, "-m", "pyverity.cli", "umount", str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert proc.wait(15) == 0
    with mounted(src, mnt) as proc:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    again = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "umount", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert again.stderr.startswith("ERROR: cannot unmount")


def test_bad_arguments_are_one_line_errors(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    mnt.mkdir()
    for args in ([str(src / "missing"), str(mnt)], [str(src), str(src)]):
        done = subprocess.run(
            [sys.executable, "-m", "pyverity.cli", "mount", "-f", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 1
        assert done.stderr.startswith("ERROR: ")
        assert "Traceback" not in done.stderr


def test_other_users_with_the_backing_permissions(dirs: tuple[Path, Path]) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    src, _ = dirs
    # pytest's temporary directories are 0700: the mount point must be reachable by others,
    # while the source stays out of their reach (as docs/mount.md recommends).
    outside = Path(tempfile.mkdtemp(prefix="pyverity-fuse-"))
    outside.chmod(0o755)
    mnt = outside / "mnt"
    protect(src / "public", b"everyone")
    (src / "public").chmod(0o644)
    protect(src / "private", b"root only")
    (src / "private").chmod(0o600)
    try:
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        with mounted(src, mnt):
            ok = subprocess.run([*nobody, str(mnt / "public")], capture_output=True, check=False)
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout == b"everyone"
            denied = subprocess.run(
                [*nobody, str(mnt / "private")], capture_output=True, check=False
            )
            assert denied.returncode != 0
            assert b"Permission denied" in denied.stderr
            around = subprocess.run(
                [*nobody, str(src / "public")], capture_output=True, check=False
            )
            assert around.returncode != 0  # the source itself is out of reach
    finally:
        shutil.rmtree(outside, ignore_errors=True)
