"""Permission checks as the kernel makes them (``generic_permission``), for a given caller.

A server that opens files on behalf of others (the mount runs as root) must decide itself
whether the caller may: :func:`check_access` applies the owner, group and other bits of the
object actually opened, then the capability overrides (``CAP_DAC_OVERRIDE``: read and write
anything, search any directory, execute a file that has any ``x`` bit; ``CAP_DAC_READ_SEARCH``:
read any file, read and search any directory). POSIX ACLs are not evaluated (the group-class
bits stand for them, as on a filesystem mounted without ACL support).

The caller is described by :class:`Credentials`: uid, gid, supplementary groups and effective
capabilities. For a FUSE request, :meth:`Credentials.of_process` reads the groups and
capabilities from ``/proc/<pid>/status`` (through a descriptor of ``/proc/<pid>``, bounded),
only when a check needs them, and only if that process still has the uid and gid the kernel
gave with the request; capabilities count only for a process in this user namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator
from pathlib import Path

from pyverity.fs.libc import libc

__all__ = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_SYS_ADMIN",
    "Credentials",
    "acting_as",
    "can_act_as",
    "check_access",
    "may_chown",
    "may_delete",
    "may_set_times",
    "owner_or_capable",
    "xattr_denied",
]

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_SYS_ADMIN = 21
_ALL_CAPS = (1 << 64) - 1

#: Bound on what is read of ``/proc/<pid>/status`` (65,536 groups of 10 digits fit).
STATUS_LIMIT = 1 << 20


def _read_status(pid: int) -> tuple[dict[str, str], bool] | None:
    """The fields of ``/proc/<pid>/status`` and whether the process shares our user
    namespace; None if the process is gone or unreadable."""
    try:
        pfd = os.open(f"/proc/{int(pid)}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            chunks: list[bytes] = []
            total = 0
            while total < STATUS_LIMIT and (chunk := os.read(fd, STATUS_LIMIT - total)):
                chunks.append(chunk)
                total += len(chunk)
        finally:
            os.close(fd)
        same_ns = os.readlink("ns/user", dir_fd=pfd) == os.fspath(
            Path("/proc/self/ns/user").readlink()
        )
    except OSError:
        return None
    finally:
        os.close(pfd)
    fields: dict[str, str] = {}
    for line in b"".join(chunks).decode("ascii", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields, same_ns


class Credentials:
    """Who asks: uid, gid, supplementary groups, effective capability bits.

    Built directly (``Credentials(uid, gid, groups, caps)``) or for a process with
    :meth:`of_process`, whose groups and capabilities are read on first use.
    """

    __slots__ = ("_caps", "_groups", "_pid", "gid", "uid")

    def __init__(
        self,
        uid: int,
        gid: int,
        groups: frozenset[int] | set[int] | tuple[int, ...] = (),
        caps: int | None = None,
    ) -> None:
        self.uid = uid
        self.gid = gid
        self._groups: frozenset[int] | None = frozenset(groups)
        #: Default: root (uid 0) has every capability, others none.
        self._caps: int | None = caps if caps is not None else (_ALL_CAPS if uid == 0 else 0)
        self._pid: int | None = None

    @classmethod
    def of_process(cls, uid: int, gid: int, pid: int) -> Credentials:
        """The caller of a FUSE request: ``uid``/``gid`` as the kernel gave them, ``pid``'s
        groups and capabilities read from ``/proc`` when first needed."""
        cred = cls(uid, gid)
        cred._groups = cred._caps = None
        cred._pid = pid
        return cred

    def _loaded(self) -> tuple[frozenset[int], int]:
        if self._groups is None or self._caps is None:
            self._groups, self._caps = self._read()
        return self._groups, self._caps

    def _read(self) -> tuple[frozenset[int], int]:
        groups: frozenset[int] = frozenset()
        caps = _ALL_CAPS if self.uid == 0 else 0  # the process is gone: uid 0 is still root
        status = _read_status(self._pid) if self._pid is not None else None
        if status is not None:
            fields, same_ns = status
            uids = fields.get("Uid", "").split()
            gids = fields.get("Gid", "").split()
            if uids[3:4] == [str(self.uid)] and gids[3:4] == [str(self.gid)]:  # fsuid, fsgid
                with contextlib.suppress(ValueError):
                    groups = frozenset(int(g) for g in fields.get("Groups", "").split())
                with contextlib.suppress(ValueError):
                    caps = int(fields.get("CapEff", "0"), 16) if same_ns else 0
            else:  # not the process that asked any more (or it changed its ids): no extras
                caps = 0
        return groups, caps

    @property
    def groups(self) -> frozenset[int]:
        return self._loaded()[0]

    def capable(self, cap: int) -> bool:
        return bool(self._loaded()[1] >> cap & 1)

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def __repr__(self) -> str:
        return f"Credentials(uid={self.uid}, gid={self.gid})"


def check_access(st: os.stat_result, cred: Credentials, mask: int) -> bool:
    """Whether ``cred`` may access the object of ``st`` for ``mask`` (``os.R_OK | os.W_OK |
    os.X_OK``; ``X_OK`` on a directory is search), as ``generic_permission`` decides."""
    mode = st.st_mode
    if cred.uid == st.st_uid:
        bits = mode >> 6
    elif ((mask & ~(mode >> 3) & 7) == 0) == ((mask & ~mode & 7) == 0):
        bits = mode  # group and other classes agree: no need to know the caller's groups
    elif cred.in_group(st.st_gid):
        bits = mode >> 3
    else:
        bits = mode
    if (mask & ~bits & 7) == 0:
        return True
    if stat.S_ISDIR(mode):
        if not mask & os.W_OK and cred.capable(CAP_DAC_READ_SEARCH):
            return True
        return cred.capable(CAP_DAC_OVERRIDE)
    if (mask & 7) == os.R_OK and cred.capable(CAP_DAC_READ_SEARCH):
        return True
    if not mask & os.X_OK or mode & 0o111:
        return cred.capable(CAP_DAC_OVERRIDE)
    return False


def owner_or_capable(st: os.stat_result, cred: Credentials) -> bool:
    """The owner, or ``CAP_FOWNER`` (chmod, explicit times, attributes of ``user.*``...)."""
    return cred.uid == st.st_uid or cred.capable(CAP_FOWNER)


def may_delete(dir_st: os.stat_result, victim: os.stat_result, cred: Credentials) -> bool:
    """Whether ``cred`` may remove or rename away ``victim`` from the directory ``dir_st``:
    write and search on the directory, and the sticky bit's owner rule."""
    if not check_access(dir_st, cred, os.W_OK | os.X_OK):
        return False
    if dir_st.st_mode & stat.S_ISVTX and cred.uid not in (victim.st_uid, dir_st.st_uid):
        return cred.capable(CAP_FOWNER)
    return True


