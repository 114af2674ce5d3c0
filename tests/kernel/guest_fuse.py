"""Run inside the test VM (host's Python over 9p, chrooted): the real ``fsverity`` on a pyverity
FUSE mount.

``python guest_fuse.py DIR LOG``: ``DIR/src`` holds ``protected`` (its descriptor is written
here, to ``user.verity``) and ``plain`` (no protection). ``pyverity mount --rw --xattr-ns user``
serves ``DIR/src`` on ``DIR/mnt`` (a second process: the FUSE server, its output to ``LOG``);
then the host's ``fsverity measure`` and ``fsverity enable`` run on the mount, as a user would.
Linux 6.10 and later forward ``FS_IOC_MEASURE_VERITY`` and ``FS_IOC_ENABLE_VERITY`` on FUSE to
the server (with their variable-length arguments); older kernels do not, and the commands fail.

Prints one line per step, ``<step> <file> <result>``: a command's exit code and its first line
of output (``rc=N out...`` / ``rc=N err...``), and what the source directory shows afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pyverity.fs.xattr import get_attr
from tests.support.polling import wait_until
from tests.support.procs import stop
from tests.support.protect import protect_with_pyverity

NS = "user"


def mounted(mnt: Path) -> bool:
    target = os.path.realpath(mnt)
    with Path("/proc/self/mounts").open() as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 2)


def tool(step: str, name: str, *argv: str) -> None:
    """Run a command; print its exit code and first line of output (stdout, else stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    text = (done.stdout or done.stderr).strip().splitlines()
    print(step, name, f"rc={done.returncode}", text[0] if text else "", flush=True)


def main(directory: str, log_path: str) -> None:
    started = time.monotonic()
    d = Path(directory)
    src, mnt = d / "src", d / "mnt"
    mnt.mkdir(exist_ok=True)
    protect_with_pyverity(src / "protected", ns=NS)
    cmd = [sys.executable, "-m", "pyverity.cli", "mount", "-f", "--rw", "--xattr-ns", NS]
    with Path(log_path).open("wb") as log:
        server = subprocess.Popen([*cmd, str(src), str(mnt)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: mounted(mnt) or server.poll() is not None,
            timeout=90,
            interval=0.1,
            what="the mount",
        )
        print("mount x", "up" if mounted(mnt) else f"exited {server.poll()}", flush=True)
        if mounted(mnt):
            checks(src, mnt)
    finally:
        rc = stop(server, timeout=60)
        print("server exit", rc, flush=True)
        print("unmounted x", not mounted(mnt), flush=True)
        print("seconds x", f"{time.monotonic() - started:.1f}", flush=True)


def checks(src: Path, mnt: Path) -> None:
    tool("measure", "protected", "fsverity", "measure", str(mnt / "protected"))
    tool("measure", "plain", "fsverity", "measure", str(mnt / "plain"))
    tool("enable", "plain", "fsverity", "enable", str(mnt / "plain"))
    print("descriptor plain", get_attr(src / "plain", f"{NS}.verity") is not None, flush=True)
    tool("measure-after", "plain", "fsverity", "measure", str(mnt / "plain"))
    tool("lsattr", "protected", "lsattr", str(mnt / "protected"))
    # The server is still serving (an ioctl it could not answer did not take it down).
    print("read protected", len((mnt / "protected").read_bytes()), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
