"""Named input files (policies, keys, certificates, lists, configs, signatures): bounded and
typed before a byte is read.

Every input is opened ``O_RDONLY | O_NONBLOCK | O_CLOEXEC`` (so a FIFO or a device never
blocks the open), typed by ``fstat`` on the descriptor (so what is checked is what is read),
and refused at once unless it is a regular file, in one line naming what it is ("'X' is a
directory", "a FIFO", "a character device" …). A symlink in the name is followed: the kernel's
6.10+ securityfs lists are symlinks. Reads count the bytes actually read, never ``st_size``
(securityfs reports 0), and stop one byte past the limit, so memory stays near the limit:

- :func:`read_input`: the whole content, at most ``limit`` bytes (:class:`InputError` beyond);
- :func:`open_stream`: a buffered binary file object, for inputs read incrementally (lists);
- :func:`list_directory`: the names in a directory (keyrings), refused unless a directory.

Limits per input are the callers' and are listed in docs/cli.md ("Input limits").
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from pyverity.errors import InputError

__all__ = ["describe_mode", "list_directory", "open_input", "open_stream", "read_input"]

_CHUNK = 1 << 16
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def describe_mode(mode: int) -> str:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO"`` … for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _name(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} '{os.fsdecode(path)}'"


def _refuse_unopenable(what: str, path: str | os.PathLike[str], exc: OSError) -> InputError:
    if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing with no reader
        return InputError(f"{_name(what, path)} is not a regular file")
    return InputError(f"can't read {_name(what, path)}: {exc.strerror}")


def open_input(
    path: str | os.PathLike[str],
    what: str,
    *,
    allow_fifo: bool = False,
    dir_fd: int | None = None,
) -> int:
    """Open a named input and return its descriptor (blocking again), if it is a regular file.

    ``allow_fifo`` also admits a pipe (``--pass-file``): a FIFO without a writer then reads as
    empty instead of hanging. ``dir_fd`` opens ``path`` relative to that directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise _refuse_unopenable(what, path, exc) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or (allow_fifo and stat.S_ISFIFO(mode))):
            raise InputError(f"{_name(what, path)} is {describe_mode(mode)}")
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, limit: int, what: str, path: str | os.PathLike[str]) -> bytes:
    buf = bytearray()
    while len(buf) <= limit:
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - len(buf)))
        except BlockingIOError:
            # a FIFO with a writer that has not written yet: wait for it (pipes only)
            os.set_blocking(fd, True)
            continue
        except OSError as exc:
            raise InputError(f"can't read {_name(what, path)}: {exc.strerror}") from exc
        if not chunk:
            return bytes(buf)
        buf += chunk
    raise InputError(f"{_name(what, path)} is larger than {limit} bytes")


def read_input(
    path: str | os.PathLike[str],
    what: str,
    limit: int,
    *,
    allow_fifo: bool = False,
    dir_fd: int | None = None,
) -> bytes:
    """The content of a named input: at most ``limit`` bytes, else :class:`InputError`."""
    fd = open_input(path, what, allow_fifo=allow_fifo, dir_fd=dir_fd)
    try:
        return _read_fd(fd, limit, what, path)
    finally:
        os.close(fd)


def open_stream(
    path: str | os.PathLike[str], what: str, *, buffering: int = 1 << 20
) -> BinaryIO:
    """A buffered, read-only file object over a named input (a regular file): for inputs read
    incrementally, whose size the caller bounds per item rather than as a whole."""
    fd = open_input(path, what)
    try:
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def list_directory(path: str | os.PathLike[str], what: str, limit: int) -> tuple[int, list[str]]:
    """An open descriptor on directory ``path`` and its entry names (at most ``limit``).

    The caller closes the descriptor; it is for opening the entries (``dir_fd=``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_DIRECTORY)
    except NotADirectoryError as exc:
        try:
            kind = describe_mode(Path(path).stat().st_mode)
        except OSError:
            kind = "not a directory"
        raise InputError(f"{_name(what, path)} is {kind}, not a directory") from exc
    except OSError as exc:
        raise _refuse_unopenable(what, path, exc) from exc
    try:
        names: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > limit:
                    raise InputError(f"{_name(what, path)} has more than {limit} entries")
    except OSError as exc:
        os.close(fd)
        raise InputError(f"can't read {_name(what, path)}: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, sorted(names)