def may_chown(st: os.stat_result, cred: Credentials, uid: int, gid: int) -> bool:
    """``chown`` to ``uid``/``gid`` (-1: unchanged): ``CAP_CHOWN``, or the owner giving the
    file to one of its own groups."""
    if cred.capable(CAP_CHOWN):
        return True
    if uid not in (-1, st.st_uid) or cred.uid != st.st_uid:
        return False
    return gid in (-1, st.st_gid) or cred.in_group(gid)


def may_set_times(st: os.stat_result, cred: Credentials, *, explicit: bool) -> bool:
    """``utimensat``: explicit times need the owner; "now" also allows a writer."""
    if owner_or_capable(st, cred):
        return True
    return not explicit and check_access(st, cred, os.W_OK)


def xattr_denied(st: os.stat_result, cred: Credentials, name: str, *, write: bool) -> int:
    """0 if ``cred`` may read (or, with ``write``, set or remove) attribute ``name`` of the
    object of ``st``, else the errno the kernel gives (``xattr_permission``): ``trusted.*``
    needs ``CAP_SYS_ADMIN`` (ENODATA on reads, else EPERM); ``security.*`` is readable by all
    and written with ``CAP_SYS_ADMIN``; ``system.*`` (ACLs) is written by the owner;
    ``user.*`` follows the read or write permission, on regular files and directories only.
    """
    if name.startswith("trusted."):
        if cred.capable(CAP_SYS_ADMIN):
            return 0
        return errno.EPERM if write else errno.ENODATA
    if name.startswith("user."):
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return errno.EPERM if write else errno.ENODATA
        return 0 if check_access(st, cred, os.W_OK if write else os.R_OK) else errno.EACCES
    if not write:
        return 0
    if name.startswith("system."):
        return 0 if owner_or_capable(st, cred) else errno.EPERM
    return 0 if cred.capable(CAP_SYS_ADMIN) else errno.EPERM


#: ``setgroups`` by number: the C library's wrapper changes every thread's groups, the system
#: call only the caller's. Architectures not listed create as root, then ``chown``.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159}


def _setgroups_thread(groups: list[int]) -> None:
    arr = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    nr = _SYS_SETGROUPS[platform.machine()]
    if libc().syscall(ctypes.c_long(nr), ctypes.c_long(len(groups)), arr) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), "setgroups")


def _set_fs_ids(uid: int, gid: int) -> None:
    c = libc()
    c.setfsgid(ctypes.c_uint32(gid))
    c.setfsuid(ctypes.c_uint32(uid))
    # setfsuid/setfsgid report the previous value, and a refused change silently: ask again.
    if (
        c.setfsuid(ctypes.c_uint32(0xFFFFFFFF)) != uid
        or c.setfsgid(ctypes.c_uint32(0xFFFFFFFF)) != gid
    ):
        raise OSError(errno.EPERM, "cannot take the caller's filesystem ids")


def can_act_as() -> bool:
    """Whether :func:`acting_as` switches credentials here (root, a known architecture)."""
    return os.geteuid() == 0 and platform.machine() in _SYS_SETGROUPS


@contextlib.contextmanager
def acting_as(cred: Credentials | None) -> Iterator[bool]:
    """Run the block with this thread's filesystem uid, gid and groups set to ``cred``'s, so
    that what it creates belongs to the caller from the start and the kernel checks it as the
    caller. Linux keeps these per thread; other threads are not affected. Yields whether the
    switch was made (not without ``cred``, nor where :func:`can_act_as` is false).
    """
    if cred is None or not can_act_as():
        yield False
        return
    saved = os.getgroups()  # the system call: this thread's groups
    _setgroups_thread(sorted(cred.groups))
    try:
        _set_fs_ids(cred.uid, cred.gid)
        yield True
    finally:
        _set_fs_ids(0, os.getegid())  # fsuid 0 first: that restores the capabilities
        _setgroups_thread(saved)
