"""Running builds (mixed into :class:`~.core.Daemon`): dispatching jobs to workers in priority
order, preempting a background build for a first use, and committing what workers send back —
progress, checkpoints (leaf hashes appended, then the row), and finished trees, which are
appraised and published before their state is committed.

A build is started only after the file is opened again (``O_NOFOLLOW|O_NONBLOCK``), checked to
be the same regular file with the same attribute values, and its descriptor is handed to the
worker; a checkpoint is reused only if its attribute fingerprint and identity snapshot match.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import selectors
import time
from typing import TYPE_CHECKING, TypeVar

from pyverity.daemon import kernelstore, lifecycle
from pyverity.daemon.lifecycle import Cause, Decision, Observation
from pyverity.daemon.pool import BACKGROUND, FIRST_USE, Job, JobQueue, Worker
from pyverity.daemon.protection import Appraisal, appraise
from pyverity.daemon.watcher import open_beneath
from pyverity.errors import Error, FileChangedError, IntegrityError, StorageError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity
from pyverity.hashing.result import MerkleTree
from pyverity.store.statedb import Checkpoint, State

if TYPE_CHECKING:
    from pyverity.daemon.config import DaemonConfig
    from pyverity.daemon.pool import WorkerPool
    from pyverity.keys import Keyring
    from pyverity.protect import Protection
    from pyverity.store.cache import TreeStore
    from pyverity.store.checkpoint import PartialStore
    from pyverity.store.statedb import FileRecord, StateDB

__all__ = ["BuildsMixin"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_RETRIES = 5


class BuildsMixin:
    if TYPE_CHECKING:
        config: DaemonConfig
        roots: tuple[str, ...]
        db: StateDB
        store: TreeStore
        partial: PartialStore
        keyring: Keyring | None
        queue_: JobQueue
        running: dict[str, Job]
        retry_at: dict[str, float]
        retries: dict[str, int]
        settle: dict[str, float]
        metrics: dict[str, int]
        pool: WorkerPool | None
        _sel: selectors.BaseSelector
        _job_ids: int
        _stop: bool

        @staticmethod
        def _need(value: T | None) -> T: ...
        def _observe_fd(self, path: str, fd: int) -> Observation | None: ...
        def scan_file(self, path: str, cause: Cause = Cause.SCAN) -> None: ...
        def process_events(self) -> None: ...
        def enqueue(self, rec: FileRecord, priority: int) -> None: ...
        def apply(self, path: str, old: FileRecord | None, decision: Decision | None) -> None: ...

    def _dispatch(self) -> None:
        pool = self._need(self.pool)
        self.process_events()
        deferred: list[Job] = []
        now = time.monotonic()
        for path, when in list(self.retry_at.items()):
            if when <= now:
                del self.retry_at[path]
                rec = self.db.get(path)
                if rec is not None and rec.state in (State.PENDING, State.BUILDING):
                    self.enqueue(rec, BACKGROUND)
        while (worker := pool.idle()) is not None:
            job = self.queue_.pop()
            if job is None:
                break
            waiting = job.priority == BACKGROUND and self.settle.get(job.path, 0.0) > now
            if job.path in self.running or waiting:
                deferred.append(job)
                continue
            self.settle.pop(job.path, None)
            try:
                self._start(worker, job)
            except Error as e:  # one file's trouble must not stop the daemon
                log.warning("%s: cannot start its build: %s", job.path, e)
        for job in deferred:
            self.queue_.push(job)
        if self.queue_.peek_priority() == FIRST_USE and pool.idle() is None:
            victims = [
                j for j in self.running.values() if j.priority == BACKGROUND and not j.stopping
            ]
            if victims and not any(j.stopping == "yield" for j in self.running.values()):
                victim = victims[0]
                victim.stopping = "yield"
                self._need(victim.worker).tell("yield", victim.job_id)
                self.metrics["builds_preempted"] += 1

    def _start(self, worker: Worker, job: Job) -> None:
        rec = self.db.get(job.path)
        if rec is None or rec.attr_fp != job.attr_fp:
            return
        try:
            fd = open_beneath(self.roots, job.path)
        except OSError:
            self.apply(job.path, rec, Decision(None, cancel=True))
            return
        try:
            obs = self._observe_fd(job.path, fd)
            if obs is None or obs.declared.fingerprint != rec.attr_fp:
                if obs is not None:
                    self.apply(job.path, rec, lifecycle.on_observe(rec, obs, Cause.ATTR))
                return
            if obs.snapshot != rec.snapshot:
                self._unexplained_change(job, rec, obs.snapshot)
                return
            prot = obs.declared.protection
            if prot is None or not prot.has_tree:
                self.apply(job.path, rec, lifecycle.on_observe(rec, obs, Cause.REBUILD))
                return
            if self.config.backend == "kernel" and self._kernel_verity(job.path, rec, fd, prot):
                return
            file_id = self._need(rec.id)
            params = prot.tree_params()
            offset, leaves = self._saved_leaves(file_id, rec.attr_fp, obs.snapshot, params)
            self._job_ids += 1
            job.job_id = self._job_ids
            job.snapshot = obs.snapshot
            job.offset = job.progress = offset
            job.leaf_bytes = len(leaves)
            job.leaves_sha256 = hashlib.sha256(leaves)
            job.stopping = ""
            job.protection = prot
            job.file_id = file_id
            job.start = offset
            spec = {
                "job_id": job.job_id,
                "alg": params.hash_alg.number,
                "block_size": params.block_size,
                "salt": params.salt,
                "snapshot": list(obs.snapshot),
                "offset": offset,
                "leaves": leaves,
                "checkpoint_seconds": self.config.checkpoint_interval,
                # A lone build may use every CPU; concurrent builds share them.
                "threads": max(1, (os.cpu_count() or 1) // max(1, len(self.running) + 1)),
            }
            if offset:
                log.info("%s: resuming build at offset %d", job.path, offset)
            else:
                log.info("%s: building from offset 0", job.path)
            worker.start(job, spec, fd)
        finally:
            os.close(fd)
        self.running[job.path] = job
        self.metrics["builds_started"] += 1
        self.db.put(rec.evolve(state=State.BUILDING, progress=offset, error=""))

    def _kernel_verity(self, path: str, rec: FileRecord, fd: int, prot: Protection) -> bool:
        """Kernel backend: a file that already has fs-verity is READY (the kernel's descriptor
        is the declared one and appraises) or MISMATCH without a build; False otherwise."""
        try:
            result = kernelstore.adopt(fd, prot, self.keyring)
        except Error as e:
            log.warning("%s: cannot read its kernel fs-verity state: %s", path, e)
            return False
        if result is None:
            return False
        log.info("%s: fs-verity already enabled in the kernel: %s", path, result.state)
        self._settled(rec, result, "")
        return True

    def _to_kernel(self, job: Job, descriptor: Descriptor) -> str:
        """Kernel backend: enable fs-verity on the proven file; "" or why the kernel refused."""
        try:
            fd = open_beneath(self.roots, job.path)
        except OSError as e:
            raise FileChangedError(f"cannot open it again: {e.strerror}") from e
        try:
            return kernelstore.hand_over(fd, job.path, descriptor, job.snapshot)
        finally:
            os.close(fd)

    def _unexplained_change(self, job: Job, rec: FileRecord, snapshot: FileIdentity) -> None:
        """Size or mtime changed with no event seen yet: retry (the event may be on its way);
        after a few retries with no explanation, the content is taken as written."""
        n = self.retries.get(job.path, 0) + 1
        self.retries[job.path] = n
        if n <= _MAX_RETRIES:
            self.retry_at[job.path] = time.monotonic() + 0.1 * n
            return
        seen = lifecycle.describe_change(rec.snapshot, snapshot)
        self.apply(job.path, rec, lifecycle.on_write(rec, snapshot, seen=seen))

    def _saved_leaves(
        self, file_id: int, attr_fp: bytes, snapshot: FileIdentity, params: TreeParams
    ) -> tuple[int, bytes]:
        """The checkpoint to resume from, if it is for these attributes and this content."""
        cp = self.db.get_checkpoint(file_id)
        if cp is None:
            return 0, b""
        why = "attributes or identity changed"
        if cp.attr_fp == attr_fp and cp.snapshot == snapshot:
            nbytes = cp.offset // params.block_size * params.digest_size
            saved = self.partial.load(file_id, nbytes, cp.leaves_sha256)
            if saved is not None:
                return cp.offset, saved
            why = "leaf hashes missing, or not matching the checkpoint's checksum"
        log.info("discarding the checkpoint of file %d at %d: %s", file_id, cp.offset, why)
        self.db.delete_checkpoint(file_id)
        self.partial.discard(file_id)
        return 0, b""

    def _finish(self, worker: Worker) -> Job | None:
        job = worker.job
        worker.job = None
        if job is not None:
            job.worker = None
            if self.running.get(job.path) is job:
                del self.running[job.path]
        return job

    def on_worker(self, worker: Worker) -> None:
        try:
            msg = worker.conn.recv()
        except (EOFError, OSError):
            self._worker_died(worker)
            return
        kind = msg[0]
        job = worker.job
        if kind == "hello" or job is None or msg[1] != job.job_id:
            return
        if kind == "done":
            job.progress = job.snapshot[2]
        if kind == "progress":
            job.progress = msg[2]
        elif kind == "checkpoint":
            self._checkpoint(job, msg[2], msg[3])
        else:
            self._finish(worker)
            self.metrics["bytes_hashed"] += max(0, job.progress - job.start)
            if kind == "stopped":
                self._stopped(job, msg[2], msg[3])
            elif kind == "failed":
                self._failed(job, msg[2], msg[3])
            elif kind == "done":
                self._done(job, Descriptor.from_bytes(msg[2]), msg[3])

    def _checkpoint(self, job: Job, offset: int, leaves: bytes) -> None:
        job.progress = max(job.progress, offset)
        if job.stopping == "cancel":
            return
        file_id = job.file_id
        try:
            self.partial.append(file_id, leaves, job.leaf_bytes)
        except StorageError as e:
            log.warning("%s: checkpoint not saved: %s", job.path, e)
            return
        job.leaf_bytes += len(leaves)
        job.leaves_sha256.update(leaves)
        job.offset = offset
        checksum = job.leaves_sha256.digest()
        self.db.put_checkpoint(Checkpoint(file_id, job.attr_fp, offset, job.snapshot, checksum))

    def _stopped(self, job: Job, why: str, offset: int) -> None:
        job.progress = max(job.progress, offset)
        if why == "yield" and job.stopping == "yield":
            rec = self.db.get(job.path)
            if rec is not None and rec.attr_fp == job.attr_fp:
                self.db.put(rec.evolve(state=State.PENDING, progress=job.offset))
                self.queue_.push(Job(job.path, BACKGROUND, job.attr_fp))

    def _current(self, job: Job) -> FileRecord | None:
        """The row a finished job still belongs to: not cancelled, same attribute values."""
        if job.stopping == "cancel":
            return None
        rec = self.db.get(job.path)
        return rec if rec is not None and rec.attr_fp == job.attr_fp else None

    def _failed(self, job: Job, kind: str, message: str) -> None:
        rec = self._current(job)
        if rec is None:
            return
        self.metrics["builds_failed"] += 1
        n = self.retries.get(job.path, 0) + 1
        self.retries[job.path] = n
        if kind == "FileChangedError" and n <= _MAX_RETRIES:
            # An identity change at commit with no write event seen: observe again, retry.
            log.info("%s: %s; retrying", job.path, message)
            self.db.put(rec.evolve(state=State.PENDING, error=""))
            self.scan_file(job.path, Cause.SCAN)
            if job.path not in self.queue_ and self.db.get(job.path) is not None:
                rec2 = self.db.get(job.path)
                if rec2 is not None and rec2.state is State.PENDING:
                    self.enqueue(rec2, job.priority)
            return
        delay = min(300.0, 2.0**n)
        log.warning("%s: build failed (%s); retry in %.0f s", job.path, message, delay)
        self.db.put(rec.evolve(state=State.PENDING, error=message))
        self.retry_at[job.path] = time.monotonic() + delay

    def _done(self, job: Job, descriptor: Descriptor, tree: bytes) -> None:
        rec = self._current(job)
        if rec is None:
            return
        if rec.snapshot != job.snapshot:
            # Touched during the build (no write event): hash the current content again.
            self.db.put(rec.evolve(state=State.PENDING))
            self.enqueue(rec, job.priority)
            return
        built = MerkleTree(descriptor, tree)
        result = appraise(self._need(job.protection), built, self.keyring)
        if result.state != "READY" and job.start > 0:
            # Resumed from a checkpoint: rule out the saved leaves before blaming the content.
            log.warning("%s: resumed build does not match; building again from 0", job.path)
            self.db.delete_checkpoint(self._need(rec.id))
            self.partial.discard(self._need(rec.id))
            self.db.put(rec.evolve(state=State.PENDING, progress=0))
            self.enqueue(rec, job.priority)
            return
        refused = ""
        in_kernel = False
        if result.state == "READY" and self.config.backend == "kernel":
            try:
                refused = self._to_kernel(job, descriptor)
                in_kernel = not refused
            except FileChangedError as e:
                self._failed(job, "FileChangedError", str(e))
                return
            except IntegrityError as e:
                result = Appraisal("MISMATCH", f"kernel fs-verity: {e.message}", result.digest)
        if result.state == "READY" and not in_kernel:
            try:
                self.store.put(built)
            except StorageError as e:
                self._failed(job, "StorageError", str(e))
                return
        self.retries.pop(job.path, None)
        self._settled(rec, result, kernelstore.FALLBACK + refused if refused else "")

    def _settled(self, rec: FileRecord, result: Appraisal, note: str) -> None:
        """Commit a finished appraisal (READY, or MISMATCH/INVALID with its reason)."""
        if result.state == "READY":
            self.metrics["builds_ready"] += 1
            new = rec.evolve(
                state=State.READY,
                progress=rec.size,
                error=note,
                digest=result.digest,
                ready_ns=time.time_ns(),
                recheck=False,
            )
        elif result.state == "MISMATCH" and rec.recheck:
            # A READY file re-hashed after a ctime-only change: written with its mtime put back.
            self.metrics["builds_mismatch"] += 1
            why = "content written since protection (ctime changed, content differs)"
            new = rec.evolve(state=State.STALE, error=why, progress=0, recheck=False)
        else:
            self.metrics["builds_mismatch"] += 1
            new = rec.evolve(
                state=State(result.state), error=result.reason, progress=rec.size, recheck=False
            )
        self.db.delete_checkpoint(self._need(rec.id))
        self.partial.discard(self._need(rec.id))
        self.apply(rec.path, rec, Decision(new))

    def _worker_died(self, worker: Worker) -> None:
        pool = self._need(self.pool)
        job = self._finish(worker)
        log.warning("worker %d exited", worker.pid)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(worker.conn)
        if self._stop:
            return
        if time.monotonic() - worker.started < 1.0:
            time.sleep(0.5)  # a worker that dies at once would otherwise be respawned in a loop
        new = pool.replace(worker)
        self._sel.register(new.conn, selectors.EVENT_READ, ("worker", new))
        if job is not None and not job.stopping:
            self.queue_.push(Job(job.path, job.priority, job.attr_fp))
