"""Build an :class:`~pyverity.policy.engine.AccessContext` for an open file.

``fowner``/``fgroup`` come from ``fstat`` of the descriptor. The filesystem identity is found
only when the policy tests it (:attr:`Policy.needs_fs_identity`):

- ``fsmagic``: ``fstatfs(2)``'s ``f_type`` (through libc; exact);
- ``fsname``: the filesystem type in ``/proc/self/mountinfo`` for the file's device, with a
  FUSE subtype dropped (``fuse.sshfs`` → ``fuse``), which is the kernel's ``s_type->name``;
- ``fsuuid``: the ``/dev/disk/by-uuid`` link of the file's block device — best effort: the
  kernel's ``s_uuid`` for filesystems that have no block device (tmpfs, overlay, btrfs
  subvolumes) may differ or be absent, and then an ``fsuuid=`` rule does not match.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import stat
import uuid
from pathlib import Path

from pyverity.fs.libc import libc
from pyverity.policy.engine import AccessContext, Policy
from pyverity.policy.rules import MAY_READ, Func

__all__ = ["context_for_fd", "fs_magic", "fs_name", "fs_uuid"]

logger = logging.getLogger(__name__)


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type first, as a long.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def fs_magic(fd: int) -> int | None:
    """The filesystem magic of ``fd`` (``statfs.f_type``), or ``None`` if unavailable."""
    try:
        buf = _StatFs()
        if libc().fstatfs(fd, ctypes.byref(buf)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def fs_name(st_dev: int) -> str | None:
    """The filesystem type name for device ``st_dev`` from ``/proc/self/mountinfo``."""
    want = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    try:
        with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="replace") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                parts = left.split()
                if sep and len(parts) > 2 and parts[2] == want:
                    return right.split()[0].split(".", 1)[0]
    except OSError:
        return None
    return None


def fs_uuid(st_dev: int) -> uuid.UUID | None:
    """The UUID of the block device holding ``st_dev``, if ``/dev/disk/by-uuid`` names it."""
    base = Path("/dev/disk/by-uuid")
    try:
        links = list(base.iterdir())
    except OSError:
        return None
    for link in links:
        try:
            st = link.stat()
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == st_dev:
                return uuid.UUID(link.name)
        except (OSError, ValueError):
            continue
    return None


def context_for_fd(
    fd: int,
    *,
    path: str | None,
    uid: int | None = None,
    mask: int = MAY_READ,
    func: Func = Func.FILE_CHECK,
    policy: Policy | None = None,
    euid: int | None = None,
    gid: int | None = None,
    egid: int | None = None,
) -> AccessContext:
    """The context of an access to open file ``fd`` by ``uid`` (default: this process).

    ``path`` should be the resolved path the file was opened by. Filesystem identity is
    looked up only when ``policy`` is ``None`` or tests it.
    """
    st = os.fstat(fd)
    if uid is None:
        uid, euid = os.getuid(), os.geteuid() if euid is None else euid
        gid = os.getgid() if gid is None else gid
        egid = os.getegid() if egid is None else egid
    magic = name = fsid = None
    if policy is None or policy.needs_fs_identity:
        magic, name, fsid = fs_magic(fd), fs_name(st.st_dev), fs_uuid(st.st_dev)
    return AccessContext(
        uid=uid,
        euid=euid,
        gid=gid,
        egid=egid,
        fowner=st.st_uid,
        fgroup=st.st_gid,
        mask=mask,
        func=func,
        fsmagic=magic,
        fsname=name,
        fsuuid=fsid,
        path=path,
    )
