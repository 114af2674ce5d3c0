"""The daemon's view of the roots: kernel watch events turned into numbered file events.

:class:`Watcher` wraps a :class:`pyverity.fs.watch.Watch` — inotify (a watch on every
directory, :class:`~pyverity.fs.inotify.InotifyWatch`) or fanotify (one mark per filesystem,
:class:`~pyverity.fs.fanotify.FanotifyWatch`), chosen by :func:`open_watch` (``--watcher
auto|fanotify|inotify``). Events outside the roots are dropped (fanotify reports a whole
filesystem). New directories are walked as they appear (files may be created in them before a
watch exists); a directory that goes away is one :attr:`Change.DIR_GONE`. Symbolic links are
never followed: directories are walked through descriptors (:mod:`pyverity.fs.beneath`) and
watched with ``IN_DONT_FOLLOW``. A queue overflow is one :attr:`Change.OVERFLOW` event, on
which the daemon rescans everything.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass

from pyverity.errors import ConfigurationError
from pyverity.fs import beneath
from pyverity.fs import watch as kernel
from pyverity.fs.inotify import InotifyWatch

__all__ = ["WATCHERS", "Change", "FileEvent", "Watcher", "open_beneath", "open_watch", "walk_files"]

#: The values of ``--watcher``.
WATCHERS = ("auto", "fanotify", "inotify")

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
        root_fd = open_root(top)
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


def open_beneath(
    roots: tuple[str, ...], path: str, root_fds: Mapping[str, int] | None = None
) -> int:
    """Open the regular file ``path`` read-only without following any symlink below its root.

    The path is resolved beneath the root's descriptor by :mod:`pyverity.fs.beneath`
    (``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, or a checked walk), so a
    directory swapped for a symlink cannot lead out of the roots; the file is opened
    ``O_NONBLOCK`` (a FIFO or device never blocks) once ``fstat`` shows a regular file.
    Raises :class:`OSError` (``ELOOP``, ``ENOENT``, ``EXDEV`` outside the roots).
    ``root_fds``: the roots already open (``O_PATH``), for a caller opening many files.
    """
    root = next((r for r in roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
    if root is None:
        raise OSError(errno.EXDEV, "not under a root", path)
    rel = path[len(root.rstrip(os.sep)) + 1 :]
    if any(p in ("", ".", "..") for p in rel.split(os.sep)):  # noqa: PTH206 (keeps . and ..)
        raise OSError(errno.EINVAL, "not a canonical path", path)
    given = root_fds.get(root) if root_fds is not None else None
    root_fd = open_root(root) if given is None else given
    try:
        pfd = beneath.open_beneath(root_fd, rel, os.O_PATH)
    finally:
        if given is None:
            os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return beneath.reopen(pfd, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(pfd)


def open_root(root: str) -> int:
    """``root`` opened ``O_PATH`` (no symlink followed at its end), for :func:`open_beneath`."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_watch(
    kind: str, roots: tuple[str, ...], *, ignore_pids: Container[int] = ()
) -> kernel.Watch:
    """The kernel watcher ``kind`` names over ``roots``.

    ``auto`` tries fanotify (one mark per filesystem; needs CAP_SYS_ADMIN and Linux 5.9) and
    falls back to inotify, saying why, where fanotify cannot be used: EPERM, EXDEV (a btrfs
    subvolume), EOPNOTSUPP, ENODEV, or an old kernel. ``fanotify`` refuses to start instead.
    With fanotify, changes made by the processes ``ignore_pids`` are not reported (a set the
    caller may change later).
    """
    if kind not in WATCHERS:
        raise ConfigurationError(f"unknown watcher '{kind}' (use {', '.join(WATCHERS)})")
    if kind == "inotify":
        return InotifyWatch()
    from pyverity.fs.fanotify import FanotifyError, FanotifyWatch

    fan: FanotifyWatch | None = None
    try:
        fan = FanotifyWatch(ignore_pids=ignore_pids)
        for root in roots:
            fan.add_root(root)
    except FanotifyError as e:
        if fan is not None:
            fan.close()
        if kind == "fanotify" or not e.can_fall_back:
            raise ConfigurationError(f"cannot watch with fanotify: {e}", remedy=e.remedy) from e
        log.warning("fanotify cannot watch %s (%s): watching with inotify", ", ".join(roots), e)
        return InotifyWatch()
    log.info("watching with fanotify (%d filesystem marks)", fan.watch_count)
    return fan


