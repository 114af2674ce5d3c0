"""The tracker: what the daemon knows about each protected inode, and how it learns it.

It owns the state database and the watcher. It turns file events into observations (one open
beneath the roots, ``fstat``, both attributes read from that descriptor), asks
:mod:`.lifecycle` what follows, and applies the :class:`~.lifecycle.Decision`: rows for every
path of the inode, and through :class:`Builds` (the scheduler) queued or cancelled builds.
Whoever waits on a file hears of a change through ``on_change``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pyverity.daemon import lifecycle
from pyverity.daemon.lifecycle import Cause, Decision, Observation
from pyverity.daemon.pool import BACKGROUND
from pyverity.daemon.protection import Declared, read_declared
from pyverity.daemon.watcher import Change, FileEvent, Watcher, open_beneath
from pyverity.errors import Error, FormatError, StorageError
from pyverity.format.digest import parse_digest
from pyverity.fs.openfile import identity
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr
from pyverity.hashing.small import is_small
from pyverity.store.kernel import kernel_digest
from pyverity.store.statedb import FileRecord, State, StateDB

if TYPE_CHECKING:
    from pyverity.daemon.config import DaemonConfig
    from pyverity.keys import Keyring
    from pyverity.store.cache import TreeStore

__all__ = ["EVENTS_PER_TURN", "RECENT_SECONDS", "SETTLE_SECONDS", "Builds", "Tracker"]

log = logging.getLogger(__name__)

#: How long a newly protected file that was just created or written must then go without writes
#: before its background build starts (a writer that closes the file ends the wait at once).
SETTLE_SECONDS = 0.1
#: A file created or written this recently is taken to be still in the hands of its writer.
RECENT_SECONDS = 0.25
_BUSY = (State.PENDING, State.BUILDING)
#: Looks kept for the builds they queued (about a kilobyte each).
_MAX_LOOKS = 16384
#: How many queued events one call handles at most (:meth:`Tracker.process_events`); the rest
#: wait for the next turn of the loop, so that workers get builds while a burst of events
#: (10,000 ``setxattr`` s) is worked through, and a worker done with its batch waits at most
#: one turn for the next (64: 3.6-3.9 s in bench/daemon.py's small files, 256: 4.0-4.1 s).
EVENTS_PER_TURN = 64


class Builds(Protocol):
    """What the tracker asks of the scheduler."""

    def enqueue(self, rec: FileRecord, priority: int) -> None: ...

    def cancel(self, path: str, rec: FileRecord | None) -> None:
        """Stop builds of ``rec``'s inode and drop its checkpoint (``path`` alone if no row)."""
        ...

    def cancel_path(self, path: str) -> bool: ...

    def building(self, rec: FileRecord) -> bool: ...

    def settle(self, path: str, until: float) -> None:
        """Hold a background build of ``path`` back until ``until`` (monotonic)."""
        ...


