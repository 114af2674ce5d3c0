"""The control service: the daemon's answers on its socket (:mod:`.server` carries them).

``sync`` (handle every pending event, commit, reply), ``status`` (paths, or totals), ``wait``
(until a file leaves PENDING/BUILDING), ``build-now`` (a first-use request: jumps the queue; a
READY file's cached tree is fully verified and rebuilt if it is missing or corrupted),
``rebuild`` (leave STALE; a second request joins a build under way), ``rescan``, ``metrics``
(Prometheus text). Path requests need the caller to be able to open the file (or to have sent
its descriptor) and the path to be under the roots.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyverity.daemon.lifecycle import Cause
from pyverity.daemon.pool import FIRST_USE
from pyverity.daemon.server import Client, Peer, Server, denial
from pyverity.errors import FormatError, IntegrityError
from pyverity.format.digest import parse_digest
from pyverity.store.statedb import FileRecord, State

if TYPE_CHECKING:
    from pyverity.daemon.config import DaemonConfig
    from pyverity.daemon.scheduler import Scheduler
    from pyverity.daemon.tracker import Tracker
    from pyverity.store.cache import TreeStore

__all__ = ["ControlService", "Replier", "record_json"]

_BUSY = (State.PENDING, State.BUILDING)


class Replier(Protocol):
    """Whoever sent a request: a socket :class:`~.server.Client`, or a test's stand-in."""

    peer: Peer

    @property
    def closed(self) -> bool: ...

    def reply(self, obj: dict[str, Any]) -> None: ...


def record_json(rec: FileRecord, progress: int | None = None) -> dict[str, Any]:
    done = rec.progress if progress is None else progress
    return {
        "path": rec.path,
        "state": str(rec.state),
        "progress": round(done / rec.size, 4) if rec.size else 1.0,
        "bytes_done": done,
        "size": rec.size,
        "kind": rec.kind,
        "digest": rec.digest,
        "error": rec.error,
        "updated_ns": rec.updated_ns,
    }


