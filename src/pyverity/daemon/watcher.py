"""Watching every directory under the roots, turning inotify records into file events.

New directories are watched as they appear (and scanned, since files may be created in them
before the watch exists). Symbolic links are never followed: directories are walked through
descriptors (:mod:`pyverity.fs.beneath`) and watched with ``IN_DONT_FOLLOW``. A queue overflow
is reported as one :attr:`Change.OVERFLOW` event, on which the daemon rescans everything.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from pyverity.fs import beneath
from pyverity.fs.inotify import Event, Inotify, Mask

__all__ = ["Change", "FileEvent", "Watcher", "open_beneath", "walk_files"]

log = logging.getLogger(__name__)


class Change(enum.Enum):
    ATTR = "attr"  # IN_ATTRIB: chmod, touch, or an attribute written
    WRITE = "write"  # IN_MODIFY: content written or truncated
    CLOSE_WRITE = "close_write"  # closed after being open for writing (maybe unchanged)
    APPEARED = "appeared"  # created or moved in
    GONE = "gone"  # deleted or moved out
    DIR_GONE = "dir_gone"  # a directory moved out or deleted: everything under it
    OVERFLOW = "overflow"  # events were lost: rescan


@dataclass(frozen=True)
class FileEvent:
    change: Change
    path: str
    #: Pairs an ``IN_MOVED_FROM`` (GONE) with its ``IN_MOVED_TO`` (APPEARED); 0 otherwise.
    cookie: int = 0


def walk_files(top: str) -> Iterator[tuple[str, bool]]:
    """``(path, is_dir)`` for every directory and regular file under ``top`` (``top`` first),
    walked through descriptors without following symlinks (:func:`.beneath.walk_tree`)."""
    yield top, True
    try:
        root_fd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        base = top.rstrip(os.sep)
        for rel, is_dir in beneath.walk_tree(root_fd):
            yield f"{base}{os.sep}{rel}", is_dir
    except OSError:
        return
    finally:
        os.close(root_fd)


def open_beneath(roots: tuple[str, ...], path: str) -> int:
    """Open the regular file ``path`` read-only without following any symlink below its root.

    The path is resolved beneath the root's descriptor by :mod:`pyverity.fs.beneath`
    (``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, or a checked walk), so a
    directory swapped for a symlink cannot lead out of the roots; the file is opened
    ``O_NONBLOCK`` (a FIFO or device never blocks) once ``fstat`` shows a regular file.
    Raises :class:`OSError` (``ELOOP``, ``ENOENT``, ``EXDEV`` outside the roots).
    """
    root = next((r for r in roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
    if root is None:
        raise OSError(errno.EXDEV, "not under a root", path)
    rel = path[len(root.rstrip(os.sep)) + 1 :]
    if any(p in ("", ".", "..") for p in rel.split(os.sep)):  # noqa: PTH206 (keeps . and ..)
        raise OSError(errno.EINVAL, "not a canonical path", path)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        pfd = beneath.open_beneath(root_fd, rel, os.O_PATH)
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return beneath.reopen(pfd, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(pfd)


class Watcher:
    """Watches, and a queue of translated events numbered in the order the kernel made them.

    Events are handled some time after they happen, but a file is observed *now*. So that a
    write made before an observation is not taken for a write after it, :meth:`observed`
    first pulls every event the kernel has queued, then records the last number: a write
    event numbered up to that mark happened before the observation, which has seen its effect
    (:meth:`before_observation`). An event pulled later may have happened before or after;
    it is counted as after (the safe side).
    """

    def __init__(self) -> None:
        self._ino = Inotify()
        self._dirs: dict[int, str] = {}
        self._wds: dict[str, int] = {}
        self._queue: deque[tuple[int, FileEvent]] = deque()
        self._seq = 0
        self._marks: dict[str, int] = {}

    @property
    def fd(self) -> int:
        return self._ino.fd

    @property
    def watch_count(self) -> int:
        return len(self._dirs)

    def close(self) -> None:
        self._ino.close()

    def add_tree(self, top: str) -> Iterator[str]:
        """Watch ``top`` and every directory below it; yields the regular files found."""
        for path, is_dir in walk_files(top):
            if is_dir:
                wd = self._ino.add_watch(path)
                if wd is not None:
                    old = self._dirs.get(wd)
                    if old is not None and old != path:
                        self._wds.pop(old, None)
                    self._dirs[wd] = path
                    self._wds[path] = wd
            else:
                yield path

    def _forget_under(self, prefix: str) -> None:
        sub = prefix + os.sep
        for path in [p for p in self._wds if p == prefix or p.startswith(sub)]:
            wd = self._wds.pop(path)
            self._dirs.pop(wd, None)
            self._ino.rm_watch(wd)

    def pull(self) -> None:
        """Queue what inotify has pending; new directories are watched and walked here."""
        for raw in self._ino.read():
            for ev in self._translate(raw):
                self._seq += 1
                self._queue.append((self._seq, ev))

    def next_event(self) -> tuple[int, FileEvent] | None:
        """The oldest queued event and its number, or None when the queue is empty."""
        if not self._queue:
            self._marks.clear()  # every later event is numbered above every mark
            return None
        return self._queue.popleft()

    def observed(self, path: str) -> None:
        """Call just before observing ``path``: marks the events that precede it."""
        self.pull()
        self._marks[path] = self._seq

    def before_observation(self, seq: int, path: str) -> bool:
        return seq <= self._marks.get(path, 0)

    def events(self) -> Iterator[FileEvent]:
        """Pull and hand out every pending event (for callers that need no ordering)."""
        self.pull()
        while (item := self.next_event()) is not None:
            yield item[1]

    def _translate(self, ev: Event) -> Iterator[FileEvent]:
        if ev.has(Mask.Q_OVERFLOW):
            log.warning("inotify queue overflowed: rescanning")
            yield FileEvent(Change.OVERFLOW, "")
            return
        if ev.has(Mask.IGNORED):
            path = self._dirs.pop(ev.wd, None)
            if path is not None and self._wds.get(path) == ev.wd:
                del self._wds[path]
            return
        base = self._dirs.get(ev.wd)
        if base is None or ev.has(Mask.DELETE_SELF | Mask.MOVE_SELF) or not ev.name:
            return
        path = f"{base}{os.sep}{os.fsdecode(ev.name)}"
        if ev.has(Mask.ISDIR):
            if ev.has(Mask.CREATE | Mask.MOVED_TO):
                for f in self.add_tree(path):
                    yield FileEvent(Change.APPEARED, f)
            elif ev.has(Mask.MOVED_FROM | Mask.DELETE):
                self._forget_under(path)
                yield FileEvent(Change.DIR_GONE, path)
            return
        if ev.has(Mask.MODIFY):
            yield FileEvent(Change.WRITE, path)
        if ev.has(Mask.CLOSE_WRITE):
            yield FileEvent(Change.CLOSE_WRITE, path)
        if ev.has(Mask.ATTRIB):
            yield FileEvent(Change.ATTR, path)
        if ev.has(Mask.CREATE | Mask.MOVED_TO):
            yield FileEvent(Change.APPEARED, path, ev.cookie if ev.has(Mask.MOVED_TO) else 0)
        if ev.has(Mask.DELETE | Mask.MOVED_FROM):
            yield FileEvent(Change.GONE, path, ev.cookie if ev.has(Mask.MOVED_FROM) else 0)
