"""What cluster workers run: read and hash, nothing else (no key, no write, no dask import).

Every function here is a picklable top-level function of plain values. A unit of work is a
list of :class:`Job` (several whole small files, or one byte range of a big file) and comes
back as a list of :class:`Result`, one per job, each with the (size, mtime, ctime, inode) the
worker saw while it read (:class:`Seen`); the client compares that with its own stat before it
uses the digest. Errors come back as values, so a bad file never fails a task (a task fails
only when its worker dies, and the scheduler then runs it again elsewhere).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from pyverity.errors import Error, FileChangedError, InputError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import open_regular

__all__ = ["Job", "Kind", "Result", "Seen", "run_jobs", "seen_of"]


@dataclass(frozen=True)
class Seen:
    """What a file looked like: compared between worker and client (st_dev differs across
    machines mounting the same storage, so it is left out)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


def seen_of(st: os.stat_result) -> Seen:
    return Seen(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class Kind(enum.Enum):
    #: The whole file's fs-verity descriptor.
    TREE = "tree"
    #: The roots of the subtrees of ``height`` covering ``[start, end)``.
    RANGE = "range"
    #: The whole-file hashes ``hashes`` (hashlib names) in one read: sequential, one job per file.
    HASH = "hash"
    #: The descriptor and the whole-file hashes of a small file in one read (manifests).
    ONEPASS = "onepass"


@dataclass(frozen=True)
class Job:
    """One file's share of a unit of work: ``part`` of the file numbered ``index``.

    ``path`` is absolute, or (with ``root``) relative to the directory ``root`` and opened
    beneath it without following any symlink; workers must see the same paths as the client.
    """

    index: int
    path: str
    kind: Kind
    size: int
    params: TreeParams | None = None
    hashes: tuple[str, ...] = ()
    start: int = 0
    end: int = 0
    height: int = 0
    part: int = 0
    root: str = ""


Hashes = tuple[tuple[str, bytes], ...]
Value = Descriptor | tuple[bytes, ...] | Hashes | tuple[Descriptor, Hashes]


def _open(job: Job, roots: dict[str, int]) -> int:
    from pyverity.fs.openfile import open_regular_beneath

    if not job.root:
        return open_regular(job.path, follow_symlinks=False)
    root_fd = roots.get(job.root)
    if root_fd is None:
        try:
            root_fd = os.open(job.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise InputError(f"can't open directory '{job.root}': {e.strerror}") from e
        roots[job.root] = root_fd
    return open_regular_beneath(root_fd, job.path, os.path.join(job.root, job.path))  # noqa: PTH118


@dataclass(frozen=True)
class Result:
    job: Job
    seen: Seen | None
    #: A descriptor (TREE), subtree roots (RANGE), ``(name, digest)`` pairs (HASH) or both
    #: (ONEPASS: ``(descriptor, pairs)``).
    value: Value | None
    error: str | None = None
    changed: bool = False


def run_job(job: Job, roots: dict[str, int] | None = None) -> Result:
    """Open, stat, hash as ``job`` says, stat again (``roots``: root descriptors to reuse)."""
    try:
        fd = _open(job, {} if roots is None else roots)
    except Error as e:
        return Result(job, None, None, e.message)
    try:
        seen = seen_of(os.fstat(fd))
        if seen.size != job.size:
            raise FileChangedError("file changed size since it was listed")
        value = _hash(fd, job)
        if seen_of(os.fstat(fd)) != seen:
            raise FileChangedError("file changed while it was being hashed")
    except FileChangedError as e:
        return Result(job, None, None, e.message, changed=True)
    except Error as e:
        return Result(job, None, None, e.message)
    except OSError as e:
        return Result(job, None, None, f"read error: {e.strerror}")
    finally:
        os.close(fd)
    return Result(job, seen, value)


def file_hashes(fd: int, names: tuple[str, ...], size: int) -> Hashes:
    """The whole-file hashes ``names`` of the first ``size`` bytes of ``fd``, in one read."""
    import hashlib

    hashers = [hashlib.new(n) for n in names]
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            raise FileChangedError("file shrank while it was being hashed")
        for h in hashers:
            h.update(chunk)
        offset += len(chunk)
    return tuple((n, h.digest()) for n, h in zip(names, hashers, strict=True))


def _hash(fd: int, job: Job) -> Value:
    if job.kind is Kind.HASH:
        return file_hashes(fd, job.hashes, job.size)
    assert job.params is not None  # noqa: S101 - the plan sets it
    if job.kind is Kind.ONEPASS:
        from pyverity.hashing.onepass import hash_once

        once = hash_once(fd, job.params, job.hashes)
        return once.descriptor, once.hashes
    if job.kind is Kind.RANGE:
        from pyverity.hashing.subtree import hash_subtrees

        return tuple(hash_subtrees(fd, job.params, job.start, job.end, job.height))
    from pyverity.hashing import build_tree

    return build_tree(fd, job.params, keep_tree=False, jobs=1).descriptor


def run_jobs(jobs: list[Job]) -> list[Result]:
    """The unit of work of a cluster task (each root directory opened once)."""
    roots: dict[str, int] = {}
    try:
        return [run_job(job, roots) for job in jobs]
    finally:
        for fd in roots.values():
            os.close(fd)
