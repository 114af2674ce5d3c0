"""Faults during builds: a full cache filesystem, a file deleted in the middle of its build."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Daemon, protect, write_file

MiB = 1 << 20


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "cache"
    mnt.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_cache_fails_cleanly_and_is_retried(
    make_daemon: Callable[..., Daemon], tmp_path: Path, tiny_cache: Path
) -> None:
    d = make_daemon().start()
    f = d.root / "big.bin"
    write_file(f, 32 * MiB)  # a 256 KiB tree: more than the 64 KiB cache filesystem holds
    digest, _, _ = protect(f, tmp_path)
    rec = d.wait_for(
        lambda: (r := d.record(f)) is not None and "No space left" in r.error and r,
        what="the build to fail with ENOSPC",
    )
    assert str(rec.state) == "PENDING"  # to be retried, not READY and not failed for good
    assert not d.cache_entry(digest).exists()  # nothing partial published
    assert list((tiny_cache / "tmp").iterdir()) == []
    assert d.proc is not None
    assert d.proc.poll() is None


def test_file_deleted_mid_build(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "1").start()
    f = d.root / "gone.bin"
    write_file(f, 1024 * MiB, sparse=True)
    protect(f, tmp_path, "--block-size=1024")
    d.wait_state(f, "BUILDING")
    f.unlink()
    d.wait_gone(f)
    d.wait_for(lambda: d.metrics()["pyverity_workers_busy"] == 0, what="the worker to stop")
    assert d.metrics()["pyverity_workers_busy"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="security.* on FIFOs and devices needs root")
def test_fifo_and_device_carrying_the_attribute_are_ignored(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    import stat

    d = make_daemon(ns="security").start()
    regular = d.root / "regular.bin"
    regular.write_bytes(b"r" * 5000)
    desc = protect(regular, tmp_path, ns="security")[1]
    fifo = d.root / "fifo"
    os.mkfifo(fifo)
    dev = d.root / "null"
    os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for special in (fifo, dev):
        os.setxattr(special, "security.verity", desc, follow_symlinks=False)
    d.wait_state(regular, "READY", timeout=10)
    d.request({"op": "rescan"})
    assert d.record(fifo) is None
    assert d.record(dev) is None
    assert d.request({"op": "status", "path": str(fifo)})["error"] == "permission denied"
    assert d.proc is not None
    assert d.proc.poll() is None
