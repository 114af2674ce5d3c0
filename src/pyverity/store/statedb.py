"""The daemon's state database: SQLite in WAL mode, one row per protected file (DESIGN.md §4).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyverity.errors import StorageError

__all__ = ["Checkpoint", "FileRecord", "State", "StateDB", "Totals"]


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
    """One protected file: its state, the identity snapshot and the attribute fingerprint."""

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

    @property
    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns)

    def evolve(self, **changes: object) -> FileRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Checkpoint:
    """Where a partial build stopped: data offset, identity at that time, for which attributes."""

    file_id: int
    attr_fp: bytes
    offset: int
    snapshot: tuple[int, int, int, int]


@dataclass(frozen=True)
class Totals:
    count: int
    size: int
    progress: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    attr_fp BLOB NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    progress INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    ready_ns INTEGER
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_inode ON files(dev, ino);
CREATE TABLE IF NOT EXISTS checkpoints (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    attr_fp BLOB NOT NULL,
    offset INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
"""
_COLUMNS = (
    "path, state, kind, dev, ino, size, mtime_ns, attr_fp, digest, progress, error,"
    " created_ns, updated_ns, ready_ns, id"
)


def _row(r: tuple[Any, ...]) -> FileRecord:
    (path, state, kind, dev, ino, size, mtime_ns, fp, digest, progress, error, c, u, rdy, i) = r
    return FileRecord(
        path=os.fsdecode(path),
        state=State(state),
        kind=kind,
        dev=dev,
        ino=ino,
        size=size,
        mtime_ns=mtime_ns,
        attr_fp=fp,
        digest=digest,
        progress=progress,
        error=error,
        created_ns=c,
        updated_ns=u,
        ready_ns=rdy,
        id=i,
    )


class StateDB:
    """The database at ``path``; ``readonly`` opens it for ``pyverity status``."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: each commit (batched, at most a few a second) is durable. With NORMAL a
                # WAL commit waits for SQLite's next checkpoint to reach the disk, so a power
                # cut lost every row and checkpoint of the last minutes and builds restarted
                # from 0 (tests/kernel/test_powerloss.py).
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the state database {self.path}: {e}") from e
        self._readonly = readonly
        self._in_tx = False

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
                raise StorageError(f"state database commit failed: {e}") from e
            self._in_tx = False

    def put(self, rec: FileRecord) -> FileRecord:
        """Insert or replace the row of ``rec.path``; returns it with its id and timestamps."""
        now = time.time_ns()
        created = rec.created_ns or now
        cur = self._write(
            "INSERT INTO files (path, state, kind, dev, ino, size, mtime_ns, attr_fp, digest,"
            " progress, error, created_ns, updated_ns, ready_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(path) DO UPDATE SET state=excluded.state, kind=excluded.kind,"
            " dev=excluded.dev, ino=excluded.ino, size=excluded.size,"
            " mtime_ns=excluded.mtime_ns, attr_fp=excluded.attr_fp, digest=excluded.digest,"
            " progress=excluded.progress, error=excluded.error,"
            " updated_ns=excluded.updated_ns, ready_ns=excluded.ready_ns RETURNING id",
            (
                os.fsencode(rec.path),
                str(rec.state),
                rec.kind,
                rec.dev,
                rec.ino,
                rec.size,
                rec.mtime_ns,
                rec.attr_fp,
                rec.digest,
                rec.progress,
                rec.error,
                created,
                now,
                rec.ready_ns,
            ),
        )
        (rid,) = cur.fetchone()
        return rec.evolve(id=rid, created_ns=created, updated_ns=now)

    def set_progress(self, path: str, progress: int) -> None:
        self._write(
            "UPDATE files SET progress=?, updated_ns=? WHERE path=?",
            (progress, time.time_ns(), os.fsencode(path)),
        )

    def delete(self, path: str) -> None:
        self._write("DELETE FROM files WHERE path=?", (os.fsencode(path),))

    def put_checkpoint(self, cp: Checkpoint) -> None:
        self._write(
            "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?)",
            (cp.file_id, cp.attr_fp, cp.offset, *cp.snapshot),
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
        r = self._query(
            f"SELECT {_COLUMNS} FROM files WHERE path=?",  # noqa: S608 (constant columns)
            (os.fsencode(path),),
        ).fetchone()
        return None if r is None else _row(r)

    def by_inode(self, dev: int, ino: int) -> list[FileRecord]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM files WHERE dev=? AND ino=?",  # noqa: S608
            (dev, ino),
        )
        return [_row(r) for r in rows]

    def records(self, states: Iterable[State] | None = None) -> Iterator[FileRecord]:
        """All rows (or those in ``states``), ordered by path."""
        if states is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM files ORDER BY path")  # noqa: S608
        else:
            names = [str(s) for s in states]
            marks = ",".join("?" * len(names))
            rows = self._query(
                f"SELECT {_COLUMNS} FROM files WHERE state IN ({marks}) ORDER BY path",  # noqa: S608
                names,
            )
        for r in rows:
            yield _row(r)

    def paths(self) -> Iterator[str]:
        """Every path, streamed (no row objects: cheap on millions of rows)."""
        for (p,) in self._query("SELECT path FROM files"):
            yield os.fsdecode(p)

    def records_under(self, prefix: str) -> list[FileRecord]:
        """Rows whose path starts with ``prefix`` (which should end with a separator)."""
        lo = os.fsencode(prefix)
        hi = lo[:-1] + bytes([lo[-1] + 1]) if lo and lo[-1] < 255 else lo + b"\xff"
        rows = self._query(
            f"SELECT {_COLUMNS} FROM files WHERE path >= ? AND path < ?",  # noqa: S608
            (lo, hi),
        )
        return [_row(r) for r in rows]

    def totals(self) -> dict[State, Totals]:
        rows = self._query(
            "SELECT state, count(*), sum(size), sum(progress) FROM files GROUP BY state"
        )
        return {State(s): Totals(n, size or 0, prog or 0) for s, n, size, prog in rows}

    def get_checkpoint(self, file_id: int) -> Checkpoint | None:
        r = self._query(
            "SELECT attr_fp, offset, dev, ino, size, mtime_ns FROM checkpoints WHERE file_id=?",
            (file_id,),
        ).fetchone()
        if r is None:
            return None
        return Checkpoint(file_id, r[0], r[1], (r[2], r[3], r[4], r[5]))
