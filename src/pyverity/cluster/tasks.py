"""What cluster workers run: read and hash, nothing else (no key, no write, no dask import).

Every function here is a picklable top-level function of plain values. A unit of work is a
list of :class:`Job` (several whole small files, or one byte range of a big file); the task
(:func:`run_unit`) makes one compact :data:`Reply` per job, in order (plain tuples and bytes:
no job echoed, a root hash rather than a descriptor), each with the (size, mtime, ctime, inode)
the worker saw while it read (:class:`Seen`). On a cluster the task is :func:`run_packed`: the
unit's replies go back as **one bytes object** (:func:`pack_replies`), which Dask sends as it
is; a list of tuples it would serialize one element at a time (a dispatch lookup and a pickle
per file, on the worker's event loop, while the task thread waits for the GIL). The client
loads them (:func:`load_replies`), turns them into :class:`Result` s (:func:`results_of`) and
compares that stat with its own before it uses the digest. Errors come back as values, so a
bad file never fails a task (a task fails only when its worker dies, and the scheduler then
runs it again elsewhere).
"""

from __future__ import annotations

import enum
import os
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from pyverity.errors import Error, FileChangedError, InputError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import open_regular

__all__ = [
    "Job",
    "Kind",
    "Opaque",
    "Reply",
    "Result",
    "Seen",
    "file_digests",
    "file_hashes",
    "load_replies",
    "pack_replies",
    "result_of",
    "results_of",
    "run_jobs",
    "run_opaque",
    "run_packed",
    "run_unit",
    "seen_of",
    "stat_key",
]


class Seen(tuple[int, int, int, int]):
    """``(size, mtime_ns, ctime_ns, ino)``: what a file looked like, compared between worker
    and client (st_dev differs across machines mounting the same storage, so it is left out).
    A tuple, as :class:`~pyverity.fs.openfile.FileIdentity`; a worker sends it as a plain tuple
    (:func:`stat_key`: a tuple subclass costs a reduce call per file to pickle), equal to this."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return self[0]


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """The plain tuple of :class:`Seen`'s fields (what crosses the wire)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def seen_of(st: os.stat_result) -> Seen:
    return Seen(stat_key(st))


class Kind(enum.Enum):
    #: The whole file's fs-verity descriptor.
    TREE = "tree"
    #: The roots of the subtrees of ``height`` covering ``[start, end)``.
    RANGE = "range"
    #: The whole-file hashes ``hashes`` (hashlib names) in one read: sequential, one job per file.
    HASH = "hash"
    #: The descriptor and the whole-file hashes of a small file in one read (manifests).
    ONEPASS = "onepass"


class Job(NamedTuple):
    """One file's share of a unit of work: ``part`` of the file numbered ``file``.

    ``path`` is absolute, or (with ``root``) relative to the directory ``root`` and opened
    beneath it without following any symlink; workers must see the same paths as the client.
    A named tuple, not a dataclass: one is built, pickled and unpickled per file (a frozen
    dataclass cost about three times as much to build and to pickle).
    """

    file: int
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
#: What a worker sends for one job: (seen, value, error, changed). The value is a root hash
#: (TREE), subtree roots (RANGE), digests in the order asked (HASH) or (root hash, digests)
#: (ONEPASS).
Reply = tuple[tuple[int, int, int, int] | None, object, str | None, bool]


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


class Result(NamedTuple):
    """A job's reply as the client uses it (a named tuple: one per file)."""

    job: Job
    seen: tuple[int, int, int, int] | None
    #: A descriptor (TREE), subtree roots (RANGE), ``(name, digest)`` pairs (HASH) or both
    #: (ONEPASS: ``(descriptor, pairs)``).
    value: Value | None
    error: str | None = None
    changed: bool = False


def run_job(job: Job, roots: dict[str, int]) -> Reply:
    """Open, stat, hash as ``job`` says, stat again (``roots``: root descriptors to reuse)."""
    try:
        fd = _open(job, roots)
    except Error as e:
        return None, None, e.message, False
    try:
        seen = stat_key(os.fstat(fd))
        if seen[0] != job.size:
            raise FileChangedError("file changed size since it was listed")
        value = _hash(fd, job)
        if stat_key(os.fstat(fd)) != seen:
            raise FileChangedError("file changed while it was being hashed")
    except Error as e:
        return None, None, e.message, isinstance(e, FileChangedError)
    except OSError as e:
        return None, None, f"read error: {e.strerror}", False
    finally:
        os.close(fd)
    return seen, value, None, False


def file_digests(fd: int, names: tuple[str, ...], size: int) -> tuple[bytes, ...]:
    """The whole-file digests ``names`` of the first ``size`` bytes of ``fd``, in one read."""
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
    return tuple(h.digest() for h in hashers)