class ControlService:
    def __init__(
        self,
        config: DaemonConfig,
        tracker: Tracker,
        scheduler: Scheduler,
        store: TreeStore,
        commit: Callable[[], None],
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.scheduler = scheduler
        self.db = tracker.db
        self.store = store
        self.metrics = tracker.metrics
        self.commit = commit
        self.waiters: dict[str, list[tuple[Replier, dict[str, Any], float]]] = {}
        self.server: Server | None = None
        self._sel: selectors.BaseSelector | None = None
        tracker.on_change = self.notify

    # -- the socket -------------------------------------------------------------------------------

    def listen(self, sel: selectors.BaseSelector) -> None:
        self.server = Server(self.config.socket)
        self._sel = sel
        sel.register(self.server.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _accept(self) -> None:
        if self.server is None or self._sel is None:
            return
        client = self.server.accept()
        if client is not None:
            self._sel.register(client.sock, selectors.EVENT_READ, lambda: self._readable(client))

    def _readable(self, client: Client) -> None:
        if self.server is None:
            return
        self.server.read(client, self.handle_request)
        if client.closed:
            self._drop_client(client)

    def _drop_client(self, client: Client) -> None:
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(client.sock)
        for path in list(self.waiters):
            self.waiters[path] = [w for w in self.waiters[path] if w[0] is not client]
            if not self.waiters[path]:
                del self.waiters[path]

    # -- waiters ----------------------------------------------------------------------------------

    def _record(self, path: str) -> FileRecord | None:
        rec = self.db.get(path)
        if rec is None:
            self.tracker.scan_file(path, Cause.ATTR)
            rec = self.db.get(path)
        return rec

    def _live(self, rec: FileRecord) -> dict[str, Any]:
        running = self.scheduler.running
        job = next((j for p in self.tracker.links(rec) if (j := running.get(p))), None)
        return record_json(rec, job.progress if job is not None else None)

    def notify(self, path: str, rec: FileRecord | None) -> None:
        """``path``'s row changed: answer whoever waits for it to leave PENDING/BUILDING."""
        if rec is not None and rec.state in _BUSY:
            return
        waiting = self.waiters.pop(path, [])
        if waiting:
            self.commit()  # what a waiter is told is what the database says
        for client, req, _ in waiting:
            if rec is None:
                client.reply({"ok": True, "id": req.get("id"), "path": path, "state": "NONE"})
            else:
                client.reply({"ok": True, "id": req.get("id"), **self._live(rec)})

    def expire_waiters(self) -> None:
        now = time.monotonic()
        for path in list(self.waiters):
            keep = []
            for client, req, deadline in self.waiters[path]:
                if client.closed:
                    continue
                if deadline <= now:
                    rec = self.db.get(path)
                    body = self._live(rec) if rec is not None else {"path": path, "state": "NONE"}
                    client.reply({"ok": False, "id": req.get("id"), "error": "timeout", **body})
                else:
                    keep.append((client, req, deadline))
            if keep:
                self.waiters[path] = keep
            else:
                del self.waiters[path]

    # -- requests ---------------------------------------------------------------------------------

    def handle_request(self, client: Replier, req: dict[str, Any], fd: int | None) -> None:
        op = req.get("op")
        rid = req.get("id")
        privileged = client.peer.uid in (0, os.geteuid())
        self.tracker.process_events()  # a request sees every change made before it
        if op == "metrics":
            client.reply({"ok": True, "id": rid, "text": self.metrics_text()})
            return
        if op == "sync":
            # Every event queued before the request is handled (above) and committed: what a
            # test reads from the database now includes the effect of what it did before.
            self.commit()
            client.reply({"ok": True, "id": rid, "queued": len(self.scheduler.queue)})
            return
        if op == "rescan":
            if not privileged:
                client.reply({"ok": False, "id": rid, "error": "permission denied"})
                return
            self.tracker.rescan()
            client.reply({"ok": True, "id": rid})
            return
        if op == "status" and not req.get("paths") and not req.get("path"):
            totals = {str(s): vars(t) for s, t in self.db.totals().items()}
            client.reply(
                {
                    "ok": True,
                    "id": rid,
                    "totals": totals,
                    "queued": len(self.scheduler.queue),
                    "building": [
                        self._live(r) for p in self.scheduler.running if (r := self.db.get(p))
                    ],
                    "workers": self.config.workers,
                }
            )
            return
        paths = req.get("paths") or [req.get("path")]
        if op not in ("status", "wait", "build-now", "rebuild") or not all(
            isinstance(p, str) and Path(p).is_absolute() for p in paths
        ):
            client.reply({"ok": False, "id": rid, "error": "bad request"})
            return
        for p in paths:
            why = denial(client.peer, p, fd) if self.tracker.in_roots(p) else "permission denied"
            if why:
                client.reply({"ok": False, "id": rid, "path": p, "error": why})
                return
        if op == "status":
            files = []
            for p in paths:
                rec = self.db.get(p)
                files.append(self._live(rec) if rec else {"path": p, "state": "NONE"})
            client.reply({"ok": True, "id": rid, "files": files})
            return
        path = paths[0]
        timeout = float(req.get("timeout", 3600))
        if op == "rebuild":
            rec = self._rebuild(path)
        elif op == "build-now":
            # Look again: a change no event reported (a write through mmap) shows as STALE.
            self.tracker.scan_file(path, Cause.SCAN)
            rec = self.db.get(path)
            if rec is not None:
                rec = self._first_use(rec)
        else:
            rec = self._record(path)
        if rec is None:
            client.reply({"ok": True, "id": rid, "path": path, "state": "NONE"})
            return
        if rec.state in _BUSY and (op != "rebuild" or req.get("wait")):
            self.waiters.setdefault(path, []).append((client, req, time.monotonic() + timeout))
            return
        # Settled already (the daemon builds small files itself, maybe in this very turn):
        # what the caller is told is what the database says, as for a waiter.
        self.commit()
        client.reply({"ok": True, "id": rid, **self._live(rec)})

    def _rebuild(self, path: str) -> FileRecord | None:
        """A build against the current attributes. One already queued or running for the
        current content and attributes is that build: a second request joins it."""
        self.tracker.scan_file(path, Cause.SCAN)
        rec = self.db.get(path)
        if rec is None or rec.state not in _BUSY:
            self.tracker.scan_file(path, Cause.REBUILD)
            rec = self.db.get(path)
        else:
            self.metrics["rebuilds_coalesced"] += 1
        if rec is not None and rec.state in _BUSY:
            self.scheduler.enqueue(rec, FIRST_USE)
        return rec

    def _first_use(self, rec: FileRecord) -> FileRecord:
        """Make sure a tree exists for ``rec`` soon: verify the stored one, or build it first."""
        if rec.state is State.READY and rec.digest:
            try:
                alg, digest = parse_digest(rec.digest)
            except FormatError:  # a row no build wrote: build it again
                alg, digest = "", b""
            cached = self.store.get(alg, digest) if digest else None
            if cached is not None:
                try:
                    cached.verified()
                except IntegrityError:
                    self.metrics["cache_rejects"] += 1
                    self.store.discard(alg, digest)
                else:
                    return rec
            rec = self.db.put(rec.evolve(state=State.PENDING, progress=0))
        if rec.state in _BUSY:
            self.scheduler.enqueue(rec, FIRST_USE)
        return rec

    def metrics_text(self) -> str:
        lines = [
            "# HELP pyverity_files Protected files by lifecycle state.",
            "# TYPE pyverity_files gauge",
        ]
        totals = self.db.totals()
        for state in State:
            t = totals.get(state)
            lines.append(f'pyverity_files{{state="{state}"}} {t.count if t else 0}')
        for name, value in sorted(self.metrics.items()):
            metric = f"pyverity_{name}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        gauges = {
            "queue_length": len(self.scheduler.queue),
            "workers": self.config.workers,
            "workers_busy": len(self.scheduler.running),
            "watched_directories": self.tracker.watcher.watch_count,
        }
        for name, value in gauges.items():
            lines += [f"# TYPE pyverity_{name} gauge", f"pyverity_{name} {value}"]
        return "\n".join(lines) + "\n"
