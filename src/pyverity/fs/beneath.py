"""Opening paths beneath a root directory, one component at a time, never following symlinks.

Every path that comes from a user or from disk is resolved here, relative to the descriptor of
its root (DESIGN.md §9): a directory swapped for a symlink, a ``..`` or an absolute path can
never lead out of the root. Where the kernel has ``openat2(2)`` (Linux ≥ 5.6) each open is
made with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``; elsewhere the
same rules are kept by a checked walk, each component opened ``O_PATH | O_NOFOLLOW`` and
typed by ``fstat`` before the next one is looked up in it.

A final component that is a symlink can still be opened, as ``O_PATH | O_NOFOLLOW`` (what the
mount needs to serve symlinks as symlinks: ``fstat``, ``readlinkat(fd, "")``). Failures are
:class:`OSError` with the kernel's errno: ``ELOOP`` for a symlink on the way, ``ENOTDIR`` for a
non-directory on the way, ``EXDEV`` for an absolute path or a ``..``. Callers at the CLI
boundary turn them into their :mod:`pyverity.errors` family (:func:`input_error`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

from pyverity.errors import InputError
from pyverity.fs.libc import libc

__all__ = [
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "DirCheck",
    "components",
    "descend",
    "has_openat2",
    "input_error",
    "open_at",
    "open_beneath",
    "open_parent",
    "proc_path",
    "reopen",
    "walk_tree",
]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

#: ``openat2`` has the same number on every architecture that has it (the unified table).
SYS_OPENAT2 = 437

#: A path component: ``str`` here, ``bytes`` for the manifest walk.
_Name = TypeVar("_Name", str, bytes)

#: Called with the ``fstat`` of the root and of every directory a walk passes through.
DirCheck = Callable[[os.stat_result], None]


class _OpenHow(ctypes.Structure):
    """``struct open_how`` (linux/openat2.h)."""

    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


#: Tests set this to False to force the checked walk on a kernel that has ``openat2``.
use_openat2 = True


_SyscallOpenat2 = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,  # the system call number
    ctypes.c_int,  # dirfd
    ctypes.c_char_p,  # pathname
    ctypes.c_void_p,  # struct open_how *
    ctypes.c_size_t,  # its size
    use_errno=True,
)


@functools.cache
def _syscall() -> Callable[[int, int, bytes, int, int], int]:
    """``syscall(2)`` typed for ``openat2`` (a typed prototype: a third of the call's cost)."""
    fn: Callable[[int, int, bytes, int, int], int] = _SyscallOpenat2(("syscall", libc()))
    return fn


@functools.lru_cache(maxsize=64)
def _how(flags: int, mode: int) -> _OpenHow:
    """One ``open_how`` per (flags, mode), kept alive here; the kernel only reads it."""
    return _OpenHow(flags, mode, _RESOLVE)


def _openat2(dfd: int, path: str, flags: int, mode: int) -> int:
    creates = flags & os.O_CREAT or (flags & os.O_TMPFILE) == os.O_TMPFILE
    # openat2 refuses a mode without O_CREAT/O_TMPFILE, or with file-type bits (EINVAL)
    how = _how(flags, mode & 0o7777 if creates else 0)
    fd = _syscall()(SYS_OPENAT2, dfd, os.fsencode(path), ctypes.addressof(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


@functools.cache
def _kernel_has_openat2() -> bool:
    try:
        os.close(_openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0))  # AT_FDCWD
    except OSError as e:
        # ENOSYS: older kernel; EPERM: a seccomp filter that does not know it.
        return e.errno not in (errno.ENOSYS, errno.EPERM)
    except AttributeError:  # a C library without syscall()
        return False
    return True


def has_openat2() -> bool:
    """Whether opens go through ``openat2`` (kernel support, and not disabled for a test)."""
    return use_openat2 and _kernel_has_openat2()


def components(path: str) -> list[str]:
    """The names of a relative ``path``; ``[]`` for the root itself (``""`` or ``"."``).

    Empty and ``.`` components are dropped. An absolute path or any ``..`` is refused with
    ``EXDEV``, as ``RESOLVE_BENEATH`` refuses what would leave the root.
    """
    if path.startswith("/"):
        raise OSError(errno.EXDEV, "absolute path where a path beneath a root is needed", path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "'..' in a path beneath a root", path)
    return parts


def open_at(dfd: int, name: str, flags: int, mode: int = 0o777) -> int:
    """Open the single component ``name`` in directory ``dfd``, never following a symlink.

    ``name`` must not contain ``/`` nor be ``..``. A symlink is opened only with ``O_PATH``
    (it then refers to the link itself); otherwise it fails with ``ELOOP``.
    """
    if "/" in name or name == ".." or not name:
        raise OSError(errno.EXDEV, "not a single component beneath the directory", name)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if has_openat2():
        return _openat2(dfd, name, flags, mode)
    return os.open(name, flags, mode, dir_fd=dfd)


def _step(dfd: int, name: str, check: DirCheck | None) -> int:
    """The ``O_PATH`` descriptor of directory ``name`` in ``dfd`` (checked by ``check``)."""
    fd = open_at(dfd, name, os.O_PATH)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "symbolic link in the middle of a path", name)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
        if check is not None:
            check(st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_parent(root_fd: int, parts: list[str], check: DirCheck | None = None) -> int:
    """An ``O_PATH`` descriptor of the directory holding ``parts[-1]`` (the root for ``[]``
    or one name), found one directory at a time from ``root_fd``.

    ``check`` sees the ``fstat`` of each directory a name is looked up in (the root unless
    ``parts`` is empty, then each directory passed through), in order: the mount checks search
    permission there. It may raise to stop the walk. The caller closes the descriptor.
    """
    if check is not None and parts:  # the root is searched only to look a name up
        st = os.fstat(root_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        check(st)
    if len(parts) < 2:
        return os.dup(root_fd)
    return descend(root_fd, parts[:-1], functools.partial(_step, check=check))


def descend(dfd: int, names: Sequence[_Name], step: Callable[[int, _Name], int]) -> int:
    """The descriptor ``step(fd, name)`` opens for the last of ``names``, each name opened by
    ``step`` in the directory the one before it gave, starting in ``dfd`` (left open).

    The descriptors on the way are closed, also when a ``step`` raises; no names: a ``dup``
    of ``dfd``. The caller closes the result.
    """
    if not names:
        return os.dup(dfd)
    fd = step(dfd, names[0])
    try:
        for name in names[1:]:
            nxt = step(fd, name)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root_fd: int, path: str, flags: int = os.O_RDONLY, mode: int = 0o777) -> int:
    """Open ``path`` beneath ``root_fd`` with ``flags`` (``O_NOFOLLOW`` is always added).

    One ``openat2`` call where the kernel has it, the checked walk otherwise. ``""`` opens
    the root itself. A final symlink opens only with ``O_PATH``.
    """
    parts = components(path)
    if has_openat2():
        return _openat2(root_fd, "/".join(parts) or ".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    dfd = open_parent(root_fd, parts)
    try:
        return open_at(dfd, parts[-1] if parts else ".", flags, mode)
    finally:
        os.close(dfd)


def proc_path(fd: int) -> str:
    """``/proc/self/fd/<fd>``: the object ``fd`` refers to, for calls that take only a path
    (xattrs, ``chmod`` on an ``O_PATH`` descriptor). It names that object and no other."""
    return f"/proc/self/fd/{fd}"


def reopen(fd: int, flags: int) -> int:
    """Open the object of the ``O_PATH`` descriptor ``fd`` again with ``flags``."""
    return os.open(proc_path(fd), flags | os.O_CLOEXEC)


def _list(fd: int) -> tuple[list[str], list[str]]:
    """Sorted names of the regular files and of the directories in ``fd`` (no symlinks)."""
    files: list[str] = []
    dirs: list[str] = []
    with contextlib.suppress(OSError), os.scandir(fd) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
    return sorted(files), sorted(dirs)


def walk_tree(root_fd: int) -> Generator[tuple[str, bool], None, None]:
    """``(relative path, is_dir)`` of every regular file and directory beneath ``root_fd``.

    Each directory is opened from its parent's descriptor without following symlinks (a
    symlink to a directory is not descended, nor reported); its files come first, sorted,
    then each subdirectory, sorted, named before its contents. A directory that cannot be
    opened or listed (removed, swapped for a symlink meanwhile) is skipped. One descriptor is
    open per level.
    """
    stack: list[tuple[str, int, list[str] | None]] = [
        ("", open_at(root_fd, ".", os.O_RDONLY | os.O_DIRECTORY), None)
    ]
    try:
        while stack:
            prefix, fd, pending = stack[-1]
            if pending is None:
                files, dirs = _list(fd)
                for name in files:
                    yield prefix + name, False
                pending = dirs[::-1]
                stack[-1] = (prefix, fd, pending)
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            name = pending.pop()
            try:
                child = open_at(fd, name, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            stack.append((f"{prefix}{name}/", child, None))
            yield prefix + name, True
    finally:
        for _, fd, _ in stack:
            os.close(fd)


def input_error(err: OSError, path: str) -> InputError:
    """The one-line :class:`InputError` for a refused resolution of ``path`` (CLI boundary)."""
    reasons = {
        errno.ELOOP: "a symbolic link is on the way (symlinks are not followed)",
        errno.EXDEV: "it leads outside its root",
        errno.ENOTDIR: "a component on the way is not a directory",
    }
    reason = reasons.get(err.errno or 0, err.strerror or str(err))
    return InputError(f"can't open '{path}' beneath its root: {reason}")
