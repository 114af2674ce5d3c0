"""The daemon's core in memory: a watch the test feeds with events, workers that build
in-process when told, and requests answered without a socket (as python-tuf tests its client
against a repository simulator).

The files are real (a temporary root with ``user.*`` attributes); what is simulated is *when*
things happen: an event reaches the daemon when the test emits it, a build runs when the test
lets it (``auto=True``: as soon as it starts), and :meth:`DaemonSim.settle` steps the loop until
nothing is left to do, so a test asserts on state, never after a sleep.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyverity.daemon import protocol as msg
from pyverity.daemon.config import DaemonConfig
from pyverity.daemon.core import Daemon
from pyverity.daemon.pool import Job
from pyverity.daemon.server import Peer
from pyverity.daemon.worker import run_batch, run_build
from pyverity.fs.watch import Change, WatchEvent
from pyverity.store.statedb import FileRecord
from tests.support.polling import wait_until

__all__ = ["DaemonSim", "FakePool", "FakeWatch", "FakeWorker"]


class _Signal:
    """An eventfd that is readable while something is pending (the loop's selector sees it)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class FakeWatch:
    """:class:`pyverity.fs.watch.Watch` whose events are what the test :meth:`emit` s."""

    def __init__(self) -> None:
        self._signal = _Signal()
        self._pending: deque[WatchEvent] = deque()
        self.dirs: set[str] = set()

    @property
    def fd(self) -> int:
        return self._signal.fd

    @property
    def watch_count(self) -> int:
        return len(self.dirs)

    def add_root(self, root: str) -> None:
        pass

    def watch_dir(self, path: str) -> bool:
        self.dirs.add(path)
        return True

    def forget_under(self, path: str) -> None:
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(path + os.sep)}

    def emit(
        self, change: Change, path: Path | str, *, is_dir: bool = False, cookie: int = 0
    ) -> None:
        self._pending.append(WatchEvent(change, str(path), is_dir, cookie))
        self._signal.set()

    def read(self) -> Iterator[WatchEvent]:
        self._signal.clear()
        while self._pending:
            yield self._pending.popleft()

    def close(self) -> None:
        self._signal.close()


class _Conn:
    """What :func:`pyverity.daemon.worker.run_build` talks to: the worker's two queues."""

    def __init__(self, worker: FakeWorker) -> None:
        self._worker = worker

    def send(self, m: msg.FromWorker) -> None:
        self._worker.outbox.append(m)
        self._worker.signal.set()

    def poll(self) -> bool:
        return bool(self._worker.inbox)

    def recv(self) -> msg.ToWorker:
        return self._worker.inbox.popleft()


@dataclass(eq=False)
class FakeWorker:
    """:class:`pyverity.daemon.pool.BuildWorker` building in this process."""

    pool: FakePool
    pid: int
    job: Job | None = None
    started: float = 0.0
    signal: _Signal = field(default_factory=_Signal)
    inbox: deque[msg.ToWorker] = field(default_factory=deque)
    outbox: deque[msg.FromWorker] = field(default_factory=deque)
    #: The build handed over and not run yet (``auto=False``).
    held: tuple[msg.BuildSpec, int] | None = None
    #: The batch of small files handed over and not run yet (``auto=False``).
    held_batch: msg.SmallBatch | None = None
    batch: dict[int, Job] = field(default_factory=dict)
    dead: bool = False
    builds: list[msg.BuildSpec] = field(default_factory=list)
    batches: list[msg.SmallBatch] = field(default_factory=list)

    def fileno(self) -> int:
        return self.signal.fd

    def start(self, job: Job, spec: msg.BuildSpec, fd: int) -> None:
        self.job = job
        job.worker = self
        self.builds.append(spec)
        self.held = (spec, os.dup(fd))
        if self.pool.auto:
            self.run()

    def start_batch(self, jobs: list[Job], batch: msg.SmallBatch) -> None:
        self.batch = {j.job_id: j for j in jobs}
        for j in jobs:
            j.worker = self
        self.batches.append(batch)
        self.held_batch = batch
        if self.pool.auto:
            self.run()

    def run(self) -> None:
        """Run the held build or batch now (a build sees any Cancel or Yield told before)."""
        if self.held_batch is not None:
            batch, self.held_batch = self.held_batch, None
            run_batch(_Conn(self), batch)  # type: ignore[arg-type] # a Connection's subset
        if self.held is None:
            return
        spec, fd = self.held
        self.held = None
        run_build(_Conn(self), spec, fd)  # type: ignore[arg-type] # a Connection's subset

    def _drop_held(self) -> None:
        if self.held is not None:
            os.close(self.held[1])
            self.held = None
        self.held_batch = None

    def tell(self, m: msg.ToWorker) -> None:
        self.inbox.append(m)

    def recv(self) -> msg.FromWorker:
        if self.dead:
            raise EOFError("worker killed")
        m = self.outbox.popleft()
        if not self.outbox:
            self.signal.clear()
        return m

    def kill(self) -> None:
        """Die as a crashed worker does: the daemon sees EOF on its next read."""
        self.dead = True
        self._drop_held()
        self.signal.set()

    def stop(self) -> None:
        self._drop_held()
        self.signal.close()


