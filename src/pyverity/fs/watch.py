"""One event shape for both kernel watchers, and the interface the daemon's watcher wraps.

Two implementations: :class:`pyverity.fs.inotify.InotifyWatch` (a watch on every directory,
the walk adds them) and :class:`pyverity.fs.fanotify.FanotifyWatch` (one mark for each
filesystem holding a root; events for the whole filesystem, filtered with
:func:`under_roots`). Both yield :class:`WatchEvent` with absolute paths. A path names what the
kernel saw when the event was read; it is only a hint of which file to look at, which the daemon
then opens beneath its roots without following symlinks.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CHANGES", "Change", "Fsnotify", "Watch", "WatchEvent", "filter_to_roots", "under_roots"]


class Change(enum.Enum):
    """What happened to :attr:`WatchEvent.path` (``IN_*`` and ``FAN_*`` bits of the same name)."""

    WRITE = "write"  # MODIFY: content written or truncated
    CLOSE_WRITE = "close_write"  # closed after being open for writing (maybe unchanged)
    ATTR = "attr"  # ATTRIB: chmod, touch, an extended attribute written or removed
    CREATED = "created"  # CREATE
    DELETED = "deleted"  # DELETE
    MOVED_FROM = "moved_from"  # renamed away from this path
    MOVED_TO = "moved_to"  # renamed to this path
    OVERFLOW = "overflow"  # the kernel's queue overflowed (or an event was unreadable): rescan


class Fsnotify:
    """The event bits inotify and fanotify share: the kernel's ``FS_*`` bits
    (``<linux/fsnotify_backend.h>``), so that ``IN_X == FAN_X`` for each of them."""

    MODIFY = 0x00000002
    ATTRIB = 0x00000004
    CLOSE_WRITE = 0x00000008
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    CREATE = 0x00000100
    DELETE = 0x00000200
    DELETE_SELF = 0x00000400
    MOVE_SELF = 0x00000800
    Q_OVERFLOW = 0x00004000


#: The :class:`Change` of each event bit, removals first: when one event carries several bits
#: (fanotify merges them, and they have no order), a name deleted and created again is looked
#: at last, and looking finds whatever is there now.
CHANGES = (
    (Fsnotify.DELETE, Change.DELETED),
    (Fsnotify.MOVED_FROM, Change.MOVED_FROM),
    (Fsnotify.CREATE, Change.CREATED),
    (Fsnotify.MOVED_TO, Change.MOVED_TO),
    (Fsnotify.MODIFY, Change.WRITE),
    (Fsnotify.CLOSE_WRITE, Change.CLOSE_WRITE),
    (Fsnotify.ATTRIB, Change.ATTR),
)


@dataclass(frozen=True)
class WatchEvent:
    change: Change
    #: Absolute path; ``""`` for :attr:`Change.OVERFLOW`.
    path: str
    #: The object is a directory (``IN_ISDIR``, ``FAN_ONDIR``).
    is_dir: bool = False
    #: Pairs a MOVED_FROM with its MOVED_TO (the inotify cookie, or a counter for one
    #: ``FAN_RENAME``); 0 when the other half is not known.
    cookie: int = 0


class Watch(Protocol):
    """A kernel watcher seen from the daemon; :attr:`fd` goes into its selector."""

    @property
    def fd(self) -> int: ...

    @property
    def watch_count(self) -> int:
        """inotify watches (one per directory), or fanotify marks (one per filesystem)."""
        ...

    def add_root(self, root: str) -> None:
        """Start watching ``root``'s filesystem (fanotify); nothing for inotify."""
        ...

    def watch_dir(self, path: str) -> bool:
        """Called for each directory a walk meets, before it is listed (inotify adds a watch).

        False if ``path`` vanished or is not a directory.
        """
        ...

    def forget_under(self, path: str) -> None:
        """``path`` and everything below it went away (inotify drops their watches)."""
        ...

    def read(self) -> Iterator[WatchEvent]:
        """The events pending now, oldest first (none if nothing is pending)."""
        ...

    def close(self) -> None: ...


def under_roots(path: str, roots: Iterable[str]) -> bool:
    """``path`` is one of ``roots`` or lies below one (by its text: no symlink is followed)."""
    for root in roots:
        r = root.rstrip(os.sep) or os.sep
        if path == r or path.startswith(r if r == os.sep else r + os.sep):
            return True
    return False


def filter_to_roots(events: Iterable[WatchEvent], roots: tuple[str, ...]) -> Iterator[WatchEvent]:
    """Events below ``roots`` (and every overflow); fanotify reports the whole filesystem."""
    for ev in events:
        if ev.change is Change.OVERFLOW or under_roots(ev.path, roots):
            yield ev