class Watcher:
    """A kernel watcher, and a queue of its events numbered in the order the kernel made them.

    Events are handled some time after they happen, but a file is observed *now*. So that a
    write made before an observation is not taken for a write after it, :meth:`observed`
    first pulls every event the kernel has queued, then records the last number: a write
    event numbered up to that mark happened before the observation, which has seen its effect
    (:meth:`before_observation`). An event pulled later may have happened before or after;
    it is counted as after (the safe side).
    """

    def __init__(self, watch: kernel.Watch | None = None, roots: tuple[str, ...] = ()) -> None:
        self._watch = watch if watch is not None else InotifyWatch()
        self._roots = roots
        self._queue: deque[tuple[int, FileEvent]] = deque()
        self._seq = 0
        self._marks: dict[str, int] = {}

    @property
    def fd(self) -> int:
        return self._watch.fd

    @property
    def watch_count(self) -> int:
        return self._watch.watch_count

    def close(self) -> None:
        self._watch.close()

    def add_tree(self, top: str) -> Iterator[str]:
        """Watch ``top`` and every directory below it; yields the regular files found."""
        if not self._roots or top in self._roots:
            self._watch.add_root(top)
        for path, is_dir in walk_files(top):
            if is_dir:
                self._watch.watch_dir(path)
            else:
                yield path

    def pull(self) -> None:
        """Queue what the kernel has pending; new directories are watched and walked here."""
        events = self._watch.read()
        if self._roots:
            events = kernel.filter_to_roots(events, self._roots)
        for raw in events:
            for ev in self._translate(raw):
                self._seq += 1
                self._queue.append((self._seq, ev))

    @property
    def pending(self) -> bool:
        """Events are queued (pulled from the kernel, not handed out yet)."""
        return bool(self._queue)

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

    def mark(self, path: str) -> int:
        """The number of the last event pulled before ``path`` was last observed (0: never)."""
        return self._marks.get(path, 0)

    def events(self) -> Iterator[FileEvent]:
        """Pull and hand out every pending event (for callers that need no ordering)."""
        self.pull()
        while (item := self.next_event()) is not None:
            yield item[1]

    def _translate(self, ev: kernel.WatchEvent) -> Iterator[FileEvent]:
        k = kernel.Change
        if ev.change is k.OVERFLOW:
            yield FileEvent(Change.OVERFLOW, "")
            return
        if ev.is_dir:
            if ev.change in (k.CREATED, k.MOVED_TO):
                for f in self.add_tree(ev.path):
                    yield FileEvent(Change.APPEARED, f)
            elif ev.change in (k.DELETED, k.MOVED_FROM):
                self._watch.forget_under(ev.path)
                yield FileEvent(Change.DIR_GONE, ev.path)
            return
        change = _CHANGES.get(ev.change)
        if change is not None:
            cookie = ev.cookie if ev.change in (k.MOVED_FROM, k.MOVED_TO) else 0
            yield FileEvent(change, ev.path, cookie)


_CHANGES = {
    kernel.Change.WRITE: Change.WRITE,
    kernel.Change.CLOSE_WRITE: Change.CLOSE_WRITE,
    kernel.Change.ATTR: Change.ATTR,  # FAN_ATTRIB too: the attributes are read again
    kernel.Change.CREATED: Change.APPEARED,
    kernel.Change.MOVED_TO: Change.APPEARED,
    kernel.Change.DELETED: Change.GONE,
    kernel.Change.MOVED_FROM: Change.GONE,
}
