"""A stand-in for the kernel's fs-verity ioctls, at ``fcntl.ioctl`` (the errno level).

It answers as a filesystem would for files it was told are fs-verity: ``FS_IOC_MEASURE_VERITY``
fills ``struct fsverity_digest`` with a descriptor's digest (ENODATA for other files, ENOTTY
where the filesystem has no fs-verity), and ``FS_IOC_READ_VERITY_METADATA`` either serves the
descriptor's bytes (ext4, f2fs) or fails with ENOTTY, as btrfs does on Linux 6.12.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections import Counter
from dataclasses import dataclass, field

import pytest

from pyverity.format.descriptor import Descriptor
from pyverity.fs import ioctl

__all__ = ["FakeKernel"]


@dataclass
class FakeKernel:
    """Install with :meth:`install`; ``verity`` maps a file's (st_dev, st_ino) to what the
    kernel enforces for it."""

    #: False: the filesystem has no fs-verity (ENOTTY for every call).
    has_verity: bool = True
    #: False: READ_VERITY_METADATA answers ENOTTY (btrfs), while enable and measure work.
    readable: bool = True
    verity: dict[tuple[int, int], Descriptor] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)

    def enforce(self, fd: int, descriptor: Descriptor) -> None:
        """The open file ``fd`` has fs-verity with ``descriptor``."""
        st = os.fstat(fd)
        self.verity[(st.st_dev, st.st_ino)] = descriptor

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
        monkeypatch.setattr(ioctl.fcntl, "ioctl", self._ioctl)
        return self

    def _ioctl(self, fd: int, request: int, arg: bytearray | bytes, mutate: bool = True) -> int:
        if request == ioctl.FS_IOC_MEASURE_VERITY:
            return self._measure(fd, arg)
        if request == ioctl.FS_IOC_READ_VERITY_METADATA:
            return self._read(fd, arg)
        raise AssertionError(f"unexpected ioctl {request:#x}")

    def _enforced(self, fd: int) -> Descriptor:
        if not self.has_verity:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        st = os.fstat(fd)
        found = self.verity.get((st.st_dev, st.st_ino))
        if found is None:
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        return found

    def _measure(self, fd: int, buf: bytearray | bytes) -> int:
        self.calls["measure"] += 1
        descriptor = self._enforced(fd)
        assert isinstance(buf, bytearray)
        digest = descriptor.digest()
        struct.pack_into("=HH", buf, 0, descriptor.hash_algorithm, len(digest))
        buf[4 : 4 + len(digest)] = digest
        return 0

    def _read(self, fd: int, arg: bytearray | bytes) -> int:
        self.calls["read"] += 1
        descriptor = self._enforced(fd)
        if not self.readable:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        mtype, offset, length, buf_ptr, _ = struct.unpack("=QQQQQ", arg)
        assert mtype == ioctl.METADATA_DESCRIPTOR
        part = descriptor.to_bytes()[offset : offset + length]
        ctypes.memmove(buf_ptr, part, len(part))
        return len(part)
