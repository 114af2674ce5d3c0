"""Opening files once, safely: regular files only, never blocking on FIFOs or devices.

:class:`FileRef` names a file a batch command will open, picklable for worker processes: a
path named directly, or a path beneath a directory that was walked, opened beneath it with
:mod:`pyverity.fs.beneath` (never following a symlink).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pyverity.errors import InputError
from pyverity.fs import beneath

__all__ = [
    "FileIdentity",
    "FileRef",
    "identity",
    "open_regular",
    "open_regular_beneath",
    "open_target",
]


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> int:
    """Open ``path`` read-only and return the descriptor, if it is a regular file.

    ``O_NONBLOCK`` keeps a FIFO or device from blocking the open; it is cleared once ``fstat``
    shows a regular file. ``follow_symlinks=False`` adds ``O_NOFOLLOW``. Failures raise
    :class:`InputError` worded as ``fsverity`` words them.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        reason = e.strerror
        if e.errno == errno.ELOOP and not follow_symlinks:
            reason = "is a symbolic link"
        raise InputError(f"can't open '{os.fsdecode(path)}' for reading: {reason}") from e
    return _regular(fd, os.fsdecode(path))


def _regular(fd: int, name: str) -> int:
    """``fd`` if it is a regular file (made blocking again), else closed and refused."""
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"can't read '{name}': Is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"'{name}' is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_beneath(root_fd: int, rel: str, name: str) -> int:
    """Open the regular file ``rel`` beneath the directory ``root_fd`` read-only, resolved
    with :func:`~pyverity.fs.beneath.open_beneath` (no symlink anywhere on the way nor at the
    end, no ``..``, no absolute path); ``name`` is how errors name it."""
    try:
        fd = beneath.open_beneath(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise beneath.input_error(e, name) from e
    return _regular(fd, name)


@dataclass(frozen=True)
class FileRef:
    """A file a batch command (``sign``/``verify``/``enable``, with or without ``-r``) opens.

    ``root`` None: ``rel`` is a path named directly; it is opened with ``O_NOFOLLOW`` on its
    last component (a symlink named is refused: name its target), the components before it
    are the caller's own choice. Otherwise ``rel`` was listed beneath the directory ``root``
    by :func:`~pyverity.fs.beneath.walk_tree`, and ``root_id`` is that directory's
    ``(st_dev, st_ino)``. :meth:`open` opens ``root`` again (``O_NOFOLLOW``), checks it is
    still the directory that was walked, and resolves ``rel`` beneath it with
    :mod:`pyverity.fs.beneath`: a directory swapped for a symlink after the listing is
    refused (``ELOOP``), never followed. Worker processes get the reference, not a
    descriptor, and open it themselves.
    """

    root: str | None
    rel: str
    root_id: tuple[int, int] = (0, 0)

    @property
    def path(self) -> str:
        """The path as printed: as named, or the root joined with the relative path."""
        if self.root is None:
            return self.rel
        from pathlib import Path  # here: 4 ms of every command's start-up otherwise

        return str(Path(self.root) / self.rel)

    def open(self) -> int:
        """A read-only descriptor of the regular file; :class:`InputError` otherwise."""
        if self.root is None:
            return open_regular(self.rel, follow_symlinks=False)
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            root_fd = os.open(self.root, flags)
        except OSError as e:
            raise InputError(f"can't open '{self.path}': '{self.root}': {e.strerror}") from e
        try:
            st = os.fstat(root_fd)
            if (st.st_dev, st.st_ino) != self.root_id:
                raise InputError(
                    f"can't open '{self.path}': '{self.root}' was replaced since it was listed"
                )
            return open_regular_beneath(root_fd, self.rel, self.path)
        finally:
            os.close(root_fd)


def open_target(target: str | os.PathLike[str] | FileRef) -> int:
    """A read-only descriptor of a regular file: a :class:`FileRef` opened as it says (beneath
    its walk root), a path as :func:`open_regular` opens it (following symlinks)."""
    return target.open() if isinstance(target, FileRef) else open_regular(target)


class FileIdentity(tuple[int, int, int, int]):
    """``(st_dev, st_ino, st_size, st_mtime_ns)``: what a content change would alter."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return self[2]


def identity(st: os.stat_result) -> FileIdentity:
    return FileIdentity((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
