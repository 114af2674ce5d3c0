# ruff: noqa: PTH101, PTH102, PTH104, PTH106, PTH108, PTH115, PTH118, PTH208, PTH211
# (a syscall-for-syscall adapter over the source directory: the os.* calls mirror the requests)
"""The filesystem: every open appraised, every read verified, writes passed through on ``--rw``.

A thin adapter (DESIGN.md §9): appraisal and verification are :mod:`pyverity.reader`'s; this
module maps paths to the source directory, keeps the open handles, decides what the kernel may
cache, and turns results into errnos (EACCES for a failed appraisal under enforcement, EIO for
a corrupt block, EROFS for writes on a read-only mount).

Page cache: verified pages may stay cached (they were checked when they entered it, as with
fs-verity) while the backing file's identity ``(dev, ino, size, mtime)`` is unchanged since the
last open; otherwise the open asks the kernel to drop them. Files open for writing through the
mount are read and written with ``direct_io``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyverity.errors import Error, FileChangedError, IntegrityError
from pyverity.fs.openfile import FileIdentity, identity
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr, set_attr
from pyverity.fuse.config import MountConfig
from pyverity.fuse.handles import Handle, HandleTable, InodeKey
from pyverity.fuse.verity_ioctl import (
    FS_IOC_ENABLE_VERITY,
    FS_IOC_GETFLAGS,
    FS_IOC_MEASURE_VERITY,
    FS_VERITY_FL,
    check_builtin_signature,
    parse_enable,
    write_flags,
    write_measure,
)
from pyverity.hashing.api import build_tree
from pyverity.hashing.result import MerkleTree
from pyverity.protect.attrs import fingerprint
from pyverity.reader.api import open_fd
from pyverity.reader.appraise import Access, CachedEntry, TreeProvider

__all__ = ["LockedStore", "VerityFS"]

log = logging.getLogger(__name__)

_STAT_KEYS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_blksize",
    "st_rdev",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND

#: Called after each successful open: (path in the mount, handle).
OpenHook = Callable[[str, Handle], None]
#: Asks the caller's user id: ``(uid, gid, pid)`` of the process making the request.
ContextFn = Callable[[], tuple[int, int, int]]


def tune_readahead(mountpoint: str, kb: int) -> None:
    """Raise the mount's readahead (its ``bdi``) so the kernel asks for up to ``kb`` at a time.

    FUSE offers 128 KiB; bigger requests mean fewer round trips and bigger hashing batches.
    Called from the first open (the mount is then ours and visible; the kernel reads the
    readahead size into the file after the open returns). The device number is the last
    ``/proc/self/mountinfo`` entry for the mount point (a ``stat`` of it would need the
    filesystem we are serving). Best effort: needs root, logged otherwise.
    """
    device = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == mountpoint and " - fuse" in line:
                device = fields[2]
    if device is None:
        log.info("cannot raise the readahead of %s: not in /proc/self/mountinfo", mountpoint)
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kb}\n")
    except OSError as e:
        log.info("cannot raise the readahead of %s: %s", mountpoint, e.strerror)


class LockedStore:
    """A tree store shared by the mount's threads, one call at a time."""

    def __init__(self, store: TreeProvider) -> None:
        self._store = store
        self._lock = threading.Lock()

    def get(self, algorithm: str, digest: bytes) -> CachedEntry | None:
        with self._lock:
            return self._store.get(algorithm, digest)

    def put(self, tree: MerkleTree) -> None:
        with self._lock:
            self._store.put(tree)

    def discard(self, algorithm: str, digest: bytes) -> None:
        with self._lock:
            self._store.discard(algorithm, digest)


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class VerityFS:
    """The mfusepy operations object (used with ``raw_fi=True``)."""

    use_ns = True

    def __init__(
        self,
        config: MountConfig,
        *,
        context: ContextFn | None = None,
        on_open: OpenHook | None = None,
    ) -> None:
        self.config = config
        self._source = os.fspath(config.source)
        self._mountpoint = os.path.realpath(config.mountpoint)
        self._handles = HandleTable()
        self._context = context
        self._on_open = on_open
        self._lock = threading.Lock()
        #: Identity of each inode at its last open, for the keep_cache decision.
        self._seen: dict[InodeKey, FileIdentity] = {}
        #: Inodes written through the mount: attribute fingerprint at the time of the write.
        self._stale: dict[InodeKey, bytes] = {}
        self._ns = config.reader.xattr_ns
        self._tuned = False

    # -- helpers -----------------------------------------------------------------------
    def _real(self, path: str) -> str:
        return os.path.join(self._source, path.lstrip("/"))

    def _require_rw(self) -> None:
        if not self.config.rw:
            raise _err(errno.EROFS)

    def _fingerprint(self, fd: int) -> bytes | None:
        """Hash of the raw protection attributes, or None when the file carries neither."""
        raw_descriptor = get_attr(fd, attr_name(self._ns, VERITY_SUFFIX))
        raw_ima = get_attr(fd, attr_name(self._ns, IMA_SUFFIX))
        if raw_descriptor is None and raw_ima is None:
            return None
        return fingerprint(raw_descriptor, raw_ima)

    def _mark_stale(self, fd: int, key: InodeKey, path: str) -> None:
        with contextlib.suppress(Error, OSError):
            fp = self._fingerprint(fd)
            if fp is not None:
                with self._lock:
                    if key not in self._stale:
                        log.warning("'%s' opened for writing through the mount: STALE", path)
                    self._stale[key] = fp

    # -- attributes and directories ----------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        del fh
        st = os.lstat(self._real(path))
        attrs = {k: getattr(st, k) for k in _STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        del fh
        return [".", "..", *os.listdir(self._real(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {k: getattr(sv, k) for k in (*keys, "f_flag", "f_frsize", "f_namemax")}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        del position
        try:
            return os.getxattr(self._real(path), name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise _err(errno.ENODATA) from None
            raise

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._real(path), follow_symlinks=False)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        del position
        self._require_rw()
        os.setxattr(self._real(path), name, value, options, follow_symlinks=False)
        return 0

    def removexattr(self, path: str, name: str) -> int:
        self._require_rw()
        os.removexattr(self._real(path), name, follow_symlinks=False)
        return 0

    # -- opening -----------------------------------------------------------------------
    def open(self, path: str, fi: Any) -> int:
        if not self._tuned:
            self._tuned = True
            if self.config.readahead_kb:
                tune_readahead(self._mountpoint, self.config.readahead_kb)
        flags = fi.flags
        writing = bool(flags & _WRITE_FLAGS)
        if writing:
            self._require_rw()
        real = self._real(path)
        open_flags = (flags & (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC)) | os.O_NOFOLLOW
        fd = os.open(real, open_flags | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _err(errno.EACCES)
            os.set_blocking(fd, True)
            key = (st.st_dev, st.st_ino)
            handle = (
                Handle(fd, key, path, writable=True)
                if writing
                else self._open_for_reading(fd, key, path, real)
            )
        except BaseException:
            os.close(fd)
            raise
        if writing:
            # Reads through a writable handle are not verified, so a protected file opened
            # for writing is no longer vouched for: STALE until it is signed again.
            self._mark_stale(fd, key, path)
        self._set_cache_flags(fi, key, st, writing)
        fi.fh = self._handles.add(handle)
        if self._on_open is not None:
            self._on_open(path, handle)
        return 0

    def _open_for_reading(self, fd: int, key: InodeKey, path: str, real: str) -> Handle:
        if self.config.unsafe_no_verify:
            return Handle(fd, key, path, writable=False)
        reader = self.config.reader
        try:
            fp = self._fingerprint(fd)
            if fp is None and reader.policy is None:
                return Handle(fd, key, path, writable=False)  # no policy: only protected files
            with self._lock:
                stale = self._stale.get(key)
                if stale is not None and stale != fp:
                    del self._stale[key]  # signed (or enabled) again since the write
                    stale = None
            if stale is not None:
                log.warning("'%s' was written since it was protected (STALE)", path)
                raise IntegrityError(f"'{path}' was written since it was protected (STALE)")
            uid, gid = (self._context()[:2]) if self._context is not None else (None, None)
            access = Access(os.path.join(self._mountpoint, path.lstrip("/")), uid, gid, real)
            raw = open_fd(fd, access, reader, closefd=False)
        except Error as e:
            enforcing = (
                reader.enforce if reader.policy is None else reader.policy.mode.value == "enforce"
            )
            if not enforcing:  # only STALE gets here: the reader serves other failures itself
                log.warning("'%s' served unverified (not enforced): %s", path, e)
                return Handle(fd, key, path, writable=False)
            raise _err(errno.EACCES) from e
        return Handle(fd, key, path, writable=False, verified=raw)

    def _set_cache_flags(self, fi: Any, key: InodeKey, st: os.stat_result, writing: bool) -> None:
        now = identity(st)
        with self._lock:
            before = self._seen.get(key)
            self._seen[key] = now
        if writing or self._handles.writers(key):
            fi.direct_io = 1
            fi.keep_cache = 0
        else:
            fi.keep_cache = int(self.config.keep_cache and before == now)

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._require_rw()
        flags = (fi.flags & (os.O_ACCMODE | os.O_APPEND)) | os.O_CREAT | os.O_EXCL
        fd = os.open(self._real(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        fi.direct_io = 1
        fi.fh = self._handles.add(Handle(fd, key, path, writable=True))
        return 0

    def release(self, path: str, fi: Any) -> int:
        del path
        handle = self._handles.remove(fi.fh)
        if handle is not None:
            handle.close()
        return 0

    # -- data --------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        del path
        return self._handles.get(fi.fh).read(size, offset)

    def read_into(self, buffer: memoryview, offset: int, fi: Any) -> int:
        """``read`` into libfuse's reply buffer (see :mod:`pyverity.fuse.mount`)."""
        return self._handles.get(fi.fh).read_into(buffer, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handles.get(fi.fh)
        if not handle.writable:
            raise _err(errno.EBADF)
        return os.pwrite(handle.fd, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._require_rw()
        if fh is not None:
            handle = self._handles.get(fh.fh)
            os.ftruncate(handle.fd, length)
            self._mark_stale(handle.fd, handle.key, path)
            return 0
        fd = os.open(self._real(path), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            os.ftruncate(fd, length)
            self._mark_stale(fd, (st.st_dev, st.st_ino), path)
        finally:
            os.close(fd)
        return 0

    def flush(self, path: str, fi: Any) -> int:
        del path, fi
        return 0

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        del path
        handle = self._handles.get(fi.fh)
        (os.fdatasync if datasync else os.fsync)(handle.fd)
        return 0

    # -- namespace changes (--rw only) -------------------------------------------------
    def unlink(self, path: str) -> int:
        self._require_rw()
        os.unlink(self._real(path))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._require_rw()
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        self._require_rw()
        os.rmdir(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._require_rw()
        os.rename(self._real(old), self._real(new))
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._require_rw()
        os.symlink(source, self._real(target))
        return 0

    def link(self, target: str, source: str) -> int:
        self._require_rw()
        os.link(self._real(source), self._real(target), follow_symlinks=False)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._require_rw()
        os.chmod(self._real(path), mode, follow_symlinks=False)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._require_rw()
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._require_rw()
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    # -- fs-verity ioctls --------------------------------------------------------------
    def ioctl(  # noqa: PLR0917 - mfusepy's signature
        self, path: str, cmd: int, arg: Any, fi: Any, flags: int, data: Any
    ) -> int:
        del arg, flags
        cmd &= 0xFFFFFFFF
        known = (FS_IOC_MEASURE_VERITY, FS_IOC_ENABLE_VERITY, *FS_IOC_GETFLAGS)
        if cmd not in known or not data:
            raise _err(errno.ENOTTY)
        handle = self._handles.get(fi.fh)
        if cmd in FS_IOC_GETFLAGS:  # what lsattr shows: 'V' for a file appraised with a tree
            write_flags(data, FS_VERITY_FL if handle.verified is not None else 0)
            return 0
        if cmd == FS_IOC_MEASURE_VERITY:
            if handle.verified is None:
                raise _err(errno.ENODATA)  # not appraised: no digest is enforced for it
            write_measure(data, handle.verified.descriptor)
            return 0
        self._enable(handle, path, data)
        return 0

    def _enable(self, handle: Handle, path: str, data: int) -> None:
        request = parse_enable(data)
        st = os.fstat(handle.fd)
        if not self._may_write(st):
            raise _err(errno.EACCES)
        self._require_rw()
        if self._handles.writers(handle.key):
            raise _err(errno.ETXTBSY)
        name = attr_name(self._ns, VERITY_SUFFIX)
        if get_attr(handle.fd, name) is not None:
            raise _err(errno.EEXIST)
        try:
            tree = build_tree(handle.fd, request.params, keep_tree=False)
        except FileChangedError as e:
            raise _err(errno.ETXTBSY) from e
        if request.signature:
            check_builtin_signature(
                path, request.signature, tree.descriptor, self.config.reader.keyring
            )
        set_attr(handle.fd, name, tree.descriptor.to_bytes())
        log.info("enabled protection of '%s': %s", path, tree.file_digest())

    def _may_write(self, st: os.stat_result) -> bool:
        if self._context is None:
            return True
        uid, gid, _ = self._context()
        if uid == 0:
            return True
        if uid == st.st_uid:
            return bool(st.st_mode & stat.S_IWUSR)
        if gid == st.st_gid:
            return bool(st.st_mode & stat.S_IWGRP)
        return bool(st.st_mode & stat.S_IWOTH)

    # -- lifecycle ---------------------------------------------------------------------
    def destroy(self, path: str) -> None:
        del path
        self._handles.close_all()
