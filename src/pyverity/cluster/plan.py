"""Cutting work into tasks bounded in bytes.

Small files go whole, many to a task (at most :attr:`Cut.task_bytes` and :attr:`Cut.files`
each). A file bigger than ``task_bytes`` is cut into byte ranges of whole, aligned subtrees
(:mod:`pyverity.hashing.subtree`): each range task returns one root per subtree and the client
folds the levels above, so one big file's tree spreads over the whole cluster. A whole-file
hash (``Kind.HASH``) is sequential and stays one task per file, whatever its size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyverity.cluster.tasks import Job, Kind
from pyverity.format.params import TreeParams
from pyverity.hashing.subtree import subtree_bytes, subtree_height

__all__ = ["Cut", "batches", "jobs_for"]


@dataclass(frozen=True)
class Cut:
    #: Bytes of data per task (a range of a big file, or a batch of small ones).
    task_bytes: int = 64 << 20
    #: Whole files per task at most.
    files: int = 512

    def __post_init__(self) -> None:
        if self.task_bytes < 1 or self.files < 1:
            raise ValueError("task_bytes and files must be positive")


def jobs_for(
    index: int,
    path: str,
    size: int,
    cut: Cut,
    *,
    params: TreeParams | None,
    hashes: tuple[str, ...] = (),
    root: str = "",
) -> list[Job]:
    """The jobs of one file: its tree (``params``) and/or its whole-file hashes (``hashes``).

    A small file is one job (both in one read: ONEPASS); a big one is range jobs for the tree
    plus one HASH job for the whole-file hashes. Nothing asked: no job.
    """
    if params is None:
        return [Job(index, path, Kind.HASH, size, hashes=hashes, root=root)] if hashes else []
    if size <= cut.task_bytes:  # the usual small file, without looking up the subtree shape
        kind = Kind.ONEPASS if hashes else Kind.TREE
        return [Job(index, path, kind, size, params, hashes, root=root)]
    height, sub = _shape(params, cut.task_bytes)
    if size <= max(sub, cut.task_bytes):
        kind = Kind.ONEPASS if hashes else Kind.TREE
        return [Job(index, path, kind, size, params, hashes=hashes, root=root)]
    step = sub * max(1, cut.task_bytes // sub)
    tail = [Job(index, path, Kind.HASH, size, hashes=hashes, root=root, part=-1)] if hashes else []
    return tail + [
        Job(
            index,
            path,
            Kind.RANGE,
            size,
            params,
            start=s,
            end=min(s + step, size),
            height=height,
            part=p,
            root=root,
        )
        for p, s in enumerate(range(0, size, step))
    ]


@functools.lru_cache(maxsize=64)
def _shape(params: TreeParams, task_bytes: int) -> tuple[int, int]:
    """The height of a range's subtrees and the bytes each covers (the same for every file)."""
    height = subtree_height(params, task_bytes)
    return height, subtree_bytes(params, height)


def batches(jobs: Iterable[Job], cut: Cut) -> Iterator[list[Job]]:
    """Tasks in order: range jobs alone, whole files grouped up to the cut's bounds."""
    batch: list[Job] = []
    total = 0
    for job in jobs:
        if job.kind is Kind.RANGE or job.size >= cut.task_bytes or job.part < 0:
            if batch:
                yield batch
                batch, total = [], 0
            yield [job]
            continue
        batch.append(job)
        total += job.size
        if len(batch) >= cut.files or total >= cut.task_bytes:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch
