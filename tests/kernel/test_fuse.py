"""A pyverity FUSE mount inside the VM, with the real ``fsverity measure`` and ``fsverity enable``.

Run in the main boot of each kernel (``guest_fuse.py``). Linux 6.10 and later forward
``FS_IOC_MEASURE_VERITY`` and ``FS_IOC_ENABLE_VERITY`` on FUSE to the server with their
variable-length arguments, and pyverity's mount answers both (``fuse/ops.py``): on 6.12 the
digest ``fsverity measure`` prints is ``pyverity digest``'s, and ``fsverity enable`` protects an
unprotected file. Before 6.10 (Debian's 6.1) the kernel hands the server only the fixed-size
structures, so both commands fail with ENOTTY, and the mount goes on serving
(:attr:`cases.KernelFacts.fuse_verity_ioctls`).
"""

from __future__ import annotations

import os

import pytest

from tests.kernel.cases import FUSE_FILES, parse_lines
from tests.kernel.conftest import KernelRun, _pyverity

pytestmark = pytest.mark.kernel

ENOTTY = os.strerror(25)  # "Inappropriate ioctl for device"


def _guest(run: KernelRun) -> dict[tuple[str, str], str]:
    out = run.text("fuse.out")
    assert run.lines.get(("fuse-guest", "x")) == "0", out
    guest = parse_lines(out)
    assert guest[("mount", "x")] == "up", out + run.text("fuse-mount.log")
    return guest


def _digest(run: KernelRun, name: str) -> str:
    """``pyverity digest`` of the staged file (the bytes the guest's mount serves), with the
    defaults of ``fsverity enable``: sha256, 4 KiB blocks, no salt."""
    return _pyverity("digest", str(run.stage / "fuse" / "src" / name)).split()[0]


def test_fuse_module_and_mount_come_up_and_go_down(kernel_run: KernelRun) -> None:
    guest = _guest(kernel_run)
    assert guest[("read", "protected")] == str(FUSE_FILES["protected"])
    # SIGTERM: libfuse unmounted and its loop ended
    assert guest[("server", "exit")] == "0", kernel_run.text("fuse-mount.log")
    assert guest[("unmounted", "x")] == "True"


def test_fsverity_measure_on_the_mount(kernel_run: KernelRun) -> None:
    guest = _guest(kernel_run)
    measured = guest[("measure", "protected")]
    if kernel_run.facts.fuse_verity_ioctls:
        assert measured.split()[:2] == ["rc=0", _digest(kernel_run, "protected")]
        # A file without protection has no fs-verity digest: ENODATA, as on a real filesystem.
        plain = guest[("measure", "plain")]
        assert plain.startswith("rc=1 ERROR: FS_IOC_MEASURE_VERITY failed"), plain
        assert plain.endswith(os.strerror(61)), plain  # ENODATA: "No data available"
    else:
        assert measured.startswith("rc=1 ERROR: FS_IOC_MEASURE_VERITY failed"), measured
        assert measured.endswith(ENOTTY), measured
    # FS_IOC_GETFLAGS is answered on every kernel (fileattr_get): 'V' for the protected file.
    assert "V" in guest[("lsattr", "protected")].split()[1]


def test_fsverity_enable_on_the_mount(kernel_run: KernelRun) -> None:
    guest = _guest(kernel_run)
    enabled = guest[("enable", "plain")]
    if kernel_run.facts.fuse_verity_ioctls:
        assert enabled.startswith("rc=0"), enabled
        assert guest[("descriptor", "plain")] == "True"  # written to the source's user.verity
        measured = guest[("measure-after", "plain")].split()
        assert measured[:2] == ["rc=0", _digest(kernel_run, "plain")]
    else:
        assert enabled.startswith("rc=1 ERROR: FS_IOC_ENABLE_VERITY failed"), enabled
        assert enabled.endswith(ENOTTY), enabled
        assert guest[("descriptor", "plain")] == "False"
        assert guest[("measure-after", "plain")].endswith(ENOTTY)
