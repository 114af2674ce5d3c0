"""The daemon: three collaborators and a loop over their descriptors.

:class:`~.tracker.Tracker` (events, observations, the state database),
:class:`~.scheduler.Scheduler` (queue, workers, partial builds, the tree store, the kernel
backend) and :class:`~.control.ControlService` (the socket). Only this process writes the state
database (DESIGN.md §10); its workers publish the cache entries of small files' batches, which
it makes durable before it commits (ADR 0006). :meth:`Daemon.step` is one turn of the loop;
tests drive it directly with an in-memory watcher and pool (``tests/support/daemon.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pyverity.daemon.config import DaemonConfig, check_private_dir, ima_policy_warning
from pyverity.daemon.control import ControlService
from pyverity.daemon.pool import BuildWorker, Pool, WorkerPool
from pyverity.daemon.protection import load_keyring
from pyverity.daemon.scheduler import Scheduler
from pyverity.daemon.tracker import EVENTS_PER_TURN, Tracker
from pyverity.daemon.watcher import Watcher, open_watch
from pyverity.errors import ConfigurationError
from pyverity.fs.watch import Watch
from pyverity.store.cache import open_store
from pyverity.store.checkpoint import PartialStore
from pyverity.store.statedb import StateDB

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

_COMMIT_EVERY = 0.25
_METRICS = (
    "events",
    "rescans",
    "builds_started",
    "builds_ready",
    "builds_mismatch",
    "builds_failed",
    "builds_cancelled",
    "builds_preempted",
    "bytes_hashed",
    "cache_rejects",
    "rebuilds_coalesced",
)


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


class Daemon:
    """``watch`` and ``pool`` make the kernel watcher and the workers (tests pass fakes)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        watch: Callable[[tuple[str, ...]], Watch] | None = None,
        pool: Callable[[str], Pool] | None = None,
    ) -> None:
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
        # fanotify reports the whole filesystem, the daemon's own writes (state, cache) and its
        # workers' (cache entries) too: those are skipped unread (it never protects its files).
        self._quiet_pids = {os.getpid()}
        self._make_watch = watch or (
            lambda roots: open_watch(config.watcher, roots, ignore_pids=self._quiet_pids)
        )
        self._make_pool = pool or (lambda lock: WorkerPool(config.workers, lock, config.nice))
        keyring = load_keyring(config.keyring)
        if keyring is not None:
            # A file's signature is checked when its attribute is seen, when its build starts
            # and when it ends: the last two are lookups (ADR 0006).
            keyring = keyring.remembering()
        self.db = StateDB(config.state_dir / "state.db")
        self.store = open_store(
            "cache" if config.backend == "kernel" else config.backend, config.cache_dir
        )
        clean = getattr(self.store, "clean_temp", None)
        if clean is not None:
            clean()
        self.metrics = dict.fromkeys(_METRICS, 0)
        watcher = Watcher(self._make_watch(self.roots), self.roots)
        self.tracker = Tracker(
            config,
            self.roots,
            db=self.db,
            store=self.store,
            keyring=keyring,
            watcher=watcher,
            metrics=self.metrics,
        )
        self.scheduler = Scheduler(
            config,
            self.tracker,
            store=self.store,
            partial=PartialStore(config.state_dir),
            keyring=keyring,
            metrics=self.metrics,
        )
        self.tracker.builds = self.scheduler
        self.control = ControlService(config, self.tracker, self.scheduler, self.store, self.commit)
        self._sel = selectors.DefaultSelector()
        #: Each worker's socket, as registered with the selector.
        self._workers: dict[BuildWorker, int] = {}
        self._stop = False
        self._last_commit = 0.0

    def commit(self) -> None:
        self.scheduler.write_progress()
        self.store.flush()  # cache entries first: a committed READY refers to a published tree
        self.db.commit()

    def start(self, *, listen: bool = True) -> None:
        """Reconcile with the filesystem, start the workers, open the socket (``listen``)."""
        self.scheduler.recover()
        self.tracker.check_cache = self.config.backend in ("cache", "kernel")
        try:
            self.tracker.rescan()
        finally:
            self.tracker.check_cache = False
        self.scheduler.drop_orphans()
        self.db.commit()
        self.scheduler.pool = pool = self._make_pool(self._workers_lock)
        self.scheduler.on_replaced = self._replaced
        self._sel.register(self.tracker.watcher.fd, selectors.EVENT_READ, self._events)
        for w in pool.workers:
            self._watch_worker(w)
        if listen:
            self.control.listen(self._sel)
        log.info(
            "watching %d %s under %s; %d queued",
            self.tracker.watcher.watch_count,
            "directories" if self.config.watcher == "inotify" else "watches",
            ", ".join(self.roots),
            len(self.scheduler.queue),
        )

    def _events(self) -> None:
        self.tracker.process_events(EVENTS_PER_TURN)

    def _watch_worker(self, w: BuildWorker) -> None:
        self._quiet_pids.add(w.pid)
        fd = w.fileno()
        self._workers[w] = fd
        self._sel.register(fd, selectors.EVENT_READ, lambda: self.scheduler.on_worker(w))

    def _replaced(self, dead: BuildWorker, new: BuildWorker) -> None:
        self._quiet_pids.discard(dead.pid)
        fd = self._workers.pop(dead, None)
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(fd)
        self._watch_worker(new)

    def step(self, timeout: float = 0.1) -> None:
        """One turn: start what is due, handle what is readable, expire waiters, commit."""
        self.scheduler.dispatch()
        if self.scheduler.more_now or self.tracker.watcher.pending:
            timeout = 0  # small files or events still queued: look around, then go on
        for key, _ in self._sel.select(timeout):
            key.data()
        self.control.expire_waiters()
        now = time.monotonic()
        if now - self._last_commit >= _COMMIT_EVERY:
            self.commit()
            self._last_commit = now

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        self.start()
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            while not self._stop:
                self.step()
        finally:
            self.shutdown()

    def _yield_running(self, timeout: float = 2.0) -> None:
        """Ask running builds to checkpoint and stop, and commit what they send back."""
        self.scheduler.ask_to_yield()
        deadline = time.monotonic() + timeout
        while self.scheduler.running and time.monotonic() < deadline:
            for key, _ in self._sel.select(0.05):
                if key.fd in self._workers.values():
                    key.data()

    def shutdown(self) -> None:
        self._stop = True
        self.scheduler.stopping = True
        if self.scheduler.pool is not None:
            self._yield_running()
            self.scheduler.pool.stop()
        self.commit()
        self.control.close()
        self.tracker.watcher.close()
        self.db.close()
        os.close(self._lock_fd)
