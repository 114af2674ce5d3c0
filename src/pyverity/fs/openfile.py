"""Opening files once, safely: regular files only, never blocking on FIFOs or devices."""

from __future__ import annotations

import errno
import os
import stat

from pyverity.errors import InputError

__all__ = ["FileIdentity", "identity", "open_regular"]


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
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"can't read '{os.fsdecode(path)}': Is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"'{os.fsdecode(path)}' is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileIdentity(tuple[int, int, int, int]):
    """``(st_dev, st_ino, st_size, st_mtime_ns)``: what a content change would alter."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return self[2]


def identity(st: os.stat_result) -> FileIdentity:
    return FileIdentity((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