class FakePool:
    """:class:`pyverity.daemon.pool.Pool` of :class:`FakeWorker`."""

    def __init__(self, size: int, *, auto: bool = True) -> None:
        self.auto = auto
        self._next_pid = 1000
        self._workers = [self._new() for _ in range(size)]

    def _new(self) -> FakeWorker:
        self._next_pid += 1
        return FakeWorker(self, self._next_pid)

    @property
    def workers(self) -> Sequence[FakeWorker]:
        return self._workers

    def idle(self) -> FakeWorker | None:
        return next((w for w in self._workers if w.job is None and not w.batch), None)

    def replace(self, dead: Any) -> FakeWorker:
        new = self._new()
        self._workers[self._workers.index(dead)] = new
        return new

    def stop(self) -> None:
        for w in self._workers:
            w.stop()

    def busy(self) -> bool:
        return any(
            w.outbox or w.dead or ((w.held or w.held_batch) and self.auto) for w in self._workers
        )


@dataclass
class _Caller:
    """A :class:`pyverity.daemon.control.Replier` collecting replies."""

    peer: Peer
    replies: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def reply(self, obj: dict[str, Any]) -> None:
        self.replies.append(obj)


class DaemonSim:
    """A :class:`~pyverity.daemon.core.Daemon` over ``base/root`` with a fake watch and pool."""

    def __init__(self, base: Path, *, workers: int = 1, auto: bool = True, **config: Any) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir(exist_ok=True)
        self.config = DaemonConfig(
            roots=(self.root,),
            state_dir=base / "state",
            cache_dir=base / "cache",
            xattr_ns="user",
            workers=workers,
            checkpoint_interval=config.pop("checkpoint_interval", 0.05),
            **config,
        )
        self.auto = auto
        self.watch = FakeWatch()
        self.pool = FakePool(workers, auto=auto)
        self.daemon: Daemon | None = None

    def start(self) -> DaemonSim:
        """Start a daemon (a new one after :meth:`stop`, with a new watch and pool)."""
        self.watch = FakeWatch()
        self.pool = FakePool(self.config.workers, auto=self.auto)
        self.daemon = Daemon(self.config, watch=lambda _r: self.watch, pool=lambda _l: self.pool)
        self.daemon.start(listen=False)
        self.settle()
        return self

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.shutdown()
            self.daemon = None

    def restart(self) -> DaemonSim:
        self.stop()
        return self.start()

    def emit(self, change: Change, path: Path | str, **kw: Any) -> None:
        self.watch.emit(change, path, **kw)

    def _idle(self) -> bool:
        s = self.d.scheduler
        due = bool(s.queue) and (self.pool.idle() is not None or s.more_now)
        return not (self.pool.busy() or due or s.retry_at or self.d.tracker.watcher.pending)

    def settle(self, timeout: float = 30) -> None:
        """Step the loop until no event, message or startable build is left, then commit.
        (Real time passes only while a build waits out its settle delay or a retry.)"""

        def idle() -> bool:
            self.d.step(timeout=0.005)
            return self._idle()

        wait_until(idle, timeout=timeout, interval=0, what="the daemon to settle")
        self.d.commit()

    def request(self, op: str, path: Path | str | None = None, **fields: Any) -> dict[str, Any]:
        """One control request as root; waits (stepping) for its reply."""
        req: dict[str, Any] = {"op": op, **fields}
        if path is not None:
            req["path"] = str(path)
        caller = _Caller(Peer(os.getpid(), 0, 0))
        self.d.control.handle_request(caller, req, None)
        wait_until(
            lambda: caller.replies or self.d.step(timeout=0.005),
            timeout=fields.get("timeout", 30) + 5,
            interval=0,
            what=f"a reply to {req}",
        )
        return caller.replies[0]

    def record(self, path: Path | str) -> FileRecord | None:
        return self.d.db.get(str(path))

    def state(self, path: Path | str) -> str:
        rec = self.record(path)
        return "NONE" if rec is None else str(rec.state)