def file_hashes(fd: int, names: tuple[str, ...], size: int) -> Hashes:
    """:func:`file_digests` paired with their names."""
    return tuple(zip(names, file_digests(fd, names, size), strict=True))


def _hash(fd: int, job: Job) -> object:
    if job.kind is Kind.HASH:
        return file_digests(fd, job.hashes, job.size)
    assert job.params is not None  # noqa: S101 - the plan sets it
    if job.kind is Kind.RANGE:
        from pyverity.hashing.subtree import hash_subtrees

        return tuple(hash_subtrees(fd, job.params, job.start, job.end, job.height))
    # The builders the local pools use: manifest's one read, sign's build_tree.
    if job.kind is Kind.ONEPASS:
        from pyverity.hashing.onepass import hash_once

        once = hash_once(fd, job.params, job.hashes)
        return once.descriptor.root_hash, tuple(d for _, d in once.hashes)
    from pyverity.hashing import build_tree

    return build_tree(fd, job.params, keep_tree=False, jobs=1).descriptor.root_hash


def run_unit(jobs: list[Job]) -> list[Reply]:
    """The cluster task: one :data:`Reply` per job (each root directory opened once)."""
    roots: dict[str, int] = {}
    try:
        return [run_job(job, roots) for job in jobs]
    finally:
        for fd in roots.values():
            os.close(fd)


def pack_replies(replies: list[Reply]) -> bytes:
    """A unit's replies as one bytes object (plain tuples, ints and bytes, pickled in C)."""
    return pickle.dumps(replies, protocol=5)


def load_replies(blob: bytes) -> list[Reply]:
    """The client's side of :func:`pack_replies`. The bytes come from a worker, trusted as
    everything Dask delivers from it is (Dask itself unpickles a task's result)."""
    replies: list[Reply] = pickle.loads(blob)  # noqa: S301 - see the docstring
    return replies


def run_packed(jobs: list[Job]) -> bytes:
    """The cluster task: :func:`run_unit`, its replies packed (:func:`pack_replies`)."""
    return pack_replies(run_unit(jobs))


def _value(job: Job, value: object) -> Value:
    if job.kind is Kind.HASH:
        return tuple(zip(job.hashes, value, strict=True))  # type: ignore[call-overload]
    if job.kind is Kind.RANGE:
        return value  # type: ignore[return-value]
    assert job.params is not None  # noqa: S101
    if job.kind is Kind.ONEPASS:
        pair = cast("tuple[bytes, tuple[bytes, ...]]", value)
        root, digests = pair
        desc = Descriptor.for_tree(job.params, job.size, root)
        return desc, tuple(zip(job.hashes, digests, strict=True))
    return Descriptor.for_tree(job.params, job.size, value)  # type: ignore[arg-type]


def result_of(job: Job, reply: Reply) -> Result:
    """The client's view of one job's reply."""
    seen, value, error, changed = reply
    return Result(job, seen, None if error is not None else _value(job, value), error, changed)


def results_of(jobs: list[Job], replies: list[Reply]) -> list[Result]:
    """The client's view of a unit's replies (in the unit's order)."""
    return [result_of(job, reply) for job, reply in zip(jobs, replies, strict=True)]


def run_jobs(jobs: list[Job]) -> list[Result]:
    """:func:`run_unit` and :func:`results_of` in this process."""
    return results_of(jobs, run_unit(jobs))


class Opaque:
    """An argument carried as bytes, pickled once on the client and loaded only where it is
    used. Dask's ``submit`` walks every list and tuple of the arguments for futures (for a
    unit of named tuples, that cost more than pickling it), and the scheduler deserializes
    every task it is given: both see one bytes object instead of a unit's hundreds of jobs.
    The worker trusts these bytes as it trusts the rest of what Dask sends it."""

    __slots__ = ("_blob", "_value")

    def __init__(self, value: object) -> None:
        self._value = value
        self._blob: bytes | None = None

    @property
    def value(self) -> object:
        if self._blob is not None:
            self._value = pickle.loads(self._blob)  # noqa: S301 - see the class's docstring
            self._blob = None
        return self._value

    def __reduce__(self) -> tuple[Callable[[bytes], Opaque], tuple[bytes]]:
        blob = self._blob if self._blob is not None else pickle.dumps(self._value, protocol=5)
        return _opaque, (blob,)


def _opaque(blob: bytes) -> Opaque:
    o = Opaque(None)
    o._blob = blob
    return o


def run_opaque(fn: Callable[[Any], object], arg: Opaque) -> object:
    """What the engine submits: ``fn`` of the value ``arg`` carries."""
    return fn(arg.value)
