"""fanotify through ``ctypes``: one ``FAN_MARK_FILESYSTEM`` mark instead of a watch per directory.

The group is ``FAN_CLASS_NOTIF`` with ``FAN_REPORT_DFID_NAME`` (Linux >= 5.9): an event carries
no open descriptor, but the file handle of the directory and the name of the entry. The handle
is turned into a path with ``open_by_handle_at(O_PATH)`` and ``/proc/self/fd``, cached per
handle. A mark covers the whole filesystem, so events from outside the daemon's roots arrive
too: :func:`pyverity.fs.watch.filter_to_roots` drops them. Needs CAP_SYS_ADMIN (and
CAP_DAC_READ_SEARCH for the handles).

- :func:`parse_events`: the bytes read from the group -> :class:`FanotifyEvent` (the
  ``struct fanotify_event_metadata`` and its info records); strict and bounded, any
  inconsistency is a :class:`~pyverity.errors.FormatError`;
- :class:`Fanotify`: ``fanotify_init``, ``fanotify_mark``, reading; a failure is a
  :class:`FanotifyError` carrying ``errno``, whose :attr:`~FanotifyError.can_fall_back` tells
  the daemon's ``auto`` to use inotify instead (EXDEV on a btrfs subvolume, EOPNOTSUPP,
  ENODEV, EPERM, EINVAL or ENOSYS on old kernels);
- :class:`FanotifyWatch`: the :class:`pyverity.fs.watch.Watch` over it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import stat
import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyverity.errors import FormatError, StorageError
from pyverity.fs.libc import libc
from pyverity.fs.watch import CHANGES, Change, Fsnotify, WatchEvent

__all__ = [
    "DAEMON_MASK",
    "FALLBACK_ERRNOS",
    "Fan",
    "Fanotify",
    "FanotifyError",
    "FanotifyEvent",
    "FanotifyEventInfoFid",
    "FanotifyEventMetadata",
    "FanotifyWatch",
    "FileHandle",
    "parse_events",
]

log = logging.getLogger(__name__)


class Fan(Fsnotify):
    """The ``FAN_*`` constants of ``<linux/fanotify.h>`` that are used here (the event bits
    shared with inotify are :class:`Fsnotify`'s)."""

    # events
    EVENT_ON_CHILD = 0x08000000
    RENAME = 0x10000000  # Linux >= 5.17: one event with the old and the new name
    ONDIR = 0x40000000
    # fanotify_init flags
    CLOEXEC = 0x00000001
    NONBLOCK = 0x00000002
    CLASS_NOTIF = 0x00000000
    REPORT_FID = 0x00000200
    REPORT_DIR_FID = 0x00000400
    REPORT_NAME = 0x00000800
    REPORT_DFID_NAME = REPORT_DIR_FID | REPORT_NAME
    # fanotify_mark flags
    MARK_ADD = 0x00000001
    MARK_FILESYSTEM = 0x00000100
    # records
    METADATA_VERSION = 3
    NOFD = -1
    INFO_TYPE_FID = 1
    INFO_TYPE_DFID_NAME = 2
    INFO_TYPE_DFID = 3
    INFO_TYPE_OLD_DFID_NAME = 10
    INFO_TYPE_NEW_DFID_NAME = 12


#: What the daemon needs on a filesystem mark. DELETE_SELF and MOVE_SELF are left out: every
#: entry below a root is reported by its parent's DELETE or RENAME, and EVENT_ON_CHILD is
#: implied by a filesystem mark. Without FAN_RENAME (before 5.17), MOVED_FROM | MOVED_TO.
DAEMON_MASK = Fan.MODIFY | Fan.CLOSE_WRITE | Fan.ATTRIB | Fan.CREATE | Fan.DELETE | Fan.RENAME
DAEMON_MASK_OLD = DAEMON_MASK & ~Fan.RENAME | Fan.MOVED_FROM | Fan.MOVED_TO
DEFAULT_INIT = Fan.CLASS_NOTIF | Fan.CLOEXEC | Fan.NONBLOCK | Fan.REPORT_DFID_NAME

#: Errors on which a caller may use inotify instead: EXDEV (a btrfs subvolume, whose fsid is not
#: its filesystem's), EOPNOTSUPP/ENODEV (no file handles or no fsid), EPERM (no CAP_SYS_ADMIN),
#: EINVAL/ENOSYS (a kernel without FAN_REPORT_DFID_NAME or fanotify).
FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EOPNOTSUPP, errno.ENODEV, errno.EPERM, errno.EINVAL, errno.ENOSYS}
)
MAX_HANDLE_SZ = 128  # <linux/exportfs.h>
NAME_MAX = 255
READ_SIZE = 1 << 16

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len
_FSID = struct.Struct("=ii")
_HANDLE = struct.Struct("=Ii")  # handle_bytes, handle_type
_FID_TYPES = {
    Fan.INFO_TYPE_FID,
    Fan.INFO_TYPE_DFID,
    Fan.INFO_TYPE_DFID_NAME,
    Fan.INFO_TYPE_OLD_DFID_NAME,
    Fan.INFO_TYPE_NEW_DFID_NAME,
}
_NAMED_TYPES = {Fan.INFO_TYPE_DFID_NAME, Fan.INFO_TYPE_OLD_DFID_NAME, Fan.INFO_TYPE_NEW_DFID_NAME}


