"""The scheduler: the queue, the workers, partial builds, the tree store and the kernel backend.

It starts queued builds in priority order (a first use preempts a background build), hands each
worker the descriptor of the file it opened again and checked against the row, commits what
workers send back — progress; checkpoints (leaf hashes appended with their checksum, then the
row); finished trees, appraised through :func:`.protection.appraise` (the ``protect`` gate) and
published before their state is committed — and hands results to the tracker as decisions.
Small files go to idle workers in batches of paths (the worker opens, builds and appraises
each, and publishes its cache entry; the flush before the commit makes those durable), or are
built here while every worker is on a bigger file (ADR 0006).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyverity.daemon import kernelstore, lifecycle
from pyverity.daemon import protocol as msg
from pyverity.daemon.lifecycle import Cause, Decision, Observation
from pyverity.daemon.pool import BACKGROUND, FIRST_USE, BuildWorker, Job, JobQueue, Pool
from pyverity.daemon.protection import appraise, keyring_certificates, mismatch
from pyverity.daemon.tracker import EVENTS_PER_TURN
from pyverity.daemon.watcher import open_beneath
from pyverity.errors import Error, FileChangedError, IntegrityError, StorageError
from pyverity.format.descriptor import Descriptor
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity
from pyverity.hashing.small import build_small, is_small
from pyverity.protect.gate import Verdict, VerdictState
from pyverity.store.cache import TreeCache
from pyverity.store.statedb import Checkpoint, FileRecord, State

if TYPE_CHECKING:
    from pyverity.daemon.config import DaemonConfig
    from pyverity.daemon.tracker import Tracker
    from pyverity.keys import Keyring
    from pyverity.protect import Protection
    from pyverity.store.cache import TreeStore
    from pyverity.store.checkpoint import PartialStore
    from pyverity.store.statedb import StateDB

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

_MAX_RETRIES = 5
#: How long one dispatch may spend building small files itself before the loop turns again
#: (events, the socket, workers' messages, commits).
_INLINE_SECONDS = 0.02
#: How many queued jobs that wait for a worker one dispatch steps over to reach small files.
_MAX_STEPPED_OVER = 32
#: A batch of small files for a worker: at most this many files and about this many bytes
#: (about 30 ms of a worker's time).
_BATCH_FILES = 64
_BATCH_BYTES = 4 << 20


class Scheduler:
    def __init__(
        self,
        config: DaemonConfig,
        tracker: Tracker,
        *,
        store: TreeStore,
        partial: PartialStore,
        keyring: Keyring | None,
        metrics: dict[str, int],
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.db: StateDB = tracker.db
        self.roots = tracker.roots
        self.store = store
        self.partial = partial
        self.keyring = keyring
        self.metrics = metrics
        self.queue = JobQueue()
        self.running: dict[str, Job] = {}
        self.retry_at: dict[str, float] = {}
        self.retries: dict[str, int] = {}
        #: Background builds wait until their file has been quiet for a moment (monotonic).
        self.settle_until: dict[str, float] = {}
        self.pool: Pool | None = None
        #: Called with a worker that died and the one that replaced it (the loop watches
        #: workers' sockets).
        self.on_replaced: Callable[[BuildWorker, BuildWorker], None] = lambda _d, _n: None
        self.stopping = False
        #: The last dispatch stopped at its time budget with small files still queued.
        self.more_now = False
        #: Files that may have a checkpoint (row or saved leaves): only theirs are deleted
        #: when a build settles or is cancelled (two statements and an unlink per file saved).
        self._checkpointed: set[int] = set()
        self._job_ids = 0
        #: Workers publish their batches' cache entries (made durable by the daemon).
        self._caching = config.backend == "cache"
        #: The keys workers appraise batches with: the daemon's own, as loaded.
        self._certificates = keyring_certificates(keyring)

    def _pool(self) -> Pool:
        if self.pool is None:
            raise StorageError("scheduler used before its pool was started")
        return self.pool

    # -- what the tracker asks ---------------------------------------------------------------------

    def enqueue(self, rec: FileRecord, priority: int) -> None:
        """Queue a build of ``rec``'s inode, unless one is queued or running under any of its
        paths (then a first use only raises that job's priority). A build being cancelled does
        not count: the new one starts once it has stopped."""
        for p in self.tracker.links(rec):
            running = self.running.get(p)
            if running is not None and running.stopping is not msg.StopReason.CANCEL:
                return
            queued = self.queue.get(p)
            if queued is not None:
                if priority < queued.priority:
                    self.queue.push(Job(p, priority, queued.attr_fp, size=queued.size))
                return
        self.queue.push(Job(rec.path, priority, rec.attr_fp, size=rec.size))

    def cancel(self, path: str, rec: FileRecord | None) -> None:
        for p in self.tracker.links(rec) if rec is not None else [path]:
            self.cancel_path(p)
        if rec is not None and rec.id is not None:
            self._drop_checkpoint(rec.id)

    def _drop_checkpoint(self, file_id: int) -> None:
        """Delete the checkpoint of ``file_id`` (row and saved leaves), if it may have one."""
        if file_id in self._checkpointed:
            self._checkpointed.discard(file_id)
            self.db.delete_checkpoint(file_id)
            self.partial.discard(file_id)

    def cancel_path(self, path: str) -> bool:
        """Stop the build queued or running under ``path``; whether there was one."""
        queued = self.queue.remove(path) is not None
        self.retry_at.pop(path, None)
        job = self.running.get(path)
        stopping = job.stopping if job is not None else None
        if job is not None and job.worker is not None and stopping is not msg.StopReason.CANCEL:
            # A yielding build is cancelled too: it would be queued again for old attributes.
            # A batch is not interrupted: its result for this file is dropped.
            job.stopping = msg.StopReason.CANCEL
            if not job.batched:
                job.worker.tell(msg.Cancel(job.job_id))
            self.metrics["builds_cancelled"] += 1
            return True
        return queued

    def building(self, rec: FileRecord) -> bool:
        """A build of ``rec``'s inode (under any path) runs, for these attributes, unstopped."""
        if rec.id is None:
            return False
        return any(
            (job := self.running.get(p)) is not None
            and not job.stopping
            and job.attr_fp == rec.attr_fp
            for p in self.tracker.links(rec)
        )

    def settle(self, path: str, until: float) -> None:
        self.settle_until[path] = until

    # -- start-up and shutdown -----------------------------------------------------------------

    def recover(self) -> None:
        """After a crash: keep the checkpoints ``crash_policy = resume`` may continue from."""
        resume = self.config.crash_policy == "resume"
        for rec in list(self.db.records((State.PENDING, State.BUILDING))):
            if rec.id is None:
                continue
            cp = self.db.get_checkpoint(rec.id)
            if not resume or cp is None:
                self.db.delete_checkpoint(rec.id)
                self.partial.discard(rec.id)
            offset = cp.offset if cp is not None and resume else 0
            self.db.put(rec.evolve(progress=offset))  # the rescan decides: resume, or STALE
        self._checkpointed = self.db.checkpoint_ids() | self.partial.ids()

    def drop_orphans(self) -> None:
        live = {r.id for r in self.db.records((State.PENDING, State.BUILDING))}
        for stale_id in self.partial.ids() - live:
            self.partial.discard(stale_id)

    def write_progress(self) -> None:
        for job in self.running.values():
            if not job.batched:
                self.db.set_progress(job.path, job.progress)

    def ask_to_yield(self) -> None:
        """Ask running builds to checkpoint and stop (shutdown)."""
        for job in self.running.values():
            if job.worker is not None and not job.stopping and not job.batched:
                job.stopping = msg.StopReason.YIELD
                job.worker.tell(msg.Yield(job.job_id))

    # -- dispatching -------------------------------------------------------------------------------

    def dispatch(self) -> None:
        pool = self._pool()
        self.tracker.process_events(EVENTS_PER_TURN)
        deferred: list[Job] = []
        now = time.monotonic()
        self._retry_due(now)
        # Small files go to an idle worker in batches; with none idle and no batch out (the
        # workers on big files), they are built here for up to _INLINE_SECONDS (ADR 0006). The
        # others go to idle workers. A job that waits for a worker is stepped over (a few) to
        # reach the small files queued behind it.
        # (The kernel backend checks each file's kernel state on an open descriptor first: its
        # small files are built here.)
        batching = self.config.backend != "kernel"
        stepped_over = 0
        self.more_now = False
        batch = _Batch()
        while True:
            worker = pool.idle()
            budget = time.monotonic() - now < _INLINE_SECONDS
            inline = budget and (not batching or (worker is None and not self._batches_out()))
            if worker is None and not inline:
                self.more_now = len(self.queue) > 0 and not self._batches_out()
                break
            job = self.queue.pop()
            if job is None:
                break
            waiting = job.priority == BACKGROUND and self.settle_until.get(job.path, 0.0) > now
            if job.path in self.running or job.path in batch.paths or waiting:
                deferred.append(job)
                continue
            small = is_small(job.size)
            if not small and (worker is None or batch.jobs):
                deferred.append(job)
                stepped_over += 1
                if stepped_over > _MAX_STEPPED_OVER:
                    break
                continue
            to_worker = batching and worker is not None
            if small and not (inline or to_worker):  # its turn comes at the next dispatch
                deferred.append(job)
                self.more_now = True
                break
            self.settle_until.pop(job.path, None)
            try:
                batch = self._begin(job, worker if to_worker or not small else None, batch, small)
            except Error as e:  # one file's trouble must not stop the daemon
                log.warning("%s: cannot start its build: %s", job.path, e)
        if batch.jobs:
            worker = pool.idle()  # the one the batch was gathered for: nothing else took it
            if worker is not None:
                self._send(worker, batch)
        for job in deferred:
            self.queue.push(job)
        if self.queue.peek_priority() == FIRST_USE and pool.idle() is None:
            self._preempt()

    def _begin(self, job: Job, worker: BuildWorker | None, batch: _Batch, small: bool) -> _Batch:
        """Start ``job`` on ``worker``, or here (``worker`` None), or, a small file, in
        ``batch`` for ``worker``; the batch to gather the next small files into."""
        if not small or worker is None:
            self._start(worker, job)
        elif self._prepare_batched(job, batch) and batch.full():
            self._send(worker, batch)
            return _Batch()
        return batch

    def _retry_due(self, now: float) -> None:
        """Queue again the builds whose retry time has come."""
        for path, when in list(self.retry_at.items()):
            if when <= now:
                del self.retry_at[path]
                rec = self.db.get(path)
                if rec is not None and rec.state in (State.PENDING, State.BUILDING):
                    self.enqueue(rec, BACKGROUND)

    def _batches_out(self) -> bool:
        return any(job.batched for job in self.running.values())

    def _preempt(self) -> None:
        victims = [
            j
            for j in self.running.values()
            if j.priority == BACKGROUND and not j.stopping and not j.batched
        ]
        yielding = any(j.stopping is msg.StopReason.YIELD for j in self.running.values())
        worker = victims[0].worker if victims and not yielding else None
        if worker is not None:
            victims[0].stopping = msg.StopReason.YIELD
            worker.tell(msg.Yield(victims[0].job_id))
            self.metrics["builds_preempted"] += 1

    def _open(self, job: Job) -> tuple[FileRecord, int] | None:
        """``job``'s row, if it is still for these attributes, and the file opened again."""
        rec = self.db.get(job.path)
        if rec is None or rec.attr_fp != job.attr_fp:
            return None
        try:
            return rec, open_beneath(self.roots, job.path)
        except OSError:
            self.tracker.apply(job.path, rec, Decision(None, cancel=True))
            return None

    def _prepare_batched(self, job: Job, batch: _Batch) -> bool:
        """Check ``job``'s small file and add it to ``batch``; whether it was added. The look
        that queued it is taken as it is: the worker opens the file again and builds it only
        with that identity and those attribute values (else the daemon looks again)."""
        rec = self.db.get(job.path)
        if rec is None or rec.attr_fp != job.attr_fp:
            return False
        obs = self.tracker.take_look(job.path)
        if obs is None:  # not remembered: looked at again here
            opened = self._open(job)
            if opened is None:
                return False
            try:
                obs = self.tracker.observe_fd(job.path, opened[1])
            finally:
                os.close(opened[1])
        prot = self._checked(job, rec, obs)
        if prot is None or obs is None or rec.id is None:
            return False
        self._claim(job, rec.id, obs.snapshot, prot)
        batch.add(job)
        return True

    def _send(self, worker: BuildWorker, batch: _Batch) -> None:
        """Hand ``batch`` to ``worker``; its rows stay PENDING until the results are in."""
        items = tuple(msg.SmallItem(j.job_id, j.path, j.snapshot, j.attr_fp) for j in batch.jobs)
        keyring = self._certificates
        store = self.store
        cache = str(store.directory) if isinstance(store, TreeCache) and self._caching else None
        ns = self.config.xattr_ns
        worker.start_batch(batch.jobs, msg.SmallBatch(items, self.roots, ns, keyring, cache))
        for job in batch.jobs:
            job.batched = True
            self.running[job.path] = job
        self.metrics["builds_started"] += len(batch.jobs)

    def _start(self, worker: BuildWorker | None, job: Job) -> None:
        """Start ``job`` on ``worker``, or build it here and now (``worker`` None: a small
        file, whose state goes from PENDING to its result in one transaction)."""
        opened = self._open(job)
        if opened is None:
            return
        rec, fd = opened
        try:
            spec = self._spec(job, rec, fd, resume=worker is not None)
            if spec is None:
                return
            if worker is None:
                self._build_here(job, fd, rec)
                return
            worker.start(job, spec, fd)
        finally:
            os.close(fd)
        self.running[job.path] = job
        self.metrics["builds_started"] += 1
        self.db.put(rec.evolve(state=State.BUILDING, progress=job.offset, error=""))

    def _build_here(self, job: Job, fd: int, rec: FileRecord) -> None:
        """Build a small file in this process: no worker, no messages (ADR 0006). ``rec`` is
        its row, read just before (nothing else runs meanwhile)."""
        self.metrics["builds_started"] += 1
        if job.protection is None:
            return
        try:
            built = build_small(fd, job.protection.tree_params(), job.snapshot)
        except FileChangedError as e:
            self._failed(job, msg.FailureKind.FILE_CHANGED, str(e))
        except Error as e:
            self._failed(job, msg.FailureKind.ERROR, str(e))
        except OSError as e:
            self._failed(job, msg.FailureKind.OS, e.strerror or str(e))
        else:
            self.metrics["bytes_hashed"] += job.snapshot.size
            self._done(job, built, rec)

    def _spec(self, job: Job, rec: FileRecord, fd: int, *, resume: bool) -> msg.BuildSpec | None:
        """Check the file open as ``fd`` is the row's and fill in ``job``; its build's spec, or
        None if it is not to be built (then the row says why). ``resume``: from a checkpoint."""
        obs = self.tracker.look_again(job.path, fd)
        prot = self._checked(job, rec, obs)
        if prot is None or obs is None:
            return None
        if self.config.backend == "kernel" and self._kernel_verity(job.path, rec, fd, prot):
            return None
        file_id = rec.id
        if file_id is None:
            return None
        params = prot.tree_params()
        offset, leaves = 0, b""
        if resume:  # a small file is built again from 0; its checkpoint goes when it settles
            offset, leaves = self._saved_leaves(file_id, rec.attr_fp, obs.snapshot, params)
        self._claim(job, file_id, obs.snapshot, prot, offset=offset, leaves=leaves)
        spec = msg.BuildSpec(
            job_id=job.job_id,
            alg=params.hash_alg.number,
            block_size=params.block_size,
            salt=params.salt,
            snapshot=obs.snapshot,
            offset=offset,
            leaves=leaves,
            checkpoint_seconds=self.config.checkpoint_interval,
            threads=max(1, (os.cpu_count() or 1) // max(1, len(self.running) + 1)),
        )
        if offset:
            log.info("%s: resuming build at offset %d", job.path, offset)
        elif resume:  # a worker's build (the daemon's own, of small files, are not logged)
            log.info("%s: building from offset 0", job.path)
        return spec

    def _checked(self, job: Job, rec: FileRecord, obs: Observation | None) -> Protection | None:
        """The protection to build ``job`` for, if a look at its file (``obs``; None: gone or
        not regular) still shows the row's attributes and identity; else None, and the row
        says what follows."""
        if obs is None or obs.declared.fingerprint != rec.attr_fp:
            if obs is not None:
                self.tracker.apply(job.path, rec, lifecycle.on_observe(rec, obs, Cause.ATTR))
            return None
        if obs.snapshot != rec.snapshot:
            self._unexplained_change(job, rec, obs.snapshot)
            return None
        prot = obs.declared.protection
        if prot is None or not prot.has_tree:
            self.tracker.apply(job.path, rec, lifecycle.on_observe(rec, obs, Cause.REBUILD))
            return None
        return prot

    def _claim(
        self,
        job: Job,
        file_id: int,
        snapshot: FileIdentity,
        prot: Protection,
        *,
        offset: int = 0,
        leaves: bytes = b"",
    ) -> None:
        """Fill in ``job`` for a build from ``offset`` (after the level-0 hashes ``leaves``)."""
        self._job_ids += 1
        job.job_id = self._job_ids
        job.snapshot = snapshot
        job.offset = job.progress = job.start = offset
        job.leaf_bytes = len(leaves)
        job.leaves_sha256 = hashlib.sha256(leaves)
        job.stopping = None
        job.batched = False
        job.protection = prot
        job.file_id = file_id

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
        self.tracker.apply(job.path, rec, lifecycle.on_write(rec, snapshot, seen=seen))

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
        self._checkpointed.add(file_id)
        self._drop_checkpoint(file_id)
        return 0, b""

    # -- what workers send back --------------------------------------------------------------------

    def _finish(self, worker: BuildWorker) -> Job | None:
        job = worker.job
        worker.job = None
        if job is not None:
            self._release(job)
        return job

    def _release(self, job: Job) -> None:
        job.worker = None
        if self.running.get(job.path) is job:
            del self.running[job.path]

    def _batch_done(self, worker: BuildWorker, m: msg.BatchDone) -> None:
        """Appraised results of a batch: each settled as a finished build is."""
        jobs, worker.batch = worker.batch, {}
        for r in m.results:
            job = jobs.pop(r.job_id, None)
            if job is not None:
                self._release(job)
                self._small_done(job, r)
        for job in jobs.values():  # not answered (cannot happen with our worker): build again
            self._release(job)
            self.queue.push(Job(job.path, job.priority, job.attr_fp, size=job.size))

    def _small_done(self, job: Job, r: msg.SmallResult) -> None:
        """Settle one file of a batch."""
        if r.failure is not None:
            self._failed(job, r.failure, r.message)
            return
        self.metrics["bytes_hashed"] += job.snapshot.size
        tree = MerkleTree(Descriptor.from_bytes(r.descriptor), r.tree or None)
        self._done(job, tree, None, r.verdict(), published=r.published)

    def on_worker(self, worker: BuildWorker) -> None:
        """Read one message of ``worker`` and act on it."""
        try:
            m = worker.recv()
        except (EOFError, OSError):
            self._worker_died(worker)
            return
        if isinstance(m, msg.BatchDone):
            self._batch_done(worker, m)
            return
        job = worker.job
        if isinstance(m, msg.Hello) or job is None or m.job_id != job.job_id:
            return
        if isinstance(m, msg.Progress):
            job.progress = m.offset
            return
        if isinstance(m, msg.Checkpoint):
            self._checkpoint(job, m.offset, m.leaves)
            return
        if isinstance(m, msg.Done):
            job.progress = job.snapshot.size
        self._finish(worker)
        self.metrics["bytes_hashed"] += max(0, job.progress - job.start)
        if isinstance(m, msg.Stopped):
            self._stopped(job, m.why, m.offset)
        elif isinstance(m, msg.Failed):
            self._failed(job, m.kind, m.message)
        else:
            self._done(job, MerkleTree(Descriptor.from_bytes(m.descriptor), m.tree))

    def _checkpoint(self, job: Job, offset: int, leaves: bytes) -> None:
        job.progress = max(job.progress, offset)
        if job.stopping is msg.StopReason.CANCEL:
            return
        self._checkpointed.add(job.file_id)
        try:
            self.partial.append(job.file_id, leaves, job.leaf_bytes)
        except StorageError as e:
            log.warning("%s: checkpoint not saved: %s", job.path, e)
            return
        job.leaf_bytes += len(leaves)
        job.leaves_sha256.update(leaves)
        job.offset = offset
        checksum = job.leaves_sha256.digest()
        cp = Checkpoint(job.file_id, job.attr_fp, offset, job.snapshot, checksum)
        self.db.put_checkpoint(cp)

    def _stopped(self, job: Job, why: msg.StopReason, offset: int) -> None:
        job.progress = max(job.progress, offset)
        if why is msg.StopReason.YIELD and job.stopping is msg.StopReason.YIELD:
            rec = self.db.get(job.path)
            if rec is not None and rec.attr_fp == job.attr_fp:
                self.db.put(rec.evolve(state=State.PENDING, progress=job.offset))
                self.queue.push(Job(job.path, BACKGROUND, job.attr_fp))

    def _current(self, job: Job) -> FileRecord | None:
        """The row a finished job still belongs to: not cancelled, same attribute values."""
        if job.stopping is msg.StopReason.CANCEL:
            return None
        rec = self.db.get(job.path)
        return rec if rec is not None and rec.attr_fp == job.attr_fp else None

    def _failed(self, job: Job, kind: msg.FailureKind, message: str) -> None:
        rec = self._current(job)
        if rec is None:
            return
        self.metrics["builds_failed"] += 1
        n = self.retries.get(job.path, 0) + 1
        self.retries[job.path] = n
        if kind is msg.FailureKind.FILE_CHANGED and n <= _MAX_RETRIES:
            # An identity change at commit with no write event seen: observe again, retry.
            log.info("%s: %s; retrying", job.path, message)
            self.db.put(rec.evolve(state=State.PENDING, error=""))
            self.tracker.scan_file(job.path, Cause.SCAN)
            again = self.db.get(job.path)
            if again is not None and again.state is State.PENDING:
                self.enqueue(again, job.priority)
            return
        delay = min(300.0, 2.0**n)
        log.warning("%s: build failed (%s); retry in %.0f s", job.path, message, delay)
        self.db.put(rec.evolve(state=State.PENDING, error=message))
        self.retry_at[job.path] = time.monotonic() + delay

    def _done(
        self,
        job: Job,
        built: MerkleTree,
        current: FileRecord | None = None,
        verdict: Verdict | None = None,
        *,
        published: bool = False,
    ) -> None:
        """Appraise and settle a finished build (``current``: its row, if just read;
        ``verdict``: the gate's, if a worker appraised it already; ``published``: the worker
        published the cache entry, to be made durable before the commit)."""
        rec = current or self._current(job)
        if rec is None or job.protection is None:
            return
        if rec.snapshot != job.snapshot:
            # Touched during the build (no write event): hash the current content again.
            self.db.put(rec.evolve(state=State.PENDING))
            self.enqueue(rec, job.priority)
            return
        descriptor = built.descriptor
        if verdict is None:
            verdict = appraise(job.protection, built, self.keyring)
        if not verdict.ok and job.start > 0 and rec.id is not None:
            # Resumed from a checkpoint: rule out the saved leaves before blaming the content.
            log.warning("%s: resumed build does not match; building again from 0", job.path)
            self._checkpointed.add(rec.id)
            self._drop_checkpoint(rec.id)
            self.db.put(rec.evolve(state=State.PENDING, progress=0))
            self.enqueue(rec, job.priority)
            return
        refused = ""
        in_kernel = False
        if verdict.ok and self.config.backend == "kernel":
            try:
                refused = self._to_kernel(job, descriptor)
                in_kernel = not refused
            except FileChangedError as e:
                self._failed(job, msg.FailureKind.FILE_CHANGED, str(e))
                return
            except IntegrityError as e:
                why = f"kernel fs-verity: {e.message}"
                verdict = mismatch(job.protection, why, verdict.digest)
        if verdict.ok and not in_kernel:
            try:
                if published and isinstance(self.store, TreeCache):
                    self.store.published(descriptor)
                else:
                    self.store.put(built)
            except StorageError as e:
                self._failed(job, msg.FailureKind.STORAGE, str(e))
                return
        self.retries.pop(job.path, None)
        self._settled(rec, verdict, kernelstore.FALLBACK + refused if refused else "")

    def _settled(self, rec: FileRecord, verdict: Verdict, note: str) -> None:
        """Commit a finished appraisal (READY, or MISMATCH/INVALID with its reason)."""
        self.metrics["builds_ready" if verdict.ok else "builds_mismatch"] += 1
        if verdict.ok:
            new = rec.evolve(
                state=State.READY,
                progress=rec.size,
                error=note,
                digest=verdict.digest or "",
                ready_ns=time.time_ns(),
                recheck=False,
            )
        elif verdict.state is VerdictState.MISMATCH and rec.recheck:
            # A READY file re-hashed after a ctime-only change: written with its mtime put back.
            why = "content written since protection (ctime changed, content differs)"
            new = rec.evolve(state=State.STALE, error=why, progress=0, recheck=False)
        else:
            new = rec.evolve(
                state=State(verdict.state), error=verdict.message, progress=rec.size, recheck=False
            )
        if rec.id is not None:
            self._drop_checkpoint(rec.id)
        self.tracker.apply(rec.path, rec, Decision(new))

    def _worker_died(self, worker: BuildWorker) -> None:
        job = self._finish(worker)
        batch, worker.batch = worker.batch, {}
        for lost in batch.values():
            self._release(lost)
            if not lost.stopping:
                self.queue.push(Job(lost.path, lost.priority, lost.attr_fp, size=lost.size))
        log.warning("worker %d exited", worker.pid)
        if self.stopping:
            return
        if time.monotonic() - worker.started < 1.0:
            time.sleep(0.5)  # a worker that dies at once would otherwise be respawned in a loop
        self.on_replaced(worker, self._pool().replace(worker))
        if job is not None and not job.stopping:
            self.queue.push(Job(job.path, job.priority, job.attr_fp))


class _Batch:
    """Small files gathered for one worker, in order."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.paths: set[str] = set()
        self.size = 0

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.paths.add(job.path)
        self.size += job.snapshot.size

    def full(self) -> bool:
        return len(self.jobs) >= _BATCH_FILES or self.size >= _BATCH_BYTES
