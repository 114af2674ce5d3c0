"""The daemon's state database: SQLite in WAL mode, one row per protected inode (DESIGN.md §4).

A state belongs to an inode, ``(st_dev, st_ino)``: attributes and content are the inode's, so
every path (hard link) of one inode shares one row of ``inodes`` through the ``paths`` table,
and a write through any link changes what every path reports. :class:`FileRecord` is that row
seen through one path. Databases of the first schema (one row per path, ``files``) are
migrated when the daemon opens them (:func:`_migrate`).

Only the daemon writes it; ``pyverity status`` may read it (``readonly=True``) at the same time,
which WAL allows. Writes are batched: they accumulate in one open transaction until
:meth:`StateDB.commit`, which the daemon calls a few times a second and on state changes that a
caller waits for. Paths are stored as bytes (``os.fsencode``), so any file name round-trips.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pyverity.errors import StorageError
from pyverity.fs.openfile import FileIdentity

__all__ = ["SCHEMA_VERSION", "Checkpoint", "FileRecord", "State", "StateDB", "Totals"]

#: ``PRAGMA user_version`` of the current schema (0 or 1: the per-path ``files`` table).
SCHEMA_VERSION = 2
#: Paths (and inodes' links) a writable connection remembers before it starts over.
_REMEMBERED = 1 << 16
#: Inodes' rows it remembers (a few MiB) before it starts over.
_ROWS_REMEMBERED = 1 << 13


class State(enum.StrEnum):
    """The per-file lifecycle of DESIGN.md §3 (``CLASSIC``: a 0x03/0x04 value, no tree)."""

    PENDING = "PENDING"
    BUILDING = "BUILDING"
    READY = "READY"
    STALE = "STALE"
    MISMATCH = "MISMATCH"
    INVALID = "INVALID"
    CLASSIC = "CLASSIC"


@dataclass(frozen=True)
class FileRecord:
    """One protected inode seen through ``path``: state, identity snapshot, attribute
    fingerprint. ``id`` is the inode's row, shared by all its paths."""

    path: str
    state: State
    dev: int
    ino: int
    size: int
    mtime_ns: int
    #: SHA-256 over both attribute values as read: a changed value means a new protection.
    attr_fp: bytes
    kind: str = ""
    #: The declared (descriptor) or computed file digest, ``alg:hex``, when known.
    digest: str = ""
    progress: int = 0
    error: str = ""
    created_ns: int = 0
    updated_ns: int = 0
    ready_ns: int | None = None
    id: int | None = None
    #: ``st_ctime_ns`` when last looked at; 0 when unknown (a row migrated from schema 1).
    ctime_ns: int = 0
    #: The queued build re-checks a READY file whose ctime alone changed: a result that does
    #: not match makes it STALE (written), not MISMATCH.
    recheck: bool = False

    @property
    def snapshot(self) -> FileIdentity:
        return FileIdentity((self.dev, self.ino, self.size, self.mtime_ns))

    def evolve(self, **changes: object) -> FileRecord:
        """A copy with ``changes`` (field names only; no check of the values' types). Made
        without ``dataclasses.replace``, which costs several microseconds per row."""
        if not changes.keys() <= _RECORD_FIELDS:
            raise TypeError(f"FileRecord has no field {sorted(changes.keys() - _RECORD_FIELDS)}")
        new = object.__new__(FileRecord)
        new.__dict__.update(self.__dict__, **changes)
        return new


_RECORD_FIELDS = frozenset(f.name for f in fields(FileRecord))


@dataclass(frozen=True)
class Checkpoint:
    """Where a partial build stopped: data offset, identity at that time, for which attributes,
    and the SHA-256 of the leaf hashes saved up to ``offset`` (a corrupted file is refused)."""

    file_id: int
    attr_fp: bytes
    offset: int
    snapshot: FileIdentity
    leaves_sha256: bytes = b""


