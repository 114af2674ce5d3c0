"""Walking a tree in byte order of full paths, and opening paths beneath a root.

Both work on directory descriptors only: a directory is opened with ``O_DIRECTORY |
O_NOFOLLOW`` relative to its parent's descriptor, entries are listed with ``os.scandir`` on
the descriptor; files are opened beneath the root by :mod:`pyverity.fs.beneath` (``openat2``
with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, or its checked walk); no path string is ever
joined and opened, and no symlink is followed. (``fs.beneath.walk_tree`` is not used for the
walk: it lists files before subdirectories, which is not byte order of full paths, and skips
symlinks and unreadable directories, which a manifest must record or refuse.)

**Order.** Sorting each directory's names and descending depth-first does *not* give byte
order of full paths: ``a.b`` sorts before ``a/x`` (``.`` is 0x2e, ``/`` is 0x2f) but after
``a``. Sorting each directory by ``name + b"/"`` for subdirectories and ``name`` for
everything else does: every path under subdirectory ``s`` starts with ``s/``, and a name
without ``/`` compares with ``s/…`` exactly as it compares with ``s/``. So :func:`walk` yields
paths in strictly increasing byte order while holding only one sorted listing per level.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyverity.errors import FileChangedError, InputError
from pyverity.fs import beneath
from pyverity.manifest.model import check_path, display

__all__ = [
    "Found",
    "MissingError",
    "NotRegularError",
    "SymlinkInPathError",
    "WalkStats",
    "open_beneath",
    "open_dir_beneath",
    "open_root",
    "walk",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class MissingError(InputError):
    """The path does not exist beneath the root."""


class SymlinkInPathError(InputError):
    """A directory on the path is a symbolic link: following it could leave the root."""


class NotRegularError(InputError):
    """The path names something other than a regular file (a symlink, a FIFO, a directory)."""


@dataclass(frozen=True)
class Found:
    """One walked entry: a regular file, or a symlink with its target."""

    path: bytes
    is_symlink: bool = False
    target: bytes = b""
    #: The size ``lstat`` saw (a hint for cutting work; the file is re-checked when read).
    size: int = 0


@dataclass
class WalkStats:
    """What a walk skipped: non-regular files (FIFOs, sockets, devices), by path."""

    skipped: int = 0
    skipped_paths: list[bytes] = field(default_factory=list)
    #: Keep at most this many skipped paths for reporting.
    keep: int = 100

    def skip(self, path: bytes) -> None:
        self.skipped += 1
        if len(self.skipped_paths) < self.keep:
            self.skipped_paths.append(path)


def open_root(root: str | os.PathLike[str]) -> int:
    """Open a root directory named by the user (the one place a user path is followed)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"can't open directory '{os.fsdecode(root)}': {e.strerror}") from e


def _sorted_keys(dfd: int, prefix: bytes) -> list[bytes]:
    keys = []
    try:
        with os.scandir(dfd) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                keys.append(name + b"/" if is_dir else name)
    except OSError as e:
        raise InputError(f"can't list '{display(prefix) or '.'}': {e.strerror}") from e
    keys.sort()
    return keys


def walk(root_fd: int, stats: WalkStats) -> Iterator[Found]:
    """Regular files and symlinks beneath ``root_fd``, in strictly increasing byte order."""
    stack: list[tuple[int, bytes, Iterator[bytes]]] = []
    top = os.dup(root_fd)
    stack.append((top, b"", iter(_sorted_keys(top, b""))))
    try:
        while stack:
            dfd, prefix, keys = stack[-1]
            key = next(keys, None)
            if key is None:
                os.close(dfd)
                stack.pop()
                continue
            if key.endswith(b"/"):
                name = key[:-1]
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except OSError as e:
                    raise FileChangedError(
                        f"'{display(prefix + name)}' changed while the tree was walked:"
                        f" {e.strerror}"
                    ) from e
                path = prefix + name + b"/"
                stack.append((sub, path, iter(_sorted_keys(sub, path))))
                continue
            path = prefix + key
            try:
                st = os.stat(key, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    yield Found(path, True, os.readlink(key, dir_fd=dfd))
                elif stat.S_ISREG(st.st_mode):
                    yield Found(path, size=st.st_size)
                elif stat.S_ISDIR(st.st_mode):
                    raise FileChangedError(f"'{display(path)}' became a directory during the walk")
                else:
                    stats.skip(path)
            except FileNotFoundError as e:
                raise FileChangedError(f"'{display(path)}' vanished during the walk") from e
            except OSError as e:
                raise InputError(f"can't stat '{display(path)}': {e.strerror}") from e
    finally:
        for dfd, _, _ in stack:
            os.close(dfd)


def _is_symlink(dfd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _fail(path: bytes, e: OSError, dfd: int, name: bytes, *, last: bool) -> InputError:
    shown = display(path)
    if e.errno == errno.ENOENT:
        return MissingError(f"'{shown}' does not exist")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        if not _is_symlink(dfd, name):
            return MissingError(f"'{shown}' does not exist (a component is not a directory)")
        if last:
            return NotRegularError(f"'{shown}' is a symbolic link")
        return SymlinkInPathError(f"'{shown}' leaves the directory through a symbolic link")
    return InputError(f"can't open '{shown}': {e.strerror}")


def open_dir_beneath(root_fd: int, parts: list[bytes], path: bytes) -> int:
    """Open the directory ``parts`` (components) beneath ``root_fd``, following no symlink."""

    def step(dfd: int, part: bytes) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=dfd)
        except OSError as e:
            raise _fail(path, e, dfd, part, last=False) from e

    return beneath.descend(root_fd, parts, step)


def _diagnose(root_fd: int, parts: list[bytes], path: bytes, err: OSError) -> InputError:
    """Why ``path`` could not be opened, told apart one component at a time."""
    dfd = open_dir_beneath(root_fd, parts[:-1], path)  # raises for the directories on the way
    try:
        return _fail(path, err, dfd, parts[-1], last=True)
    finally:
        os.close(dfd)


def open_beneath(root_fd: int, path: bytes) -> int:
    """Open the regular file ``path`` (canonical, relative) beneath ``root_fd`` for reading.

    One ``openat2`` (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``) through
    :func:`pyverity.fs.beneath.open_beneath` where the kernel has it. No component may be a
    symlink (:class:`SymlinkInPathError` for a directory on the way, :class:`NotRegularError`
    for the file itself); FIFOs and devices are refused without blocking (``O_NONBLOCK`` until
    ``fstat`` shows a regular file).
    """
    parts = check_path(path).split(b"/")
    try:
        fd = beneath.open_beneath(root_fd, os.fsdecode(path), _FILE_FLAGS)
    except OSError as e:
        raise _diagnose(root_fd, parts, path, e) from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularError(f"'{display(path)}' is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
