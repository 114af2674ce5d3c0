"""The per-file state machine of DESIGN.md §3, as pure functions of (record, observation).

The daemon observes a file (opens it once, ``fstat``, reads both attributes from that
descriptor) or is told of a write, asks :func:`on_observe` / :func:`on_write` what follows, and
applies the :class:`Decision`. Keeping the rules here, free of I/O, lets the unit tests walk
every transition.

* A changed attribute value (or ``pyverity rebuild``) starts a new protection: PENDING and a
  build, or INVALID, or CLASSIC (0x03/0x04: no tree).
* A write (an ``IN_MODIFY``, or the identity snapshot differing at a scan or start-up) makes
  BUILDING, READY and MISMATCH files STALE; nothing leaves STALE but a changed value or a
  rebuild request. A PENDING file stays PENDING: its build has not started and will hash the
  content as it then is (``tar --xattrs`` sets attributes before it writes the data).
* chmod, touch and other attributes (``IN_ATTRIB`` with the same value) change nothing but the
  snapshot; if a build was running it will see the identity change and be retried.
* ctime: a change of ctime alone (chmod, chown, an attribute write — or a write whose mtime
  was put back) seen while no event explains it (start-up, rescan, first use: ``Cause.SCAN``)
  re-hashes a READY or MISMATCH file: READY if the content still matches, and a READY file
  whose content no longer does is STALE (``recheck``), not MISMATCH. Seen with an event
  (``IN_ATTRIB``, a new link), it is recorded only: a write would have raised ``IN_MODIFY``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyverity.daemon.protection import Declared
from pyverity.fs.openfile import FileIdentity
from pyverity.store.statedb import FileRecord, State

__all__ = ["Cause", "Decision", "Observation", "describe_change", "on_observe", "on_write"]

#: States a content change turns into STALE. A PENDING file is not built yet: its build will
#: hash the content as it is when it starts (``tar --xattrs`` writes the attributes first).
_WRITABLE = (State.BUILDING, State.READY, State.MISMATCH)
#: States whose content is hashed again when only ctime changed with no event to explain it.
_RECHECKED = (State.READY, State.MISMATCH)


class Cause(enum.Enum):
    ATTR = "attr"  # IN_ATTRIB: an attribute written, or chmod/touch
    APPEARED = "appeared"  # created or moved into a root
    SCAN = "scan"  # start-up reconciliation or a rescan
    REBUILD = "rebuild"  # an explicit request


@dataclass(frozen=True)
class Observation:
    """What one open of a file showed: identity snapshot, attribute values, parse result."""

    path: str
    snapshot: FileIdentity
    declared: Declared
    ctime_ns: int = 0

    def ctime_changed(self, rec: FileRecord) -> bool:
        """ctime differs from the row's (which is 0, unknown, after a schema-1 migration)."""
        return bool(rec.ctime_ns and self.ctime_ns and rec.ctime_ns != self.ctime_ns)


@dataclass(frozen=True)
class Decision:
    #: The row to store, or None to delete the row (no attributes any more).
    record: FileRecord | None
    #: Queue a build of ``record``.
    build: bool = False
    #: Stop any queued or running build, and drop its checkpoint.
    cancel: bool = False


def _with_snapshot(rec: FileRecord, snap: FileIdentity, ctime_ns: int = 0) -> FileRecord:
    dev, ino, size, mtime_ns = snap
    new = rec.evolve(dev=dev, ino=ino, size=size, mtime_ns=mtime_ns)
    return new.evolve(ctime_ns=ctime_ns) if ctime_ns else new


def describe_change(old: FileIdentity, new: FileIdentity) -> str:
    names = ("device", "inode", "size", "mtime")
    return ", ".join(f"{n} {a} -> {b}" for n, a, b in zip(names, old, new, strict=True) if a != b)


def on_write(
    rec: FileRecord,
    snapshot: FileIdentity | None,
    *,
    seen: str = "a write event",
    ctime_ns: int = 0,
) -> Decision | None:
    """An observed content change (``seen`` says how); None when it changes nothing."""
    if rec.state is State.PENDING:
        if snapshot is None or snapshot == rec.snapshot:
            return None
        return Decision(_with_snapshot(rec, snapshot, ctime_ns))
    if rec.state not in _WRITABLE:
        return None
    why = f"content written since protection ({seen})"
    new = rec.evolve(state=State.STALE, progress=0, error=why, recheck=False)
    if snapshot is not None:
        new = _with_snapshot(new, snapshot, ctime_ns)
    return Decision(new, build=False, cancel=True)


def _new_protection(rec: FileRecord | None, obs: Observation) -> Decision:
    dev, ino, size, mtime_ns = obs.snapshot
    base = FileRecord(
        path=obs.path,
        state=State.PENDING,
        dev=dev,
        ino=ino,
        size=size,
        mtime_ns=mtime_ns,
        attr_fp=obs.declared.fingerprint,
        ctime_ns=obs.ctime_ns,
    )
    if rec is not None:
        base = base.evolve(id=rec.id, created_ns=rec.created_ns)
    declared = obs.declared
    if declared.protection is None:
        reason = declared.invalid_reason or "invalid"
        return Decision(base.evolve(state=State.INVALID, error=reason), cancel=True)
    base = base.evolve(kind=declared.kind)
    if not declared.needs_tree:
        return Decision(base.evolve(state=State.CLASSIC), cancel=True)
    base = base.evolve(digest=declared.declared_digest)
    return Decision(base, build=True, cancel=True)


def on_observe(rec: FileRecord | None, obs: Observation, cause: Cause) -> Decision | None:
    """What follows from looking at a file; None when nothing changes."""
    if not obs.declared.present:
        return None if rec is None else Decision(None, cancel=True)
    if rec is None or cause is Cause.REBUILD or rec.attr_fp != obs.declared.fingerprint:
        return _new_protection(rec, obs)
    if rec.state is State.INVALID and rec.snapshot != obs.snapshot:
        # INVALID can rest on the content (a descriptor's data_size against the file's size):
        # a writer that sets the attributes first and the data after (tar --xattrs) is judged
        # again once the content changes. A build still proves the content before READY.
        return _new_protection(rec, obs)
    ctime = obs.ctime_ns
    if rec.snapshot == obs.snapshot:
        if cause is Cause.SCAN and obs.ctime_changed(rec) and rec.state in _RECHECKED:
            # Only ctime changed and no event says why: hash the content again.
            again = rec.evolve(
                state=State.PENDING,
                progress=0,
                error="",
                ctime_ns=ctime,
                recheck=rec.state is State.READY or rec.recheck,
            )
            return Decision(again, build=True, cancel=True)
        if cause is not Cause.ATTR and rec.state in (State.PENDING, State.BUILDING):
            pending = rec.evolve(state=State.PENDING, ctime_ns=ctime or rec.ctime_ns)
            return Decision(pending, build=True)
        if ctime and ctime != rec.ctime_ns:
            return Decision(rec.evolve(ctime_ns=ctime))  # explained by an event, or unknown
        return None
    if cause is Cause.ATTR:
        # Same attribute value: chmod, touch or another attribute. Not a content change.
        return Decision(_with_snapshot(rec, obs.snapshot, ctime))
    # Identity differs and no write event explains it: written while we were not looking.
    if rec.state in _WRITABLE:
        seen = describe_change(rec.snapshot, obs.snapshot)
        return on_write(rec, obs.snapshot, seen=seen, ctime_ns=ctime)
    if rec.state is State.PENDING:
        return Decision(_with_snapshot(rec, obs.snapshot, ctime), build=True)
    return Decision(_with_snapshot(rec, obs.snapshot, ctime))