class FanotifyError(StorageError):
    """``fanotify_init`` or ``fanotify_mark`` failed; :attr:`errno` says why."""

    def __init__(self, call: str, err: int, *, remedy: str | None = None) -> None:
        super().__init__(f"{call} failed: {os.strerror(err)}", remedy=remedy)
        self.call = call
        self.errno = err

    @property
    def can_fall_back(self) -> bool:
        """The filesystem or the kernel cannot do this: inotify can still watch it."""
        return self.errno in FALLBACK_ERRNOS


@dataclass(frozen=True)
class FanotifyEventMetadata:
    """``struct fanotify_event_metadata``."""

    event_len: int
    vers: int
    metadata_len: int
    mask: int
    fd: int
    pid: int

    def has(self, bits: int) -> bool:
        return bool(self.mask & bits)


@dataclass(frozen=True)
class FileHandle:
    """``struct file_handle``: what ``open_by_handle_at`` takes."""

    handle_bytes: int
    handle_type: int
    f_handle: bytes

    def to_bytes(self) -> bytes:
        return _HANDLE.pack(self.handle_bytes, self.handle_type) + self.f_handle


@dataclass(frozen=True)
class FanotifyEventInfoFid:
    """``struct fanotify_event_info_fid`` (a FID, DFID or *DFID_NAME record)."""

    info_type: int
    fsid: tuple[int, int]
    handle: FileHandle
    #: The entry's name for the *DFID_NAME types (``b"."`` for the directory itself).
    name: bytes | None

    @property
    def fsid_key(self) -> int:
        """The fsid as ``statvfs`` reports it (``val[0] | val[1] << 32``)."""
        return (self.fsid[0] & 0xFFFFFFFF) | (self.fsid[1] & 0xFFFFFFFF) << 32


@dataclass(frozen=True)
class FanotifyEvent:
    metadata: FanotifyEventMetadata
    info: tuple[FanotifyEventInfoFid, ...]

    def record(self, info_type: int) -> FanotifyEventInfoFid | None:
        return next((r for r in self.info if r.info_type == info_type), None)


def parse_events(buf: bytes, skip_pids: Container[int] = ()) -> Iterator[FanotifyEvent]:
    """The events in ``buf``, each checked against its own lengths and against ``buf``'s.

    Events caused by the processes ``skip_pids`` (thread group ids, as fanotify reports them)
    are skipped before their records are decoded (their descriptor, if any, still closed).
    """
    off = 0
    while off < len(buf):
        if len(buf) - off < _METADATA.size:
            raise FormatError(f"fanotify: {len(buf) - off} bytes left, less than a header")
        event_len, vers, _, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, off)
        if vers != Fan.METADATA_VERSION:
            raise FormatError(f"fanotify: metadata version {vers}, expected 3")
        if not _METADATA.size <= meta_len <= event_len <= len(buf) - off:
            raise FormatError(f"fanotify: bad lengths (event {event_len}, metadata {meta_len})")
        if pid in skip_pids:
            if fd >= 0:
                os.close(fd)
            off += event_len
            continue
        meta = FanotifyEventMetadata(event_len, vers, meta_len, mask, fd, pid)
        yield FanotifyEvent(meta, tuple(_parse_info(buf[off + meta_len : off + event_len])))
        off += event_len


def _parse_info(buf: bytes) -> Iterator[FanotifyEventInfoFid]:
    off = 0
    while off < len(buf):
        if len(buf) - off < _INFO_HEADER.size:
            raise FormatError("fanotify: info record header cut short")
        info_type, _, length = _INFO_HEADER.unpack_from(buf, off)
        if not _INFO_HEADER.size <= length <= len(buf) - off:
            raise FormatError(f"fanotify: info record length {length}")
        if info_type in _FID_TYPES:
            yield _parse_fid(info_type, buf[off + _INFO_HEADER.size : off + length])
        off += length  # other records (pidfd, error, range) are skipped


