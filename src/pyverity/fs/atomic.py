"""Publishing files atomically and durably (DESIGN.md §4): temp file, fsync, rename, dir fsync.

Nothing partial is ever visible under the final name: the data goes to a unique temporary file
created with ``O_EXCL`` in the same directory, is fsynced, and is then renamed (or hard-linked,
when the final name must not already exist) into place; the directory is fsynced last so the
rename itself survives a power loss. These helpers raise ``OSError``; callers wrap it in their
own :mod:`pyverity.errors` family.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["fsync_dir", "publish_bytes", "write_all"]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, making the renames and creations inside it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_bytes(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o644,
    exclusive: bool = False,
    sync_dir: bool = True,
    sync_file: bool = True,
) -> None:
    """Make ``data`` the content of ``path`` atomically.

    ``exclusive`` refuses to replace an existing file (``FileExistsError``, even if one appears
    meanwhile); ``sync_dir=False`` skips the directory fsync where a caller batches it or can
    rebuild the file; ``sync_file=False`` skips the file's fsync too, for a cache whose reader
    validates it (after a crash it may be empty, never half of another version). The file gets
    exactly ``mode`` (not reduced by the umask).
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if sync_file:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, final)
            tmp.unlink()
        else:
            tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(final.parent)