@dataclass(frozen=True)
class Totals:
    count: int
    size: int
    progress: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    id INTEGER PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL DEFAULT 0,
    attr_fp BLOB NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    progress INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    recheck INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    ready_ns INTEGER,
    UNIQUE (dev, ino)
);
CREATE INDEX IF NOT EXISTS inodes_state ON inodes(state);
CREATE TABLE IF NOT EXISTS paths (
    path BLOB PRIMARY KEY,
    inode INTEGER NOT NULL REFERENCES inodes(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS paths_inode ON paths(inode);
CREATE TABLE IF NOT EXISTS checkpoints (
    file_id INTEGER PRIMARY KEY REFERENCES inodes(id) ON DELETE CASCADE,
    attr_fp BLOB NOT NULL,
    offset INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    leaves_sha256 BLOB NOT NULL
);
"""
_COLUMNS = (
    "p.path, i.state, i.kind, i.dev, i.ino, i.size, i.mtime_ns, i.attr_fp, i.digest, i.progress,"
    " i.error, i.created_ns, i.updated_ns, i.ready_ns, i.id, i.ctime_ns, i.recheck"
)
_FROM = "FROM paths p JOIN inodes i ON i.id = p.inode"


def _row(r: tuple[Any, ...]) -> FileRecord:
    (path, state, kind, dev, ino, size, mtime, fp, digest, prog, err, c, u, rdy, i, ct, rc) = r
    return FileRecord(
        path=os.fsdecode(path),
        state=State(state),
        kind=kind,
        dev=dev,
        ino=ino,
        size=size,
        mtime_ns=mtime,
        attr_fp=fp,
        digest=digest,
        progress=prog,
        error=err,
        created_ns=c,
        updated_ns=u,
        ready_ns=rdy,
        id=i,
        ctime_ns=ct,
        recheck=bool(rc),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Schema 1 (``files``: one row per path) to 2 (``inodes`` + ``paths``), in one transaction.

    Paths of one inode had rows of their own, possibly in different states (the bug this
    schema fixes); the most recently updated row speaks for the inode. ctime was not kept: it
    is 0 (unknown) and the next look at the file records it. Checkpoints carried no checksum
    and are dropped: those builds start again from offset 0.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DROP TABLE IF EXISTS checkpoints")
        db.execute("ALTER TABLE files RENAME TO files_v1")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO inodes (id, dev, ino, state, kind, size, mtime_ns, attr_fp, digest,"
            " progress, error, created_ns, updated_ns, ready_ns)"
            " SELECT id, dev, ino, state, kind, size, mtime_ns, attr_fp, digest, progress, error,"
            " created_ns, updated_ns, ready_ns FROM files_v1 f WHERE f.id = (SELECT g.id FROM"
            " files_v1 g WHERE g.dev = f.dev AND g.ino = f.ino"
            " ORDER BY g.updated_ns DESC, g.id DESC LIMIT 1)"
        )
        db.execute(
            "INSERT INTO paths (path, inode) SELECT f.path, i.id FROM files_v1 f"
            " JOIN inodes i ON i.dev = f.dev AND i.ino = f.ino"
        )
        db.execute("DROP TABLE files_v1")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _open_writable(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=5)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: each commit (batched, at most a few a second) is durable. With NORMAL a WAL commit
    # waits for SQLite's next checkpoint to reach the disk, so a power cut lost every row and
    # checkpoint of the last minutes and builds restarted from 0 (tests/kernel/test_powerloss.py).
    db.execute("PRAGMA synchronous=FULL")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "files" in tables and "inodes" not in tables:
        _migrate(db)  # foreign keys off while tables are renamed and dropped
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


class StateDB:
    """The database at ``path``; ``readonly`` opens it for ``pyverity status``."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
            else:
                self._db = _open_writable(self.path)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the state database {self.path}: {e}") from e
        if readonly and version != SCHEMA_VERSION:
            self._db.close()
            raise StorageError(
                f"the state database {self.path} has schema {version}, not {SCHEMA_VERSION}",
                remedy="start the daemon of this version once: it migrates the database",
            )
        self._readonly = readonly
        self._in_tx = False
        #: What this connection read or wrote of ``paths`` (the daemon is its only writer),
        #: so that a file's row costs no lookup of its inode or links per change: path ->
        #: inode id (None: no row), and inode id -> its sorted paths.
        self._inode_ids: dict[bytes, int | None] = {}
        self._links: dict[int, list[str]] = {}
        #: Inode id -> its row as last written or read (under any of its paths).
        self._rows: dict[int, FileRecord] = {}

    def close(self) -> None:
        if self._in_tx:
            self.commit()
        self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (batched in one transaction until commit) --------------------------------------

    def _write(self, sql: str, args: Iterable[object] = ()) -> sqlite3.Cursor:
        if self._readonly:
            raise StorageError("the state database is open read-only")
        try:
            if not self._in_tx:
                self._db.execute("BEGIN")
                self._in_tx = True
            return self._db.execute(sql, tuple(args))
        except sqlite3.Error as e:
            raise StorageError(f"state database write failed: {e}") from e

    def commit(self) -> None:
        if self._in_tx:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._forget_paths()  # the transaction may be rolled back
                raise StorageError(f"state database commit failed: {e}") from e
            self._in_tx = False

    def _forget_paths(self) -> None:
        self._inode_ids.clear()
        self._links.clear()
        self._rows.clear()

    def _remember(self, table: dict[Any, Any], key: object, value: object) -> None:
        """Keep ``key -> value`` in ``table`` (one of the three above), unless read-only."""
        if self._readonly:  # another process writes: nothing read stays true
            return
        if table is self._rows:
            if len(table) >= _ROWS_REMEMBERED:
                table.clear()  # rows are only used with a path's remembered inode
        elif len(table) >= _REMEMBERED:
            self._forget_paths()
        table[key] = value

    def _inode_of(self, path: str) -> int | None:
        key = os.fsencode(path)
        if key in self._inode_ids:
            return self._inode_ids[key]
        r = self._query("SELECT inode FROM paths WHERE path=?", (key,)).fetchone()
        inode = None if r is None else int(r[0])
        self._remember(self._inode_ids, key, inode)
        return inode

    def _drop_if_orphan(self, inode: int) -> bool:
        cur = self._write(
            "DELETE FROM inodes WHERE id=? AND NOT EXISTS (SELECT 1 FROM paths WHERE inode=?)",
            (inode, inode),
        )
        if cur.rowcount > 0:
            self._rows.pop(inode, None)
            return True
        return False

    def put(self, rec: FileRecord) -> FileRecord:
        """Store the state of ``rec``'s inode and link ``rec.path`` to it; returns ``rec`` with
        the inode's id and timestamps. Every other path of that inode now reads the same row;
        an inode that ``rec.path`` named before and no path names any more is dropped."""
        now = time.time_ns()
        created = rec.created_ns or now
        before = self._inode_of(rec.path)
        cur = self._write(
            "INSERT INTO inodes (dev, ino, state, kind, size, mtime_ns, ctime_ns, attr_fp,"
            " digest, progress, error, recheck, created_ns, updated_ns, ready_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(dev, ino) DO UPDATE SET state=excluded.state, kind=excluded.kind,"
            " size=excluded.size, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns,"
            " attr_fp=excluded.attr_fp, digest=excluded.digest, progress=excluded.progress,"
            " error=excluded.error, recheck=excluded.recheck, updated_ns=excluded.updated_ns,"
            " ready_ns=excluded.ready_ns RETURNING id, created_ns",
            (
                rec.dev,
                rec.ino,
                str(rec.state),
                rec.kind,
                rec.size,
                rec.mtime_ns,
                rec.ctime_ns,
                rec.attr_fp,
                rec.digest,
                rec.progress,
                rec.error,
                int(rec.recheck),
                created,
                now,
                rec.ready_ns,
            ),
        )
        rid, created = cur.fetchone()
        if before != rid:
            key = os.fsencode(rec.path)
            self._write(
                "INSERT INTO paths (path, inode) VALUES (?, ?)"
                " ON CONFLICT(path) DO UPDATE SET inode=excluded.inode",
                (key, rid),
            )
            self._remember(self._inode_ids, key, rid)
            self._links.pop(rid, None)
            if before is not None:
                self._links.pop(before, None)
                self._drop_if_orphan(before)
        stored = rec.evolve(id=rid, created_ns=created, updated_ns=now)
        self._remember(self._rows, rid, stored)
        return stored

    def set_progress(self, path: str, progress: int) -> None:
        inode = self._inode_of(path)
        if inode is not None:
            self._rows.pop(inode, None)
        self._write(
            "UPDATE inodes SET progress=?, updated_ns=?"
            " WHERE id=(SELECT inode FROM paths WHERE path=?)",
            (progress, time.time_ns(), os.fsencode(path)),
        )

    def delete(self, path: str) -> bool:
        """Forget ``path``; True if that was the inode's last path (its row is gone too)."""
        inode = self._inode_of(path)
        if inode is None:
            return True
        key = os.fsencode(path)
        self._write("DELETE FROM paths WHERE path=?", (key,))
        self._remember(self._inode_ids, key, None)
        self._links.pop(inode, None)
        return self._drop_if_orphan(inode)

    def put_checkpoint(self, cp: Checkpoint) -> None:
        self._write(
            "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?,?)",
            (cp.file_id, cp.attr_fp, cp.offset, *cp.snapshot, cp.leaves_sha256),
        )

    def delete_checkpoint(self, file_id: int) -> None:
        self._write("DELETE FROM checkpoints WHERE file_id=?", (file_id,))

    # -- reads ------------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[object] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, tuple(args))
        except sqlite3.Error as e:
            raise StorageError(f"state database read failed: {e}") from e

    def get(self, path: str) -> FileRecord | None:
        key = os.fsencode(path)
        if key in self._inode_ids:  # the daemon's writer: what it wrote or read is still true
            inode = self._inode_ids[key]
            if inode is None:
                return None
            row = self._rows.get(inode)
            if row is not None:
                return row if row.path == path else row.evolve(path=path)
        r = self._query(f"SELECT {_COLUMNS} {_FROM} WHERE p.path=?", (key,)).fetchone()
        if r is None:
            self._remember(self._inode_ids, key, None)
            return None
        rec = _row(r)
        if rec.id is not None:
            self._remember(self._inode_ids, key, rec.id)
            self._remember(self._rows, rec.id, rec)
        return rec

    def by_inode(self, dev: int, ino: int) -> list[FileRecord]:
        """The inode's state through each of its paths (empty if it has no row)."""
        rows = self._query(
            f"SELECT {_COLUMNS} {_FROM} WHERE i.dev=? AND i.ino=? ORDER BY p.path",
            (dev, ino),
        )
        return [_row(r) for r in rows]

    def paths_of(self, file_id: int) -> list[str]:
        """Every path of the inode row ``file_id``, sorted."""
        known = self._links.get(file_id)
        if known is None:
            rows = self._query("SELECT path FROM paths WHERE inode=? ORDER BY path", (file_id,))
            known = [os.fsdecode(p) for (p,) in rows]
            self._remember(self._links, file_id, known)
        return list(known)

    def records(self, states: Iterable[State] | None = None) -> Iterator[FileRecord]:
        """All paths' rows (or those in ``states``), ordered by path."""
        if states is None:
            rows = self._query(f"SELECT {_COLUMNS} {_FROM} ORDER BY p.path")
        else:
            names = [str(s) for s in states]
            marks = ",".join("?" * len(names))
            rows = self._query(
                f"SELECT {_COLUMNS} {_FROM} WHERE i.state IN ({marks}) ORDER BY p.path",
                names,
            )
        for r in rows:
            yield _row(r)

    def paths(self) -> Iterator[str]:
        """Every path, streamed (no row objects: cheap on millions of rows)."""
        for (p,) in self._query("SELECT path FROM paths"):
            yield os.fsdecode(p)

    def records_under(self, prefix: str) -> list[FileRecord]:
        """Rows whose path starts with ``prefix`` (which should end with a separator)."""
        lo = os.fsencode(prefix)
        hi = lo[:-1] + bytes([lo[-1] + 1]) if lo and lo[-1] < 255 else lo + b"\xff"
        rows = self._query(
            f"SELECT {_COLUMNS} {_FROM} WHERE p.path >= ? AND p.path < ?",
            (lo, hi),
        )
        return [_row(r) for r in rows]

    def totals(self) -> dict[State, Totals]:
        """Per state: inodes (a file with two links counts once), their size and progress."""
        rows = self._query(
            "SELECT state, count(*), sum(size), sum(progress) FROM inodes GROUP BY state"
        )
        return {State(s): Totals(n, size or 0, prog or 0) for s, n, size, prog in rows}

    def checkpoint_ids(self) -> set[int]:
        """The files that have a checkpoint row."""
        return {int(i) for (i,) in self._query("SELECT file_id FROM checkpoints")}

    def get_checkpoint(self, file_id: int) -> Checkpoint | None:
        r = self._query(
            "SELECT attr_fp, offset, dev, ino, size, mtime_ns, leaves_sha256 FROM checkpoints"
            " WHERE file_id=?",
            (file_id,),
        ).fetchone()
        if r is None:
            return None
        return Checkpoint(file_id, r[0], r[1], FileIdentity((r[2], r[3], r[4], r[5])), r[6])