def _parse_fid(info_type: int, rec: bytes) -> FanotifyEventInfoFid:
    fixed = _FSID.size + _HANDLE.size
    if len(rec) < fixed:
        raise FormatError("fanotify: fid record cut short")
    fsid = _FSID.unpack_from(rec, 0)
    nbytes, htype = _HANDLE.unpack_from(rec, _FSID.size)
    if not 0 < nbytes <= MAX_HANDLE_SZ or fixed + nbytes > len(rec):
        raise FormatError(f"fanotify: file handle of {nbytes} bytes")
    handle = FileHandle(nbytes, htype, rec[fixed : fixed + nbytes])
    name = None
    tail = rec[fixed + nbytes :]
    if info_type in _NAMED_TYPES:
        end = tail.find(b"\0")
        name = tail[:end]
        if end < 1 or end > NAME_MAX or b"/" in name or name == b"..":
            raise FormatError(f"fanotify: bad entry name {tail[: NAME_MAX + 1]!r}")
    return FanotifyEventInfoFid(info_type, fsid, handle, name)


@functools.cache
def _call(name: str) -> ctypes._NamedFuncPointer:
    fn: ctypes._NamedFuncPointer = getattr(libc(), name)
    if name == "fanotify_mark":
        fn.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    elif name == "fanotify_init":
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint]
    else:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class Fanotify:
    """One notification group; :attr:`fd` is readable when events are queued."""

    def __init__(self, flags: int = DEFAULT_INIT) -> None:
        fd: int = _call("fanotify_init")(flags, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise FanotifyError("fanotify_init", err, remedy=_remedy(err))
        self.fd = fd

    def mark(self, path: str, mask: int, flags: int = Fan.MARK_ADD | Fan.MARK_FILESYSTEM) -> None:
        at_fdcwd = -100
        r = _call("fanotify_mark")(self.fd, flags, mask | Fan.ONDIR, at_fdcwd, os.fsencode(path))
        if r < 0:
            err = ctypes.get_errno()
            raise FanotifyError(f"fanotify_mark({path})", err, remedy=_remedy(err))

    def read(self, skip_pids: Container[int] = ()) -> Iterator[FanotifyEvent]:
        """Parsed events available now (none of the processes ``skip_pids``); any descriptor
        an event carries is closed."""
        while True:
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            try:
                for ev in parse_events(buf, skip_pids):
                    if ev.metadata.fd >= 0:
                        os.close(ev.metadata.fd)
                    yield ev
            except FormatError:
                _close_fds(buf)
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _close_fds(buf: bytes) -> None:
    """After a parse error: close what descriptors can still be found (none in FID groups)."""
    off = 0
    while len(buf) - off >= _METADATA.size:
        event_len, *_, fd, _ = _METADATA.unpack_from(buf, off)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if event_len < _METADATA.size:
            return
        off += event_len


def _remedy(err: int) -> str | None:
    if err == errno.EPERM:
        return "fanotify needs CAP_SYS_ADMIN; use --watcher inotify"
    if err in FALLBACK_ERRNOS:
        return "this kernel or filesystem cannot do it; use --watcher inotify"
    return None


class HandleResolver:
    """Directory file handles -> current paths, through a descriptor on each filesystem."""

    def __init__(self, limit: int = 4096) -> None:
        self._mounts: dict[int, int] = {}
        self._cache: dict[tuple[int, bytes], str] = {}
        self._limit = limit

    def add_mount(self, fsid: int, fd: int) -> None:
        self._mounts.setdefault(fsid, fd)

    def has_mount(self, fsid: int) -> bool:
        return fsid in self._mounts

    @property
    def mounts(self) -> int:
        return len(self._mounts)

    def invalidate(self, under: str | None = None) -> None:
        """A directory moved or went away: cached paths at or beneath ``under`` may be wrong
        (None: any cached path). Only those are dropped: on a busy filesystem directories of
        others come and go all the time, and each miss costs an ``open_by_handle_at``."""
        if under is None:
            self._cache.clear()
            return
        prefix = under.rstrip(os.sep) + os.sep
        for key in [k for k, p in self._cache.items() if p == under or p.startswith(prefix)]:
            del self._cache[key]

    def path(self, rec: FanotifyEventInfoFid) -> str | None:
        """The directory's path now; None if it was deleted or is on an unknown filesystem.

        Other failures (out of descriptors, memory) raise :class:`OSError`.
        """
        key = (rec.fsid_key, rec.handle.to_bytes())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        mount = self._mounts.get(rec.fsid_key)
        if mount is None:
            return None
        fn = _call("open_by_handle_at")
        fd: int = fn(mount, key[1], os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ESTALE, errno.ENOENT):
                return None
            raise OSError(err, os.strerror(err), "open_by_handle_at")
        try:
            if os.fstat(fd).st_nlink == 0:
                return None  # deleted (readlink would say "... (deleted)")
            path = str(Path(f"/proc/self/fd/{fd}").readlink())
        finally:
            os.close(fd)
        if not path.startswith(os.sep):
            return None  # not reachable from our root
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[key] = path
        return path

    def close(self) -> None:
        for fd in self._mounts.values():
            os.close(fd)
        self._mounts.clear()
        self._cache.clear()


class FanotifyWatch:
    """:class:`pyverity.fs.watch.Watch` over one group with a mark on each root's filesystem.

    Paths are resolved when the events are read, not when they happened: an event queued before
    a directory was renamed may name its new place. Events of the whole filesystem are yielded;
    pass them through :func:`pyverity.fs.watch.filter_to_roots`.
    """

    def __init__(self, *, ignore_pids: Container[int] = ()) -> None:
        """``ignore_pids``: processes whose own changes are not reported (the daemon's and its
        workers' writes to its state and cache, which it never protects, are as many events as
        it handles); a set the caller may change later (workers are replaced)."""
        self._fan = Fanotify()
        self._ignore_pids = ignore_pids
        self._res = HandleResolver()
        self._mask = DAEMON_MASK
        self._renames = 0

    @property
    def fd(self) -> int:
        return self._fan.fd

    @property
    def watch_count(self) -> int:
        return self._res.mounts

    def add_root(self, root: str) -> None:
        fsid = os.statvfs(root).f_fsid
        if self._res.has_mount(fsid):
            return
        try:
            self._fan.mark(root, self._mask)
        except FanotifyError as e:
            if e.errno != errno.EINVAL or not self._mask & Fan.RENAME:
                raise
            self._mask = DAEMON_MASK_OLD  # a kernel before FAN_RENAME (5.17)
            self._fan.mark(root, self._mask)
        self._res.add_mount(fsid, os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def watch_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return False

    def forget_under(self, path: str) -> None:
        self._res.invalidate()

    def read(self) -> Iterator[WatchEvent]:
        for ev in self._fan.read(self._ignore_pids):
            yield from self.translate(ev)

    def translate(self, ev: FanotifyEvent) -> Iterator[WatchEvent]:
        """The :class:`WatchEvent` s of one fanotify event (several bits may be merged)."""
        m = ev.metadata
        if m.has(Fan.Q_OVERFLOW):
            log.warning("fanotify queue overflowed: rescanning")
            yield WatchEvent(Change.OVERFLOW, "")
            return
        is_dir = m.has(Fan.ONDIR)
        dir_gone = is_dir and m.has(Fan.RENAME | Fan.MOVED_FROM | Fan.DELETE)
        try:
            if m.has(Fan.RENAME):
                self._renames += 1
                old = self._path(ev.record(Fan.INFO_TYPE_OLD_DFID_NAME))
                new = self._path(ev.record(Fan.INFO_TYPE_NEW_DFID_NAME))
                if dir_gone:
                    self._res.invalidate(old)  # None (unknown): everything
                    self._res.invalidate(new)  # an empty directory renamed over
                if old is not None:
                    yield WatchEvent(Change.MOVED_FROM, old, is_dir, self._renames)
                if new is not None:
                    yield WatchEvent(Change.MOVED_TO, new, is_dir, self._renames)
                return
            path = self._path(ev.record(Fan.INFO_TYPE_DFID_NAME) or ev.record(Fan.INFO_TYPE_DFID))
        except OSError as e:
            log.warning("fanotify: cannot resolve a directory handle (%s): rescanning", e)
            yield WatchEvent(Change.OVERFLOW, "")
            return
        if dir_gone:
            self._res.invalidate(path)
        if path is None:
            return  # its directory is gone, and so is everything that was in it
        for bit, change in CHANGES:  # merged bits: removals first
            if m.has(bit):
                yield WatchEvent(change, path, is_dir)

    def _path(self, rec: FanotifyEventInfoFid | None) -> str | None:
        if rec is None:
            return None
        base = self._res.path(rec)
        if base is None or rec.name in (None, b"."):
            return base
        return f"{base.rstrip(os.sep)}{os.sep}{os.fsdecode(rec.name)}"

    def close(self) -> None:
        self._fan.close()
        self._res.close()
