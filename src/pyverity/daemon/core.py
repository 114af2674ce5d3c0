"""The daemon: one event loop over inotify, the workers and the control socket.

Only this process writes the state database and the tree store (DESIGN.md §10). It observes
files by opening them once (``O_NOFOLLOW|O_NONBLOCK``), checking ``fstat`` for a regular file
and reading both attributes from that descriptor, asks :mod:`.lifecycle` what follows, and
applies the decision: rows, cancellations, queued builds. Builds run in :mod:`.worker`
processes which receive the descriptor itself, so the file built is the file observed.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import selectors
import signal
import stat
import time
from pathlib import Path
from typing import Any, TypeVar

from pyverity.daemon import lifecycle
from pyverity.daemon.builds import BuildsMixin
from pyverity.daemon.config import DaemonConfig, check_private_dir, ima_policy_warning
from pyverity.daemon.control import ControlMixin
from pyverity.daemon.lifecycle import Cause, Decision, Observation
from pyverity.daemon.pool import BACKGROUND, Job, JobQueue, WorkerPool
from pyverity.daemon.protection import Declared, load_keyring, read_declared
from pyverity.daemon.server import Client, Server
from pyverity.daemon.watcher import Change, FileEvent, Watcher, open_beneath
from pyverity.errors import ConfigurationError, Error, StorageError
from pyverity.fs.openfile import identity
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr
from pyverity.store.cache import open_store
from pyverity.store.checkpoint import PartialStore
from pyverity.store.kernel import kernel_digest
from pyverity.store.statedb import FileRecord, State, StateDB

__all__ = ["Daemon"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_COMMIT_EVERY = 0.25
#: How long a newly protected file that was just created or written must then go without writes
#: before its background build starts (a writer that closes the file ends the wait at once).
SETTLE_SECONDS = 0.1
#: A file created or written this recently is taken to be still in the hands of its writer.
RECENT_SECONDS = 0.25
_MAX_RETRIES = 5


def _lock(path: Path, mode: int, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise
            time.sleep(0.05)
        else:
            return fd


class Daemon(BuildsMixin, ControlMixin):
    def __init__(self, config: DaemonConfig) -> None:
        if not config.roots:
            raise ConfigurationError("no roots to watch", remedy="give --root DIR or roots=[..]")
        self.config = config
        self.roots = tuple(os.path.realpath(r) for r in config.roots)
        for r in self.roots:
            if not Path(r).is_dir():
                raise ConfigurationError(f"root {r} is not a directory")
        check_private_dir(config.state_dir, "state directory")
        if config.backend in ("cache", "kernel"):  # kernel: the cache is its fallback
            check_private_dir(config.cache_dir, "cache directory")
        try:
            self._lock_fd = _lock(config.state_dir / "daemon.lock", fcntl.LOCK_EX, 0)
        except BlockingIOError:
            raise ConfigurationError(
                f"another daemon is using {config.state_dir}",
                remedy="stop it first, or choose another --state-dir",
            ) from None
        # Workers of a killed daemon hold workers.lock shared until the kernel kills them.
        self._workers_lock = str(config.state_dir / "workers.lock")
        try:
            os.close(_lock(Path(self._workers_lock), fcntl.LOCK_EX, 10))
        except BlockingIOError:
            raise ConfigurationError("workers of a previous daemon are still running") from None
        warning = ima_policy_warning(config.xattr_ns)
        if warning:
            log.warning("%s", warning)
        self.keyring = load_keyring(config.keyring)
        self.db = StateDB(config.state_dir / "state.db")
        store_backend = "cache" if config.backend == "kernel" else config.backend
        self.store = open_store(store_backend, config.cache_dir)
        self.partial = PartialStore(config.state_dir)
        clean = getattr(self.store, "clean_temp", None)
        if clean is not None:
            clean()
        self.queue_ = JobQueue()
        self.running: dict[str, Job] = {}
        self.waiters: dict[str, list[tuple[Client, dict[str, Any], float]]] = {}
        self.retry_at: dict[str, float] = {}
        self.retries: dict[str, int] = {}
        self.metrics: dict[str, int] = {
            "events": 0,
            "rescans": 0,
            "builds_started": 0,
            "builds_ready": 0,
            "builds_mismatch": 0,
            "builds_failed": 0,
            "builds_cancelled": 0,
            "builds_preempted": 0,
            "bytes_hashed": 0,
            "cache_rejects": 0,
            "rebuilds_coalesced": 0,
        }
        self._job_ids = 0
        self._stop = False
        #: Set during the start-up scan (cache backend): READY files without a tree are queued.
        self._check_cache = False
        #: Files moved out by an ``IN_MOVED_FROM``, by cookie, until the matching ``MOVED_TO``.
        self._moved: dict[int, FileRecord] = {}
        #: Background builds wait until their file has been quiet for a moment (monotonic).
        self.settle: dict[str, float] = {}
        #: When each path was last created or written (for the settle wait), pruned as it ages.
        self._written: dict[str, float] = {}
        self.watcher: Watcher | None = None
        self.pool: WorkerPool | None = None
        self.server: Server | None = None
        self._sel = selectors.DefaultSelector()

    @staticmethod
    def _need(value: T | None) -> T:
        if value is None:
            raise StorageError("daemon used before start()")
        return value

    # -- observing files ------------------------------------------------------------------------

    def in_roots(self, path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def observe(self, path: str) -> Observation | None:
        """Open ``path`` once and read what it declares; None if it is gone or not regular."""
        if self.watcher is not None:
            self.watcher.observed(path)
        try:
            fd = open_beneath(self.roots, path)
        except OSError:
            return None
        try:
            return self._observe_fd(path, fd)
        finally:
            os.close(fd)

    def _observe_fd(self, path: str, fd: int) -> Observation | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            declared = read_declared(fd, self.config.xattr_ns, self.keyring)
        except Error as e:  # e.g. EIO reading an attribute: INVALID, with the reason
            reason = f"cannot read the attributes: {e}"
            declared = Declared(hashlib.sha256(reason.encode()).digest(), True, None, reason)
        return Observation(path, identity(st), declared, st.st_ctime_ns)

    def _has_attrs(self, path: str) -> bool:
        ns = self.config.xattr_ns
        try:
            return any(
                get_attr(path, attr_name(ns, s), limit=1 << 20) is not None
                for s in (IMA_SUFFIX, VERITY_SUFFIX)
            )
        except Error:
            return True

    # -- applying decisions ---------------------------------------------------------------------

    def apply(self, path: str, old: FileRecord | None, decision: Decision | None) -> None:
        """Store what a decision says about the inode ``path`` names (every path of it)."""
        if decision is None:
            return
        if decision.cancel:
            self.cancel(path, old)
        rec = decision.record
        if rec is None:  # no attributes any more: the inode is no longer protected
            paths = self.db.paths_of(old.id) if old is not None and old.id is not None else []
            for p in paths or [path]:
                self.db.delete(p)
                self._notify(p, None)
            return
        if decision.build and rec.state is State.PENDING and self._building(rec):
            rec = rec.evolve(state=State.BUILDING)  # already being built, and not stopping
        if old is not None and old.state != rec.state:
            log.info("%s: %s -> %s %s", path, old.state, rec.state, rec.error)
        rec = self.db.put(rec)
        if decision.build:
            if self._recently_written(path):
                self.settle[path] = time.monotonic() + SETTLE_SECONDS
            self.enqueue(rec, BACKGROUND)
        for p in self._links(rec):
            self._notify(p, rec.evolve(path=p))

    def _building(self, rec: FileRecord) -> bool:
        """A build of ``rec``'s inode (under any path) runs, for these attributes, unstopped."""
        if rec.id is None:
            return False
        return any(
            (job := self.running.get(p)) is not None
            and not job.stopping
            and job.attr_fp == rec.attr_fp
            for p in self._links(rec)
        )

    def _links(self, rec: FileRecord) -> list[str]:
        """Every path of ``rec``'s inode (``rec.path`` alone if it has no row yet)."""
        return (self.db.paths_of(rec.id) if rec.id is not None else []) or [rec.path]

    def enqueue(self, rec: FileRecord, priority: int) -> None:
        """Queue a build of ``rec``'s inode, unless one is queued or running under any of its
        paths (then a first use only raises that job's priority)."""
        for p in self._links(rec):
            if p in self.running:
                return
            queued = self.queue_.get(p)
            if queued is not None:
                if priority < queued.priority:
                    self.queue_.push(Job(p, priority, queued.attr_fp))
                return
        self.queue_.push(Job(rec.path, priority, rec.attr_fp))

    def cancel(self, path: str, rec: FileRecord | None) -> None:
        """Stop queued and running builds of the inode (under any of its paths); drop its
        checkpoint."""
        for p in self._links(rec) if rec is not None else [path]:
            self._cancel_path(p)
        if rec is not None and rec.id is not None:
            self.db.delete_checkpoint(rec.id)
            self.partial.discard(rec.id)

    def _cancel_path(self, path: str) -> bool:
        """Stop the build queued or running under ``path``; whether there was one."""
        queued = self.queue_.remove(path) is not None
        self.retry_at.pop(path, None)
        job = self.running.get(path)
        if job is not None and job.worker is not None and not job.stopping:
            job.stopping = "cancel"
            job.worker.tell("cancel", job.job_id)
            self.metrics["builds_cancelled"] += 1
            return True
        return queued

    def forget_path(self, path: str, rec: FileRecord | None) -> None:
        """``path`` is gone (deleted, moved out, no longer a regular file). Its inode keeps its
        row while another path names it; a build under ``path`` moves to that path."""
        others = [p for p in self._links(rec) if p != path] if rec is not None else []
        if rec is None or not others:
            self.apply(path, rec, Decision(None, cancel=True))
            return
        had_build = self._cancel_path(path)
        self.db.delete(path)
        self._notify(path, None)
        if had_build or rec.state in (State.PENDING, State.BUILDING):
            moved = self.db.get(others[0])
            if moved is not None:
                self.db.put(moved.evolve(state=State.PENDING))
                self.enqueue(moved, BACKGROUND)

    def process_events(self) -> None:
        """Handle every event inotify has queued, oldest first."""
        if self.watcher is None:
            return
        try:
            self.watcher.pull()
        except Error as e:  # e.g. the inotify watch limit, reached by a new directory
            log.warning("%s", e)
        while (item := self.watcher.next_event()) is not None:
            try:
                self.handle(item[1], item[0])
            except Error as e:
                log.warning("%s: %s", item[1].path, e)
        self._moved.clear()  # moved out of the roots: already forgotten

    def _recently_written(self, path: str) -> bool:
        when = self._written.get(path)
        return when is not None and time.monotonic() - when < RECENT_SECONDS

    def _note_written(self, path: str) -> None:
        now = time.monotonic()
        if len(self._written) > 4096:
            self._written = {p: t for p, t in self._written.items() if now - t < RECENT_SECONDS}
        self._written[path] = now

    def handle(self, ev: FileEvent, seq: int = 0) -> None:
        self.metrics["events"] += 1
        path = ev.path
        if ev.change in (Change.WRITE, Change.CLOSE_WRITE, Change.APPEARED):
            self._note_written(path)
        if ev.change is Change.OVERFLOW:
            self.rescan()
            return
        if ev.change is Change.DIR_GONE:
            prefix = path.rstrip(os.sep) + os.sep
            for gone in self.db.records_under(prefix):
                self.forget_path(gone.path, self.db.get(gone.path))
            return
        rec = self.db.get(path)
        if ev.change in (Change.WRITE, Change.CLOSE_WRITE):
            if rec is None:
                return
            if rec.state is State.PENDING:
                # Not built yet: wait until the writer is done (closed, or quiet for a moment).
                closed = ev.change is Change.CLOSE_WRITE
                self.settle[path] = 0.0 if closed else time.monotonic() + SETTLE_SECONDS
            if seq and self._need(self.watcher).before_observation(seq, path):
                return  # written before the observation that made the row
            try:
                st = os.lstat(path)
            except OSError:
                return
            snap = identity(st)
            if ev.change is Change.CLOSE_WRITE and snap == rec.snapshot:
                return
            self.apply(path, rec, lifecycle.on_write(rec, snap, ctime_ns=st.st_ctime_ns))
            return
        if ev.change is Change.GONE:
            if rec is not None:
                if ev.cookie:
                    self._moved[ev.cookie] = rec
                self.forget_path(path, rec)
            return
        moved = self._moved.pop(ev.cookie, None) if ev.cookie else None
        if moved is not None and self._renamed(path, moved):
            return
        self.scan_file(path, Cause.ATTR if ev.change is Change.ATTR else Cause.APPEARED, rec)

    def _renamed(self, path: str, old: FileRecord) -> bool:
        """A tracked file renamed within the roots keeps its state if nothing else changed."""
        obs = self.observe(path)
        if obs is None or obs.declared.fingerprint != old.attr_fp or obs.snapshot != old.snapshot:
            return False
        rec = self.db.get(path)
        if rec is not None:
            self.cancel(path, rec)
        new = self.db.put(old.evolve(path=path, id=None, ctime_ns=obs.ctime_ns))
        log.info("%s: renamed from %s, still %s", path, old.path, new.state)
        if new.state in (State.PENDING, State.BUILDING):
            self.db.put(new.evolve(state=State.PENDING))
            self.enqueue(new, BACKGROUND)
        self._notify(path, new)
        return True

    def scan_file(
        self, path: str, cause: Cause = Cause.SCAN, rec: FileRecord | None = None
    ) -> None:
        """Observe ``path`` and apply what follows (``rec``: its row, if already looked up)."""
        if rec is None:
            rec = self.db.get(path)
        if rec is None and not self._has_attrs(path):
            return
        obs = self.observe(path)
        if obs is None:
            if rec is not None:
                self.forget_path(path, rec)
            return
        if rec is None or rec.snapshot[:2] != obs.snapshot[:2]:
            linked = self._link(path, rec, obs)
            if linked is not None:
                rec = linked
                if cause is Cause.APPEARED:
                    cause = Cause.ATTR  # a new link changes ctime itself; it is no write
        decision = lifecycle.on_observe(rec, obs, cause)
        if decision is None and rec is not None and self._missing_tree(rec):
            # Reconciliation queues what is missing: a READY file whose cached tree is gone.
            decision = Decision(rec.evolve(state=State.PENDING, progress=0), build=True)
        self.apply(path, rec, decision)

    def _link(self, path: str, rec: FileRecord | None, obs: Observation) -> FileRecord | None:
        """``path`` names an inode tracked under another path (a hard link): join its row."""
        dev, ino = obs.snapshot[:2]
        sibling = next((r for r in self.db.by_inode(dev, ino) if r.path != path), None)
        if sibling is None:
            return None
        if rec is not None:
            self.forget_path(path, rec)  # the inode this path named before
        log.info("%s: another link of %s", path, sibling.path)
        return self.db.put(sibling.evolve(path=path))

    def _missing_tree(self, rec: FileRecord) -> bool:
        if not self._check_cache or rec.state is not State.READY or not rec.digest:
            return False
        alg, _, hexd = rec.digest.partition(":")
        try:
            if self.store.contains(alg, bytes.fromhex(hexd)):
                return False
        except (ValueError, StorageError):
            return True
        return self.config.backend != "kernel" or not self._kernel_keeps(rec)

    def _kernel_keeps(self, rec: FileRecord) -> bool:
        """Kernel backend: fs-verity is enabled on the file with its recorded digest."""
        try:
            fd = open_beneath(self.roots, rec.path)
        except OSError:
            return False
        try:
            verity = kernel_digest(fd)
        except Error:
            return False
        finally:
            os.close(fd)
        return verity is not None and str(verity.digest) == rec.digest

    def rescan(self) -> None:
        """Reconcile the database with the filesystem (start-up, overflow, on request)."""
        self.metrics["rescans"] += 1
        watcher = self._need(self.watcher)
        seen: set[str] = set()
        for root in self.roots:
            for path in watcher.add_tree(root):
                seen.add(path)
                self.scan_file(path)
        for path in [p for p in self.db.paths() if p not in seen]:
            self.forget_path(path, self.db.get(path))
        self.db.commit()

    # -- the loop -------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stop = True

    def _commit(self) -> None:
        for job in self.running.values():
            self.db.set_progress(job.path, job.progress)
        self.store.flush()  # cache entries first: a committed READY refers to a published tree
        self.db.commit()

    def start(self) -> None:
        self.watcher = Watcher()
        for rec in list(self.db.records((State.PENDING, State.BUILDING))):
            if rec.id is None:
                continue
            cp = self.db.get_checkpoint(rec.id)
            if self.config.crash_policy == "restart" or cp is None:
                self.db.delete_checkpoint(rec.id)
                self.partial.discard(rec.id)
            offset = cp.offset if cp is not None and self.config.crash_policy == "resume" else 0
            self.db.put(rec.evolve(progress=offset))  # the rescan decides: resume, or STALE
        self._check_cache = self.config.backend in ("cache", "kernel")
        try:
            self.rescan()
        finally:
            self._check_cache = False
        live = {r.id for r in self.db.records((State.PENDING, State.BUILDING))}
        for stale_id in self.partial.ids() - live:
            self.partial.discard(stale_id)
        self.db.commit()
        self.pool = WorkerPool(self.config.workers, self._workers_lock, self.config.nice)
        self.server = Server(self.config.socket)
        self._sel.register(self.watcher.fd, selectors.EVENT_READ, ("inotify", None))
        self._sel.register(self.server, selectors.EVENT_READ, ("listen", None))
        for w in self.pool.workers:
            self._sel.register(w.conn, selectors.EVENT_READ, ("worker", w))
        log.info(
            "watching %d directories under %s; %d queued",
            self.watcher.watch_count,
            ", ".join(self.roots),
            len(self.queue_),
        )

    def run(self) -> None:
        self.start()
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        last_commit = time.monotonic()
        try:
            while not self._stop:
                self._dispatch()
                for key, _ in self._sel.select(0.1):
                    what, obj = key.data
                    if what == "inotify":
                        self.process_events()
                    elif what == "worker":
                        self.on_worker(obj)
                    elif what == "listen":
                        self._accept()
                    elif what == "client":
                        self._client_readable(obj)
                now = time.monotonic()
                self._expire_waiters()
                if now - last_commit >= _COMMIT_EVERY:
                    self._commit()
                    last_commit = now
        finally:
            self.shutdown()

    def _yield_running(self, timeout: float = 2.0) -> None:
        """Ask running builds to checkpoint and stop, and commit what they send back."""
        for job in self.running.values():
            if job.worker is not None and not job.stopping:
                job.stopping = "yield"
                job.worker.tell("yield", job.job_id)
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            for key, _ in self._sel.select(0.05):
                what, obj = key.data
                if what == "worker":
                    self.on_worker(obj)

    def shutdown(self) -> None:
        self._stop = True
        if self.pool is not None:
            self._yield_running()
            self.pool.stop()
        self._commit()
        if self.server is not None:
            self.server.close()
        if self.watcher is not None:
            self.watcher.close()
        self.db.close()
        os.close(self._lock_fd)
