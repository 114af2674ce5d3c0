"""The daemon's answers on its control socket (mixed into :class:`~.core.Daemon`).

``sync`` (handle every pending event, commit, reply), ``status`` (paths, or totals),
``wait`` (until a file leaves PENDING/BUILDING), ``build-now``
(a first-use request: jumps the queue; a READY file's cached tree is fully verified and
rebuilt if it is missing or corrupted), ``rebuild`` (leave STALE), ``rescan``, ``metrics``
(Prometheus text). Path requests need the caller to be able to open the file (or to have sent
its descriptor) and the path to be under the roots.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyverity.daemon.lifecycle import Cause, Decision
from pyverity.daemon.pool import FIRST_USE, Job, JobQueue
from pyverity.daemon.server import Client, denial
from pyverity.errors import IntegrityError
from pyverity.store.statedb import FileRecord, State

if TYPE_CHECKING:
    from pyverity.daemon.config import DaemonConfig
    from pyverity.daemon.pool import WorkerPool
    from pyverity.daemon.server import Server
    from pyverity.daemon.watcher import Watcher
    from pyverity.store.cache import TreeStore
    from pyverity.store.statedb import StateDB

__all__ = ["ControlMixin", "record_json"]

_BUSY = (State.PENDING, State.BUILDING)


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


class ControlMixin:
    if TYPE_CHECKING:
        config: DaemonConfig
        db: StateDB
        store: TreeStore
        queue_: JobQueue
        running: dict[str, Job]
        waiters: dict[str, list[tuple[Client, dict[str, Any], float]]]
        metrics: dict[str, int]
        watcher: Watcher | None
        pool: WorkerPool | None
        server: Server | None
        _sel: selectors.BaseSelector

        def in_roots(self, path: str) -> bool: ...
        def _commit(self) -> None: ...
        def process_events(self) -> None: ...
        def scan_file(self, path: str, cause: Cause = Cause.SCAN) -> None: ...
        def rescan(self) -> None: ...
        def enqueue(self, rec: FileRecord, priority: int) -> None: ...
        def apply(self, path: str, old: FileRecord | None, decision: Decision | None) -> None: ...

    # -- plumbing ---------------------------------------------------------------------------------

    def _accept(self) -> None:
        if self.server is None:
            return
        client = self.server.accept()
        if client is not None:
            self._sel.register(client.sock, selectors.EVENT_READ, ("client", client))

    def _client_readable(self, client: Client) -> None:
        if self.server is None:
            return
        self.server.read(client, self.handle_request)
        if client.closed:
            self._drop_client(client)

    def _drop_client(self, client: Client) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(client.sock)
        for path in list(self.waiters):
            self.waiters[path] = [w for w in self.waiters[path] if w[0] is not client]
            if not self.waiters[path]:
                del self.waiters[path]

    def _record(self, path: str) -> FileRecord | None:
        rec = self.db.get(path)
        if rec is None:
            self.scan_file(path, Cause.ATTR)
            rec = self.db.get(path)
        return rec

    def _live(self, rec: FileRecord) -> dict[str, Any]:
        job = self.running.get(rec.path)
        return record_json(rec, job.progress if job is not None else None)

    def _notify(self, path: str, rec: FileRecord | None) -> None:
        if rec is not None and rec.state in _BUSY:
            return
        waiting = self.waiters.pop(path, [])
        if waiting:
            self.store.flush()
            self.db.commit()  # what a waiter is told is what the database says
        for client, req, _ in waiting:
            if rec is None:
                client.reply({"ok": True, "id": req.get("id"), "path": path, "state": "NONE"})
            else:
                client.reply({"ok": True, "id": req.get("id"), **self._live(rec)})

    def _expire_waiters(self) -> None:
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

    def handle_request(self, client: Client, req: dict[str, Any], fd: int | None) -> None:
        op = req.get("op")
        rid = req.get("id")
        privileged = client.peer.uid in (0, os.geteuid())
        self.process_events()  # a request sees every change made before it
        if op == "metrics":
            client.reply({"ok": True, "id": rid, "text": self.metrics_text()})
            return
        if op == "sync":
            # Every event queued before the request is handled (above) and committed: what a
            # test reads from the database now includes the effect of what it did before.
            self._commit()
            client.reply({"ok": True, "id": rid, "queued": len(self.queue_)})
            return
        if op == "rescan":
            if not privileged:
                client.reply({"ok": False, "id": rid, "error": "permission denied"})
                return
            self.rescan()
            client.reply({"ok": True, "id": rid})
            return
        if op == "status" and not req.get("paths") and not req.get("path"):
            totals = {str(s): vars(t) for s, t in self.db.totals().items()}
            client.reply(
                {
                    "ok": True,
                    "id": rid,
                    "totals": totals,
                    "queued": len(self.queue_),
                    "building": [self._live(r) for p in self.running if (r := self.db.get(p))],
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
            why = denial(client.peer, p, fd) if self.in_roots(p) else "permission denied"
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
            self.scan_file(path, Cause.SCAN)
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
        client.reply({"ok": True, "id": rid, **self._live(rec)})

    def _rebuild(self, path: str) -> FileRecord | None:
        """A build against the current attributes. One already queued or running for the
        current content and attributes is that build: a second request joins it."""
        self.scan_file(path, Cause.SCAN)
        rec = self.db.get(path)
        if rec is None or rec.state not in _BUSY:
            self.scan_file(path, Cause.REBUILD)
            rec = self.db.get(path)
        else:
            self.metrics["rebuilds_coalesced"] += 1
        if rec is not None and rec.state in _BUSY:
            self.enqueue(rec, FIRST_USE)
        return rec

    def _first_use(self, rec: FileRecord) -> FileRecord:
        """Make sure a tree exists for ``rec`` soon: verify the stored one, or build it first."""
        if rec.state is State.READY and rec.digest:
            alg, _, hexd = rec.digest.partition(":")
            cached = self.store.get(alg, bytes.fromhex(hexd))
            if cached is not None:
                try:
                    cached.verified()
                except IntegrityError:
                    self.metrics["cache_rejects"] += 1
                    self.store.discard(alg, bytes.fromhex(hexd))
                else:
                    return rec
            rec = self.db.put(rec.evolve(state=State.PENDING, progress=0))
        if rec.state in _BUSY:
            self.enqueue(rec, FIRST_USE)
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
            "queue_length": len(self.queue_),
            "workers": self.config.workers,
            "workers_busy": len(self.running),
            "watched_directories": self.watcher.watch_count if self.watcher else 0,
        }
        for name, value in gauges.items():
            lines += [f"# TYPE pyverity_{name} gauge", f"pyverity_{name} {value}"]
        return "\n".join(lines) + "\n"
