"""Worker processes and the priority queue of build jobs.

First-use requests (``FIRST_USE``) are served before background builds; when every worker is
busy with background work, one of those builds is asked to *yield*: it checkpoints, stops, and
is requeued to resume later, so a first use waits for a chunk (~1 ms), not for a whole file.

The scheduler sees workers through :class:`BuildWorker` and :class:`Pool`, so that tests can run
it with workers that build in memory (``tests/support/daemon.py``).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from typing import TYPE_CHECKING, Protocol

from pyverity.daemon import protocol as msg
from pyverity.fs.openfile import FileIdentity

if TYPE_CHECKING:
    from pyverity.protect import Protection

__all__ = [
    "BACKGROUND",
    "FIRST_USE",
    "BuildWorker",
    "Job",
    "JobQueue",
    "Pool",
    "Worker",
    "WorkerPool",
]

log = logging.getLogger(__name__)

FIRST_USE = 0
BACKGROUND = 1
_FROM_WORKER = (
    msg.Hello,
    msg.Progress,
    msg.Checkpoint,
    msg.Stopped,
    msg.Failed,
    msg.Done,
    msg.BatchDone,
)


@dataclass(eq=False)
class Job:
    path: str
    priority: int
    attr_fp: bytes
    seq: int = 0
    #: The file's size when queued (-1: unknown); small files are built by the daemon itself.
    size: int = -1
    #: Set while running: the worker, and the offset/leaf bytes of the last checkpoint.
    worker: BuildWorker | None = None
    job_id: int = 0
    offset: int = 0
    leaf_bytes: int = 0
    snapshot: FileIdentity = field(default_factory=lambda: FileIdentity((0, 0, 0, 0)))
    progress: int = 0
    #: Why the daemon asked the running build to stop (None: it was not asked).
    stopping: msg.StopReason | None = None
    #: What the running build is checked against, the inode's row, the offset it started at.
    protection: Protection | None = None
    file_id: int = 0
    start: int = 0
    #: SHA-256 over the leaf hashes saved so far (the checkpoint's checksum).
    leaves_sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    #: Part of a worker's batch of small files (it neither yields nor checkpoints).
    batched: bool = False


class JobQueue:
    """One queued job per path; the lowest ``(priority, seq)`` first."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._jobs: dict[str, Job] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, path: str) -> bool:
        return path in self._jobs

    def get(self, path: str) -> Job | None:
        return self._jobs.get(path)

    def push(self, job: Job) -> None:
        """Queue ``job``, replacing a queued job of the same path (keeping the better priority)."""
        old = self._jobs.get(job.path)
        if old is not None:
            job.priority = min(job.priority, old.priority)
        job.seq = next(self._seq)
        self._jobs[job.path] = job
        heapq.heappush(self._heap, (job.priority, job.seq, job.path))

    def remove(self, path: str) -> Job | None:
        return self._jobs.pop(path, None)

    def peek_priority(self) -> int | None:
        self._drop_dead()
        return self._heap[0][0] if self._heap else None

    def pop(self) -> Job | None:
        self._drop_dead()
        if not self._heap:
            return None
        _, _, path = heapq.heappop(self._heap)
        return self._jobs.pop(path)

    def _drop_dead(self) -> None:
        while self._heap:
            prio, seq, path = self._heap[0]
            job = self._jobs.get(path)
            if job is not None and job.seq == seq and job.priority == prio:
                return
            heapq.heappop(self._heap)


class BuildWorker(Protocol):
    """A worker as the scheduler uses it: one build, or one batch of small files, at a time."""

    job: Job | None
    #: The jobs of the batch it is building, by job id (empty: none).
    batch: dict[int, Job]
    #: ``time.monotonic()`` when it was started.
    started: float

    @property
    def pid(self) -> int: ...

    def fileno(self) -> int: ...

    def start(self, job: Job, spec: msg.BuildSpec, fd: int) -> None:
        """Start building ``job`` over ``fd`` (the worker keeps its own copy of the fd)."""
        ...

    def start_batch(self, jobs: list[Job], batch: msg.SmallBatch) -> None:
        """Start building ``jobs`` (``batch``'s items, in order)."""
        ...

    def tell(self, m: msg.ToWorker) -> None: ...

    def recv(self) -> msg.FromWorker:
        """The next message; :class:`EOFError` or :class:`OSError` once the worker is gone."""
        ...

    def stop(self) -> None: ...


class Pool(Protocol):
    @property
    def workers(self) -> Sequence[BuildWorker]: ...

    def idle(self) -> BuildWorker | None: ...

    def replace(self, dead: BuildWorker) -> BuildWorker:
        """A new worker in the place of one that exited."""
        ...

    def stop(self) -> None: ...


class Worker:
    """One worker process, talking over a socket pair (:mod:`.protocol` messages pickled, fds
    by SCM_RIGHTS)."""

    def __init__(self, lock_path: str, nice: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pyverity.daemon.worker",
                    str(child.fileno()),
                    str(os.getpid()),
                    lock_path,
                    str(nice),
                ],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.job: Job | None = None
        self.batch: dict[int, Job] = {}
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.conn.fileno()

    def start(self, job: Job, spec: msg.BuildSpec, fd: int) -> None:
        self.job = job
        job.worker = self
        self.conn.send(spec)
        send_handle(self.conn, fd, self.pid)

    def start_batch(self, jobs: list[Job], batch: msg.SmallBatch) -> None:
        self.batch = {j.job_id: j for j in jobs}
        for j in jobs:
            j.worker = self
        self.conn.send(batch)

    def tell(self, m: msg.ToWorker) -> None:
        try:
            self.conn.send(m)
        except OSError as e:
            log.warning("worker %d unreachable: %s", self.pid, e)

    def recv(self) -> msg.FromWorker:
        m = self.conn.recv()
        if not isinstance(m, _FROM_WORKER):
            raise EOFError(f"worker {self.pid} sent {type(m).__name__}")  # noqa: TRY004 (gone)
        return m

    def stop(self) -> None:
        self.tell(msg.Exit())
        self.conn.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    """``size`` worker processes (:class:`Pool`)."""

    def __init__(self, size: int, lock_path: str, nice: int) -> None:
        self._lock_path = lock_path
        self._nice = nice
        self._workers: list[Worker] = [Worker(lock_path, nice) for _ in range(size)]

    @property
    def workers(self) -> Sequence[Worker]:
        return self._workers

    def idle(self) -> Worker | None:
        return next((w for w in self._workers if w.job is None and not w.batch), None)

    def replace(self, dead: BuildWorker) -> Worker:
        """Replace a worker that exited (its socket closed)."""
        if not isinstance(dead, Worker):
            raise TypeError(f"not a worker of this pool: {dead!r}")
        dead.conn.close()
        dead.proc.wait()
        new = Worker(self._lock_path, self._nice)
        self._workers[self._workers.index(dead)] = new
        return new

    def stop(self) -> None:
        for w in self._workers:
            w.stop()
