"""Computing entries: a pure function of (file bytes, options), run inline or in workers.

:func:`compute_one` opens one path beneath a root (no symlink followed) and reads it once
(:func:`~pyverity.hashing.onepass.hash_once`). :func:`compute_batch` is the picklable task a
worker process (or, later, a cluster worker) runs over a batch of paths; it needs no key and
writes nothing. :func:`ordered_map` runs batches in a process pool with a bounded number in
flight and yields results in input order, so the output never depends on the number of jobs
and memory does not grow with the tree.
"""

from __future__ import annotations

import functools
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pyverity.errors import Error, FileChangedError
from pyverity.format.params import TreeParams
from pyverity.hashing.onepass import OnePass, hash_once
from pyverity.manifest.walk import MissingError, open_beneath, open_root

__all__ = [
    "Computed",
    "DigestOptions",
    "Failed",
    "Task",
    "compute_batch",
    "compute_one",
    "ordered_map",
]

T = TypeVar("T")
R = TypeVar("R")

#: Paths per task handed to a worker: amortises the pool's per-task cost on small files.
BATCH = 64
#: Bytes per task, so that big files spread over the workers.
BATCH_BYTES = 16 << 20


@dataclass(frozen=True)
class DigestOptions:
    """What an entry's digests depend on, besides the file's bytes."""

    params: TreeParams
    file_hashes: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """Compute the file ``path`` beneath the directory ``root``."""

    root: str
    path: bytes
    #: Expected size (a hint for cutting batches by bytes).
    size: int = 0


@dataclass(frozen=True)
class Computed:
    """A file's digests, its permission bits and the identity it had while read."""

    path: bytes
    mode: int
    digests: OnePass


@dataclass(frozen=True)
class Failed:
    """Why a file could not be computed (``changed``: it changed while read)."""

    path: bytes
    message: str
    changed: bool = False
    missing: bool = False


def compute_one(root_fd: int, path: bytes, options: DigestOptions) -> Computed | Failed:
    """Open ``path`` beneath ``root_fd`` and compute its digests in one read."""
    try:
        fd = open_beneath(root_fd, path)
    except MissingError as e:
        return Failed(path, e.message, missing=True)
    except Error as e:
        return Failed(path, e.message)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        digests = hash_once(fd, options.params, options.file_hashes)
    except FileChangedError as e:
        return Failed(path, e.message, changed=True)
    except Error as e:
        return Failed(path, e.message)
    except OSError as e:
        return Failed(path, f"read error: {e.strerror}")
    finally:
        os.close(fd)
    return Computed(path, mode, digests)


def compute_batch(options: DigestOptions, tasks: list[Task]) -> list[Computed | Failed]:
    """Compute every task (the unit of work of a worker process)."""
    roots: dict[str, int] = {}
    try:
        out: list[Computed | Failed] = []
        for task in tasks:
            fd = roots.get(task.root)
            if fd is None:
                fd = roots[task.root] = open_root(task.root)
            out.append(compute_one(fd, task.path, options))
        return out
    finally:
        for fd in roots.values():
            os.close(fd)


def _batches(items: Iterable[T], size: int, weight: Callable[[T], int] | None) -> Iterator[list[T]]:
    batch: list[T] = []
    total = 0
    for item in items:
        batch.append(item)
        total += weight(item) if weight is not None else 0
        if len(batch) >= size or total >= BATCH_BYTES:
            yield batch
            batch = []
            total = 0
    if batch:
        yield batch


def ordered_map(
    fn: Callable[[list[T]], list[R]],
    items: Iterable[T],
    *,
    jobs: int,
    batch: int = BATCH,
    weight: Callable[[T], int] | None = None,
) -> Iterator[R]:
    """``fn`` over batches of ``items``, results flattened in input order.

    ``jobs <= 1`` runs inline. Otherwise ``fn`` (picklable) runs in ``jobs`` processes with at
    most ``4 * jobs`` batches in flight; a batch holds at most ``batch`` items and about
    :data:`BATCH_BYTES` of ``weight``.
    """
    if jobs <= 1:
        for chunk in _batches(items, batch, weight):
            yield from fn(chunk)
        return
    window = 4 * jobs
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: deque[Future[list[R]]] = deque()
        for chunk in _batches(items, batch, weight):
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= window:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def computer(options: DigestOptions) -> Callable[[list[Task]], list[Computed | Failed]]:
    """The picklable batch function for ``options``."""
    return functools.partial(compute_batch, options)
