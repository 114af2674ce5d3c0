"""A minimal inotify binding through ``ctypes`` (no third-party module).

Only what the watcher needs: a non-blocking instance, adding and removing directory watches,
and parsing the event records read from the descriptor. :class:`InotifyWatch` is the
:class:`pyverity.fs.watch.Watch` over it: a watch on every directory, paths by watch descriptor.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pyverity.errors import StorageError
from pyverity.fs.libc import libc
from pyverity.fs.watch import CHANGES, Change, Fsnotify, WatchEvent

__all__ = ["Event", "Inotify", "InotifyWatch", "Mask", "parse_events"]

log = logging.getLogger(__name__)


class Mask(Fsnotify):
    """The ``IN_*`` constants of ``<sys/inotify.h>`` (the event bits are :class:`Fsnotify`'s)."""

    ACCESS = 0x00000001
    UNMOUNT = 0x00002000
    IGNORED = 0x00008000
    ONLYDIR = 0x01000000
    DONT_FOLLOW = 0x02000000
    EXCL_UNLINK = 0x04000000
    ISDIR = 0x40000000
    NONBLOCK = os.O_NONBLOCK
    CLOEXEC = os.O_CLOEXEC

    #: What the daemon watches on every directory under its roots.
    DIRECTORY = (
        Fsnotify.ATTRIB
        | Fsnotify.MODIFY
        | Fsnotify.CLOSE_WRITE
        | Fsnotify.MOVED_FROM
        | Fsnotify.MOVED_TO
        | Fsnotify.CREATE
        | Fsnotify.DELETE
        | Fsnotify.DELETE_SELF
        | Fsnotify.MOVE_SELF
        | ONLYDIR
        | DONT_FOLLOW
        | EXCL_UNLINK
    )


_HEADER = struct.Struct("iIII")


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: bytes

    def has(self, bits: int) -> bool:
        return bool(self.mask & bits)


class Inotify:
    """One inotify instance; :attr:`fd` goes into the daemon's selector."""

    def __init__(self) -> None:
        self._libc = libc()
        fd = self._libc.inotify_init1(Mask.NONBLOCK | Mask.CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise StorageError(f"inotify_init1 failed: {os.strerror(e)}")
        self.fd: int = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def add_watch(self, path: str, mask: int = Mask.DIRECTORY) -> int | None:
        """The watch descriptor, or None if ``path`` vanished or is not a directory."""
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            e = ctypes.get_errno()
            if e in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                return None
            if e == errno.ENOSPC:
                raise StorageError(
                    "inotify watch limit reached",
                    remedy="raise fs.inotify.max_user_watches (sysctl)",
                )
            raise StorageError(f"inotify_add_watch({path}) failed: {os.strerror(e)}")
        return wd

    def rm_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> Iterator[Event]:
        """Events available now (none if nothing is pending)."""
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            yield from parse_events(buf)


def parse_events(buf: bytes) -> Iterator[Event]:
    off = 0
    while off + _HEADER.size <= len(buf):
        wd, mask, cookie, length = _HEADER.unpack_from(buf, off)
        off += _HEADER.size
        name = buf[off : off + length].split(b"\0", 1)[0]
        off += length
        yield Event(wd, mask, cookie, name)


class InotifyWatch:
    """:class:`pyverity.fs.watch.Watch` with one inotify watch on each directory walked."""

    def __init__(self) -> None:
        self._ino = Inotify()
        self._dirs: dict[int, str] = {}
        self._wds: dict[str, int] = {}

    @property
    def fd(self) -> int:
        return self._ino.fd

    @property
    def watch_count(self) -> int:
        return len(self._dirs)

    def add_root(self, root: str) -> None:
        """Nothing: the walk of ``root`` calls :meth:`watch_dir` on every directory."""

    def watch_dir(self, path: str) -> bool:
        wd = self._ino.add_watch(path)
        if wd is None:
            return False
        old = self._dirs.get(wd)
        if old is not None and old != path:
            self._wds.pop(old, None)
        self._dirs[wd] = path
        self._wds[path] = wd
        return True

    def forget_under(self, path: str) -> None:
        sub = path.rstrip(os.sep) + os.sep
        for p in [p for p in self._wds if p == path or p.startswith(sub)]:
            wd = self._wds.pop(p)
            self._dirs.pop(wd, None)
            self._ino.rm_watch(wd)

    def read(self) -> Iterator[WatchEvent]:
        for ev in self._ino.read():
            yield from self.translate(ev)

    def translate(self, ev: Event) -> Iterator[WatchEvent]:
        if ev.has(Mask.Q_OVERFLOW):
            log.warning("inotify queue overflowed: rescanning")
            yield WatchEvent(Change.OVERFLOW, "")
            return
        if ev.has(Mask.IGNORED):
            path = self._dirs.pop(ev.wd, None)
            if path is not None and self._wds.get(path) == ev.wd:
                del self._wds[path]
            return
        base = self._dirs.get(ev.wd)
        if base is None or ev.has(Mask.DELETE_SELF | Mask.MOVE_SELF) or not ev.name:
            return
        path = f"{base.rstrip(os.sep)}{os.sep}{os.fsdecode(ev.name)}"
        is_dir = ev.has(Mask.ISDIR)
        for bit, change in CHANGES:
            if ev.has(bit):
                cookie = ev.cookie if bit & (Mask.MOVED_FROM | Mask.MOVED_TO) else 0
                yield WatchEvent(change, path, is_dir, cookie)

    def close(self) -> None:
        self._ino.close()