class Tracker:
    def __init__(
        self,
        config: DaemonConfig,
        roots: tuple[str, ...],
        *,
        db: StateDB,
        store: TreeStore,
        keyring: Keyring | None,
        watcher: Watcher,
        metrics: dict[str, int],
    ) -> None:
        self.config = config
        self.roots = roots
        self.db = db
        self.store = store
        self.keyring = keyring
        self.watcher = watcher
        self.metrics = metrics
        self.builds: Builds | None = None
        #: Called with each path whose row changed (None: it has none any more).
        self.on_change: Callable[[str, FileRecord | None], None] = lambda _p, _r: None
        #: Set during the start-up scan (cache backend): READY files without a tree are queued.
        self.check_cache = False
        #: Files moved out by an ``IN_MOVED_FROM``, by cookie, until the matching ``MOVED_TO``.
        self._moved: dict[int, FileRecord] = {}
        #: When each path was last created or written (for the settle wait), pruned as it ages.
        self._written: dict[str, float] = {}
        #: The watcher's mark of each path's last observation for an attribute event: a
        #: later attribute event numbered up to it was already seen by that observation.
        self._attr_mark: dict[str, int] = {}
        #: The look that queued each pending build, for the build to start from (ADR 0006).
        self._looks: dict[str, Observation] = {}

    def _builds(self) -> Builds:
        if self.builds is None:
            raise StorageError("tracker used before its scheduler was attached")
        return self.builds

    # -- observing files ------------------------------------------------------------------------

    def in_roots(self, path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def observe(self, path: str) -> Observation | None:
        """Open ``path`` once and read what it declares; None if it is gone or not regular."""
        self.watcher.observed(path)
        try:
            fd = open_beneath(self.roots, path)
        except OSError:
            return None
        try:
            return self.observe_fd(path, fd)
        finally:
            os.close(fd)

    def observe_fd(self, path: str, fd: int) -> Observation | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            declared = read_declared(
                fd, self.config.xattr_ns, self.keyring, check_signature=not is_small(st.st_size)
            )
        except Error as e:  # e.g. EIO reading an attribute: INVALID, with the reason
            reason = f"cannot read the attributes: {e}"
            declared = Declared(hashlib.sha256(reason.encode()).digest(), True, None, reason)
        return Observation(path, identity(st), declared, st.st_ctime_ns)

    def look_again(self, path: str, fd: int) -> Observation | None:
        """What ``path``, open again as ``fd`` to be built, declares: the look that queued the
        build when the file has not changed since (same identity, same ctime, which every
        attribute write moves), else a new look. A change whose event is still on its way is
        handled when it arrives, as one during the build is."""
        seen = self.take_look(path)
        if seen is not None:
            st = os.fstat(fd)
            if identity(st) == seen.snapshot and st.st_ctime_ns == seen.ctime_ns:
                return seen
        return self.observe_fd(path, fd)

    def take_look(self, path: str) -> Observation | None:
        """The look that queued ``path``'s pending build, if it is remembered (once)."""
        return self._looks.pop(path, None)

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

    def links(self, rec: FileRecord) -> list[str]:
        """Every path of ``rec``'s inode (``rec.path`` alone if it has no row yet)."""
        return (self.db.paths_of(rec.id) if rec.id is not None else []) or [rec.path]

    def apply(self, path: str, old: FileRecord | None, decision: Decision | None) -> None:
        """Store what a decision says about the inode ``path`` names (every path of it)."""
        if decision is None:
            return
        builds = self._builds()
        if decision.cancel:
            builds.cancel(path, old)
        rec = decision.record
        if rec is None:  # no attributes any more: the inode is no longer protected
            paths = self.db.paths_of(old.id) if old is not None and old.id is not None else []
            for p in paths or [path]:
                self.db.delete(p)
                self.on_change(p, None)
            return
        if decision.build and rec.state is State.PENDING and builds.building(rec):
            rec = rec.evolve(state=State.BUILDING)  # already being built, and not stopping
        if old is not None and old.state != rec.state:
            # The usual way to READY is at DEBUG (a line per file); the rest says why.
            routine = rec.state in (State.PENDING, State.BUILDING, State.READY) and not rec.error
            log.log(
                logging.DEBUG if routine else logging.INFO,
                "%s: %s -> %s %s",
                path,
                old.state,
                rec.state,
                rec.error,
            )
        rec = self.db.put(rec)
        if decision.build:
            if self._recently_written(path):
                builds.settle(path, time.monotonic() + SETTLE_SECONDS)
            builds.enqueue(rec, BACKGROUND)
        for p in self.links(rec):
            self.on_change(p, rec.evolve(path=p))

    def forget_path(self, path: str, rec: FileRecord | None) -> None:
        """``path`` is gone (deleted, moved out, no longer a regular file). Its inode keeps its
        row while another path names it; a build under ``path`` moves to that path."""
        others = [p for p in self.links(rec) if p != path] if rec is not None else []
        if rec is None or not others:
            self.apply(path, rec, Decision(None, cancel=True))
            return
        had_build = self._builds().cancel_path(path)
        self.db.delete(path)
        self.on_change(path, None)
        if had_build or rec.state in _BUSY:
            moved = self.db.get(others[0])
            if moved is not None:
                self.db.put(moved.evolve(state=State.PENDING))
                self._builds().enqueue(moved, BACKGROUND)

    # -- events -----------------------------------------------------------------------------------

    def process_events(self, limit: int = 0) -> None:
        """Handle the events the watcher has queued, oldest first: all of them, or at most
        ``limit`` (the rest stay queued: :attr:`Watcher.pending`), so that builds can start
        between the events of a burst (ADR 0006)."""
        try:
            self.watcher.pull()
        except Error as e:  # e.g. the inotify watch limit, reached by a new directory
            log.warning("%s", e)
        handled = 0
        while (not limit or handled < limit) and (item := self.watcher.next_event()) is not None:
            handled += 1
            try:
                self.handle(item[1], item[0])
            except Error as e:
                log.warning("%s: %s", item[1].path, e)
        if not self.watcher.pending:
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
            if rec is not None:
                self._written_to(path, rec, ev, seq)
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
        if ev.change is not Change.ATTR:
            self.scan_file(path, Cause.APPEARED, rec, looked_up=True)
            return
        if seq and seq <= self._attr_mark.get(path, 0):
            return  # setxattr twice (descriptor, signature): one look saw both (ADR 0006)
        self.scan_file(path, Cause.ATTR, rec, looked_up=True)
        if len(self._attr_mark) > 4096:
            self._attr_mark.clear()
        self._attr_mark[path] = self.watcher.mark(path)

    def _written_to(self, path: str, rec: FileRecord, ev: FileEvent, seq: int) -> None:
        if rec.state is State.INVALID:
            self.scan_file(path, Cause.SCAN, rec)  # judged again if the content changed
            return
        if rec.state is State.PENDING:
            # Not built yet: wait until the writer is done (closed, or quiet for a moment).
            closed = ev.change is Change.CLOSE_WRITE
            self._builds().settle(path, 0.0 if closed else time.monotonic() + SETTLE_SECONDS)
        if seq and self.watcher.before_observation(seq, path):
            return  # written before the observation that made the row
        try:
            st = os.lstat(path)
        except OSError:
            return
        snap = identity(st)
        if ev.change is Change.CLOSE_WRITE and snap == rec.snapshot:
            return
        self.apply(path, rec, lifecycle.on_write(rec, snap, ctime_ns=st.st_ctime_ns))

    def _renamed(self, path: str, old: FileRecord) -> bool:
        """A tracked file renamed within the roots keeps its state if nothing else changed."""
        obs = self.observe(path)
        if obs is None or obs.declared.fingerprint != old.attr_fp or obs.snapshot != old.snapshot:
            return False
        rec = self.db.get(path)
        if rec is not None:
            self._builds().cancel(path, rec)
        new = self.db.put(old.evolve(path=path, id=None, ctime_ns=obs.ctime_ns))
        log.info("%s: renamed from %s, still %s", path, old.path, new.state)
        if new.state in _BUSY:
            self.db.put(new.evolve(state=State.PENDING))
            self._builds().enqueue(new, BACKGROUND)
        self.on_change(path, new)
        return True

    # -- scanning ---------------------------------------------------------------------------------

    def scan_file(
        self,
        path: str,
        cause: Cause = Cause.SCAN,
        rec: FileRecord | None = None,
        *,
        looked_up: bool = False,
    ) -> None:
        """Observe ``path`` and apply what follows (``rec``: its row, if ``looked_up`` or not
        None)."""
        if rec is None and not looked_up:
            rec = self.db.get(path)
        if rec is None and cause is not Cause.ATTR and not self._has_attrs(path):
            return  # an attribute event is looked at anyway: the look reads both attributes
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
        if decision is not None and decision.build:
            if len(self._looks) >= _MAX_LOOKS:
                del self._looks[next(iter(self._looks))]  # the oldest: looked at again
            self._looks[path] = obs
        else:
            self._looks.pop(path, None)
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
        if not self.check_cache or rec.state is not State.READY or not rec.digest:
            return False
        try:
            if self.store.contains(*parse_digest(rec.digest)):
                return False
        except (FormatError, StorageError):
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
        seen: set[str] = set()
        for root in self.roots:
            for path in self.watcher.add_tree(root):
                seen.add(path)
                self.scan_file(path)
        for path in [p for p in self.db.paths() if p not in seen]:
            self.forget_path(path, self.db.get(path))
        self.db.commit()
