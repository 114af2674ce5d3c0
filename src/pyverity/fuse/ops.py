# ruff: noqa: PTH101, PTH118, PTH208
# (a syscall-for-syscall adapter over the source directory: the os.* calls mirror the requests)
"""The filesystem: every open appraised, every read verified, writes passed through on ``--rw``.

A thin adapter (DESIGN.md §9): appraisal and verification are :mod:`pyverity.reader`'s; this
module resolves paths beneath the source directory's descriptor without following symlinks
(:mod:`pyverity.fs.beneath`) and checks the caller against what it resolved
(:mod:`pyverity.fs.access`; the kernel's ``default_permissions`` check, made on cached
attributes, is never the only one), keeps the open handles, decides what the kernel may
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pyverity.errors import Error, FileChangedError
from pyverity.format.merkletree import MerkleTree
from pyverity.fs.access import (
    Credentials,
    acting_as,
    check_access,
    may_chown,
    may_delete,
    may_set_times,
    owner_or_capable,
    xattr_denied,
)
from pyverity.fs.beneath import components, open_at, open_parent, proc_path, reopen
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
    kernel_forwards_verity,
    parse_enable,
    write_flags,
    write_measure,
)
from pyverity.hashing.api import build_tree
from pyverity.protect.attrs import fingerprint
from pyverity.reader.api import open_fd
from pyverity.reader.opening import VerityOpenError
from pyverity.reader.options import Access, CachedEntry, TreeProvider

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
        kernel_release: str | None = None,
    ) -> None:
        """``kernel_release``: the kernel whose FUSE serves the mount (default: the running
        one); before 6.10 it cannot pass the fs-verity ioctls' arguments (ENOTTY here)."""
        self.config = config
        self._source = os.fspath(config.source)
        #: Every path served is resolved beneath this descriptor (pyverity.fs.beneath).
        self._root_fd = os.open(self._source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
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
        self._verity_ioctls = kernel_forwards_verity(kernel_release)

    # -- helpers -----------------------------------------------------------------------
    def _real(self, path: str) -> str:
        """The backing file's path, as text for logs and the daemon (never opened here)."""
        return os.path.join(self._source, path.lstrip("/"))

    # -- resolution beneath the source, and the caller's permissions ---------------------
    def _cred(self) -> Credentials | None:
        """The caller of the current request (None without a context: tests, no checks)."""
        if self._context is None:
            return None
        uid, gid, pid = self._context()
        return Credentials.of_process(uid, gid, pid)

    @staticmethod
    def _require(st: os.stat_result, cred: Credentials | None, mask: int) -> None:
        if cred is not None and not check_access(st, cred, mask):
            raise _err(errno.EACCES)

    @contextlib.contextmanager
    def _parent(self, path: str, cred: Credentials | None) -> Iterator[tuple[int, str]]:
        """``(O_PATH fd of the directory holding the last component, its name)`` (``"."``
        for the root), walked beneath the source without following symlinks, with search
        permission checked on every directory passed through."""

        def search(st: os.stat_result) -> None:
            self._require(st, cred, os.X_OK)

        parts = components(path.lstrip("/"))
        dfd = open_parent(self._root_fd, parts, search if cred is not None else None)
        try:
            yield dfd, parts[-1] if parts else "."
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _object(
        self, path: str, cred: Credentials | None, flags: int = os.O_PATH
    ) -> Iterator[tuple[int, os.stat_result]]:
        """The object at ``path`` opened with ``flags`` (a final symlink: itself, with
        ``O_PATH``) and its ``fstat``: checks then apply to what was actually opened."""
        with self._parent(path, cred) as (dfd, name):
            fd = open_at(dfd, name, flags)
        try:
            yield fd, os.fstat(fd)
        finally:
            os.close(fd)

    def _open_checked(self, path: str, flags: int, cred: Credentials | None) -> int:
        """Open the regular file at ``path`` with ``flags`` once the caller may."""
        with self._object(path, cred) as (pfd, st):
            if not stat.S_ISREG(st.st_mode):
                raise _err(errno.EACCES)
            mode = flags & os.O_ACCMODE
            mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(mode, os.R_OK | os.W_OK)
            self._require(st, cred, mask | (os.W_OK if flags & os.O_TRUNC else 0))
            return reopen(pfd, flags | os.O_NONBLOCK)

    @contextlib.contextmanager
    def _creating(self, dfd: int, name: str, cred: Credentials | None) -> Iterator[None]:
        """Create ``name`` in ``dfd`` as the caller: under its filesystem ids where this
        thread can take them (the object is the caller's from the start), else as the server
        and then given the caller's uid (and gid, unless the directory is setgid)."""
        self._require(os.fstat(dfd), cred, os.W_OK | os.X_OK)
        with acting_as(cred) as switched:
            yield
        if cred is not None and not switched and os.geteuid() == 0:
            gid = -1 if os.fstat(dfd).st_mode & stat.S_ISGID else cred.gid
            os.chown(name, cred.uid, gid, dir_fd=dfd, follow_symlinks=False)

    def _deletable(self, dfd: int, name: str, cred: Credentials | None) -> os.stat_result:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if cred is not None and not may_delete(os.fstat(dfd), st, cred):
            raise _err(errno.EACCES)
        return st

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
        with self._parent(path, self._cred()) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        attrs = {k: getattr(st, k) for k in _STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        del fh
        cred = self._cred()
        with self._object(path, cred, os.O_RDONLY | os.O_DIRECTORY) as (fd, st):
            self._require(st, cred, os.R_OK)
            return [".", "..", *os.listdir(fd)]

    def readlink(self, path: str) -> str:
        with self._object(path, self._cred()) as (fd, st):
            if not stat.S_ISLNK(st.st_mode):
                raise _err(errno.EINVAL)
            return os.readlink("", dir_fd=fd)

    def statfs(self, path: str) -> dict[str, int]:
        with self._object(path, self._cred()) as (fd, _):
            sv = os.statvfs(fd)
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {k: getattr(sv, k) for k in (*keys, "f_flag", "f_frsize", "f_namemax")}

    @contextlib.contextmanager
    def _xattr_checked(self, path: str, name: str, *, write: bool) -> Iterator[int]:
        cred = self._cred()
        with self._object(path, cred) as (fd, st):
            code = xattr_denied(st, cred, name, write=write) if cred is not None else 0
            if code:
                raise _err(code)
            yield fd

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        del position
        with self._xattr_checked(path, name, write=False) as fd:
            try:
                return os.getxattr(proc_path(fd), name)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    raise _err(errno.ENODATA) from None
                raise

    def listxattr(self, path: str) -> list[str]:
        cred = self._cred()
        with self._object(path, cred) as (fd, st):
            names = os.listxattr(proc_path(fd))
        if cred is None:
            return names
        return [
            n
            for n in names
            if not n.startswith("trusted.") or not xattr_denied(st, cred, n, write=False)
        ]

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        del position
        self._require_rw()
        with self._xattr_checked(path, name, write=True) as fd:
            os.setxattr(proc_path(fd), name, value, options)
        return 0

    def removexattr(self, path: str, name: str) -> int:
        self._require_rw()
        with self._xattr_checked(path, name, write=True) as fd:
            os.removexattr(proc_path(fd), name)
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
        open_flags = flags & (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC)
        fd = self._open_checked(path, open_flags, self._cred())
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
            uid, gid = (self._context()[:2]) if self._context is not None else (None, None)
            mounted = os.path.join(self._mountpoint, path.lstrip("/"))
            access = Access(mounted, uid, gid, real, stale=self._still_stale(key, fp))
            # The reader decides everything: fs-verity for every file with a descriptor or a
            # v3 signature, then the policy's appraisal (enforced or only logged).
            raw = open_fd(fd, access, reader, closefd=False)
        except VerityOpenError as e:
            log.warning("'%s' refused by fs-verity (EIO): %s", path, e)
            raise _err(errno.EIO) from e
        except Error as e:
            raise _err(errno.EACCES) from e
        return Handle(fd, key, path, writable=False, verified=raw)

    def _still_stale(self, key: InodeKey, fp: bytes | None) -> bool:
        """Written through the mount, and its attributes not written again since."""
        with self._lock:
            stale = self._stale.get(key)
            if stale is not None and stale != fp:
                del self._stale[key]  # signed (or enabled) again since the write
                return False
            return stale is not None

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
        cred = self._cred()
        with self._parent(path, cred) as (dfd, name), self._creating(dfd, name, cred):
            fd = open_at(dfd, name, flags, mode)
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
        fd = self._open_checked(path, os.O_WRONLY, self._cred())
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
    # Each resolves beneath the source and checks the caller as the kernel would: write and
    # search on the directory changed, the sticky bit, ownership for chmod/chown/utimens.
    def unlink(self, path: str) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(path, cred) as (dfd, name):
            self._deletable(dfd, name, cred)
            with acting_as(cred):  # the kernel checks again, as the caller, at the change
                os.unlink(name, dir_fd=dfd)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(path, cred) as (dfd, name), self._creating(dfd, name, cred):
            os.mkdir(name, mode, dir_fd=dfd)
        return 0

    def rmdir(self, path: str) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(path, cred) as (dfd, name):
            self._deletable(dfd, name, cred)
            with acting_as(cred):
                os.rmdir(name, dir_fd=dfd)
        return 0

    def rename(self, old: str, new: str) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(old, cred) as (odfd, oname), self._parent(new, cred) as (ndfd, nname):
            st = self._deletable(odfd, oname, cred)
            self._require(os.fstat(ndfd), cred, os.W_OK | os.X_OK)
            with contextlib.suppress(FileNotFoundError):
                self._deletable(ndfd, nname, cred)
            if stat.S_ISDIR(st.st_mode) and not os.path.samestat(os.fstat(odfd), os.fstat(ndfd)):
                self._require(st, cred, os.W_OK)  # its ".." changes
            with acting_as(cred):
                os.rename(oname, nname, src_dir_fd=odfd, dst_dir_fd=ndfd)
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(target, cred) as (dfd, name), self._creating(dfd, name, cred):
            os.symlink(source, name, dir_fd=dfd)
        return 0

    def link(self, target: str, source: str) -> int:
        self._require_rw()
        cred = self._cred()
        with self._parent(source, cred) as (sdfd, sname), self._parent(target, cred) as pair:
            tdfd, tname = pair
            self._require(os.fstat(tdfd), cred, os.W_OK | os.X_OK)
            st = os.stat(sname, dir_fd=sdfd, follow_symlinks=False)
            if cred is not None and not owner_or_capable(st, cred):  # fs.protected_hardlinks
                if not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_ISUID:
                    raise _err(errno.EPERM)
                if not check_access(st, cred, os.R_OK | os.W_OK):
                    raise _err(errno.EPERM)
            with acting_as(cred):
                os.link(sname, tname, src_dir_fd=sdfd, dst_dir_fd=tdfd, follow_symlinks=False)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._require_rw()
        cred = self._cred()
        with self._object(path, cred) as (fd, st):
            if cred is not None and not owner_or_capable(st, cred):
                raise _err(errno.EPERM)
            os.chmod(proc_path(fd), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._require_rw()
        cred = self._cred()
        with self._object(path, cred) as (fd, st):
            if cred is not None and not may_chown(st, cred, uid, gid):
                raise _err(errno.EPERM)
            os.chown(proc_path(fd), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._require_rw()
        cred = self._cred()
        with self._object(path, cred) as (fd, st):
            if cred is not None and not may_set_times(st, cred, explicit=times is not None):
                raise _err(errno.EPERM if times is not None else errno.EACCES)
            if times is None:
                os.utime(proc_path(fd))
            else:
                os.utime(proc_path(fd), ns=times)
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
        # A file with a descriptor or a v3 signature is verified whatever the policy says, so it
        # answers as a verity file does ('V' in lsattr, its digest); others (no protection, a
        # classic IMA value, or --unsafe-no-verify) as a file without fs-verity.
        verified = handle.verified
        verity = verified if verified is not None and verified.fs_verity else None
        if cmd in FS_IOC_GETFLAGS:
            write_flags(data, FS_VERITY_FL if verity is not None else 0)
            return 0
        if not self._verity_ioctls:
            # The kernel passed only the fixed-size structure: no room for a digest, no salt.
            log.info("'%s': this kernel's FUSE cannot pass fs-verity ioctls (Linux 6.10+)", path)
            raise _err(errno.ENOTTY)
        if cmd == FS_IOC_MEASURE_VERITY:
            if verity is None:
                raise _err(errno.ENODATA)  # no fs-verity digest is enforced for it
            write_measure(data, verity.descriptor)
            return 0
        self._enable(handle, path, data)
        return 0

    def _enable(self, handle: Handle, path: str, data: int) -> None:
        request = parse_enable(data)
        st = os.fstat(handle.fd)
        self._require(st, self._cred(), os.W_OK)
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

    # -- lifecycle ---------------------------------------------------------------------
    def destroy(self, path: str) -> None:
        del path
        self._handles.close_all()
        with contextlib.suppress(OSError):
            os.close(self._root_fd)
