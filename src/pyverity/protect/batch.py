"""Many files at once: hash in worker processes, finish (sign, write, appraise) in the parent.

Keys and keyrings stay in the parent (``cryptography`` key objects are not picklable, and key
material should not be copied into workers); workers only run picklable top-level functions
such as :func:`~pyverity.protect.sign.hash_file` and :func:`measure_file`. A failure of one file
never stops the others: it comes back as a :class:`Failure`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from pyverity.errors import Error, FileChangedError, InputError, Reason
from pyverity.format.descriptor import Descriptor
from pyverity.fs.openfile import FileRef, open_target
from pyverity.protect.attrs import (
    InvalidProtectionError,
    Protection,
    ProtectionKind,
    read_protection,
)
from pyverity.protect.gate import classic_hash_algo, compute

__all__ = [
    "Failure",
    "FileRef",
    "Measured",
    "Outcome",
    "expand_paths",
    "map_files",
    "measure_file",
    "uncomputable",
]

T = TypeVar("T")
#: What a worker function is given: a path (the Python API's) or a :class:`FileRef` (the CLI's).
P = TypeVar("P", str, FileRef)


@dataclass(frozen=True)
class Failure:
    """Why one file failed: the error's one-line message, remedy, class name and exit code."""

    message: str
    remedy: str | None = None
    error: str = "Error"
    exit_code: int = 1
    #: For appraisal errors: the error's :class:`~pyverity.errors.Reason`.
    reason: Reason | None = None


@dataclass(frozen=True)
class Outcome(Generic[T]):
    path: str
    value: T | None
    failure: Failure | None


def _name(target: str | FileRef) -> str:
    return target.path if isinstance(target, FileRef) else target


def _guard(fn: Callable[[P], T], target: P) -> Outcome[T]:
    try:
        return Outcome(_name(target), fn(target), None)
    except Error as e:
        failure = Failure(e.message, e.remedy, type(e).__name__, e.exit_code, e.reason)
        return Outcome(_name(target), None, failure)


def map_files(
    fn: Callable[[P], T],
    paths: Sequence[P],
    *,
    jobs: int | None = None,
    on_done: Callable[[Outcome[T]], None] | None = None,
) -> Iterator[Outcome[T]]:
    """Apply picklable ``fn`` to each path or :class:`FileRef`, in ``jobs`` processes (default:
    CPUs; 1 = inline). A worker opens a :class:`FileRef` itself, beneath its root.

    Outcomes are yielded in the order of ``paths``; ``on_done`` sees each as it completes.
    """
    workers = min(jobs or os.cpu_count() or 1, len(paths))
    if workers <= 1:
        for p in paths:
            out = _guard(fn, p)
            if on_done is not None:
                on_done(out)
            yield out
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future[Outcome[T]], int] = {}
        results: dict[int, Outcome[T]] = {}
        it = iter(enumerate(paths))
        next_index = 0

        def submit() -> bool:
            try:
                i, p = next(it)
            except StopIteration:
                return False
            pending[pool.submit(_guard, fn, p)] = i
            return True

        for _ in range(workers * 2):
            if not submit():
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                out = fut.result()
                results[i] = out
                if on_done is not None:
                    on_done(out)
                submit()
            while next_index in results:
                yield results.pop(next_index)
                next_index += 1


def expand_paths(paths: Iterable[str], *, recursive: bool) -> list[FileRef]:
    """The files named, as :class:`FileRef`: with ``recursive``, regular files under
    directories (sorted), walked through descriptors beneath each directory named, never
    following a symlink (a symlinked directory inside is not descended; a symlink named with
    ``recursive`` is refused), each opened later beneath that directory (a directory swapped
    for a symlink after the listing is refused then); without, paths as given, opened with
    ``O_NOFOLLOW`` on the last component (a directory then fails when opened)."""
    import stat

    from pyverity.fs import beneath

    out: list[FileRef] = []
    for p in paths:
        if not recursive:
            out.append(FileRef(None, p))
            continue
        try:
            fd = os.open(p, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            out.append(FileRef(None, p))  # fails when opened, with its reason
            continue
        try:
            st = os.fstat(fd)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                raise InputError(
                    f"'{p}' is a symbolic link: -r walks trees without following symlinks",
                    remedy="name the directory it points to",
                )
            if not stat.S_ISDIR(mode):
                out.append(FileRef(None, p))
                continue
            root_id = (st.st_dev, st.st_ino)
            try:
                out.extend(
                    FileRef(p, rel, root_id) for rel, is_dir in beneath.walk_tree(fd) if not is_dir
                )
            except OSError as e:
                raise beneath.input_error(e, p) from e
        finally:
            os.close(fd)
    return out


@dataclass(frozen=True)
class Measured:
    """What a verifier needs from one file, computed without any key: the parsed attributes
    (or why they are invalid) and the content's descriptor or whole-file hash."""

    protection: Protection | None
    invalid: str | None
    computed: Descriptor | bytes | None
    #: Why ``invalid``: ``malformed``, or ``unsupported`` (a hash pyverity cannot compute).
    invalid_reason: Reason = Reason.MALFORMED


def uncomputable(protection: Protection) -> Measured | None:
    """The verdict on a classic file whose hash algorithm pyverity cannot compute here
    (reason ``unsupported``), or None when its content can be hashed."""
    if protection.kind is not ProtectionKind.CLASSIC:
        return None
    alg = classic_hash_algo(protection)
    if alg.hashlib_name is not None:
        return None
    return Measured(None, f"hash algorithm {alg.name} is not supported", None, Reason.UNSUPPORTED)


def measure_file(
    path: str | FileRef, namespace: str = "security", jobs: int | None = 1
) -> Measured:
    """Open ``path`` once (:func:`~pyverity.fs.openfile.open_target`), read and check its
    attributes, hash its content as they say (:func:`~pyverity.protect.gate.compute`); the
    parent judges it with the keyring."""
    fd = open_target(path)
    try:
        try:
            protection = read_protection(fd, namespace)
        except InvalidProtectionError as e:
            return Measured(None, str(e), None)
        if protection.kind is ProtectionKind.NONE:
            return Measured(protection, None, None)
        refused = uncomputable(protection)
        if refused is not None:
            return refused
        return Measured(protection, None, compute(fd, protection, jobs=jobs).value)
    except FileChangedError:
        raise
    except OSError as e:  # pragma: no cover - open_regular and the builders wrap OSError
        raise InputError(f"can't read '{_name(path)}': {e.strerror}") from e
    finally:
        os.close(fd)
