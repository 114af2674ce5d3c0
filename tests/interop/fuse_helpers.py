"""Running ``pyverity mount`` in a subprocess for the FUSE tests, always unmounted afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from tests.support.polling import wait_until
from tests.support.procs import stop
from tests.unit.reader import helpers as reader_helpers
from tests.unit.reader.helpers import flip

__all__ = ["NS", "flip", "fuse_skip_reason", "is_mounted", "mount_log", "mounted", "protect"]

NS = "security"


def fuse_skip_reason() -> str | None:
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (apt-get install fuse3)"
    if os.geteuid() != 0:
        return "allow_other mounts and security.* attributes need root"
    return None


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with Path("/proc/self/mounts").open() as f:
        return any(line.split()[1] == target for line in f)


def protect(path: Path, data: bytes, params: TreeParams | None = None) -> MerkleTree:
    """Write ``data`` and its descriptor (``security.verity``); returns the tree."""
    return reader_helpers.protect(path, data, params, ns=NS)


@contextlib.contextmanager
def mounted(
    source: Path, mountpoint: Path, *args: str, verbose: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Mount in a foreground subprocess; on exit SIGTERM it and check it unmounted cleanly.

    ``verbose`` runs ``pyverity -v`` (debug logging, e.g. where each tree came from).
    """
    mountpoint.mkdir(exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyverity.cli",
                *(["-v"] if verbose else []),
                "mount",
                "-f",
                *args,
                str(source),
                str(mountpoint),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: is_mounted(mountpoint) or proc.poll() is not None,
                timeout=15,
                interval=0.05,
                what="the mount",
            )
        if proc.poll() is not None or not is_mounted(mountpoint):
            pytest.fail(f"mount did not come up: {log.read_text()}")
        yield proc
    finally:
        rc = stop(proc, timeout=15)
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
            pytest.fail(f"mount left behind after SIGTERM: {log.read_text()}")
    assert rc == 0, log.read_text()


def mount_log(mountpoint: Path) -> str:
    return (mountpoint.parent / f"{mountpoint.name}.log").read_text()
