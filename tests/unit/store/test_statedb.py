from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from pyverity.errors import StorageError
from pyverity.fs.openfile import FileIdentity
from pyverity.store.checkpoint import PartialStore
from pyverity.store.statedb import SCHEMA_VERSION, Checkpoint, FileRecord, State, StateDB


def _rec(path: str, state: State = State.PENDING, size: int = 10, ino: int = 2) -> FileRecord:
    return FileRecord(path, state, 1, ino, size, 3, b"f" * 32)


def test_put_get_update_delete(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        r = db.put(_rec("/a/\udcff"))  # undecodable names round-trip
        assert r.id is not None
        db.commit()
        got = db.get("/a/\udcff")
        assert got is not None
        assert got.state is State.PENDING
        assert got.id == r.id
        db.put(got.evolve(state=State.READY, progress=10))
        db.set_progress("/a/\udcff", 5)
        got2 = db.get("/a/\udcff")
        assert got2 is not None
        assert got2.state is State.READY
        assert got2.progress == 5
        assert got2.created_ns == r.created_ns
        db.delete("/a/\udcff")
        assert db.get("/a/\udcff") is None


def test_wal_and_readonly_reader_sees_commits_only(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.put(_rec("/x"))
    db.commit()
    ro = StateDB(tmp_path / "s.db", readonly=True)
    db.put(_rec("/y"))  # not committed yet
    assert ro.get("/x") is not None
    assert ro.get("/y") is None
    db.commit()
    assert ro.get("/y") is not None
    with pytest.raises(StorageError):
        ro.put(_rec("/z"))
    assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ro.close()
    db.close()


def test_totals_records_under_and_inode(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        db.put(_rec("/r/a", State.READY, 100, ino=2))
        db.put(_rec("/r/b/c", State.STALE, 50, ino=3))
        db.put(_rec("/r/bb", State.READY, 1, ino=4))
        db.put(_rec("/s", State.INVALID, ino=2))  # a second link of /r/a's inode
        t = db.totals()
        assert t[State.INVALID].count == 1  # one inode: its state is the last one put
        assert t[State.READY].count == 1
        assert t[State.READY].size == 1
        assert [r.path for r in db.records_under("/r/b/")] == ["/r/b/c"]
        assert [r.path for r in db.by_inode(1, 2)] == ["/r/a", "/s"]
        assert [r.path for r in db.records([State.STALE])] == ["/r/b/c"]


def test_checkpoints_cascade(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        r = db.put(_rec("/a"))
        assert r.id is not None
        cp = Checkpoint(r.id, r.attr_fp, 8192, FileIdentity((1, 2, 3, 4)), b"s" * 32)
        db.put_checkpoint(cp)
        assert db.get_checkpoint(r.id) == cp
        db.delete("/a")
        assert db.get_checkpoint(r.id) is None


def test_partial_store_never_behind_the_row(tmp_path: Path) -> None:
    ps = PartialStore(tmp_path)

    def sha(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()

    ps.append(7, b"a" * 64, 0)
    ps.append(7, b"b" * 32, 64)
    assert ps.load(7, 96, sha(b"a" * 64 + b"b" * 32)) == b"a" * 64 + b"b" * 32
    assert ps.load(7, 64, sha(b"a" * 64)) == b"a" * 64
    assert ps.load(7, 200, sha(b"")) is None  # the row claims more than was saved: unusable
    ps.append(7, b"c" * 32, 32)  # rewriting from an older offset drops what followed
    assert ps.load(7, 64, sha(b"a" * 32 + b"c" * 32)) == b"a" * 32 + b"c" * 32
    assert ps.ids() == {7}
    ps.discard(7)
    assert ps.load(7, 0, sha(b"")) is None


def test_partial_store_refuses_leaves_not_matching_their_checksum(tmp_path: Path) -> None:
    ps = PartialStore(tmp_path)
    good = os.urandom(96)
    ps.append(3, good, 0)
    assert ps.load(3, 96, hashlib.sha256(good).digest()) == good
    path = tmp_path / "partial" / "3.leaves"
    data = bytearray(path.read_bytes())
    data[40] ^= 1  # one bit flipped on disk
    path.write_bytes(bytes(data))
    assert ps.load(3, 96, hashlib.sha256(good).digest()) is None


def test_links_share_one_inode_row(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        a = db.put(_rec("/r/a", State.READY))
        b = db.put(_rec("/r/b", State.READY))
        assert a.id == b.id
        db.put(b.evolve(state=State.STALE, error="written"))  # through /r/b
        got = db.get("/r/a")
        assert got is not None
        assert got.state is State.STALE  # ... and /r/a says so too
        assert got.path == "/r/a"
        assert db.paths_of(a.id or 0) == ["/r/a", "/r/b"]
        assert db.delete("/r/a") is False  # /r/b still names the inode
        assert db.get("/r/b") is not None
        assert db.delete("/r/b") is True
        assert db.totals() == {}
        # A path given a new inode leaves the old inode's row behind only if linked elsewhere.
        c = db.put(_rec("/r/c", ino=9))
        db.put(_rec("/r/c", ino=10))
        assert db.by_inode(1, 9) == []
        assert c.id is not None
        assert db.get_checkpoint(c.id) is None


def test_what_the_writer_remembers_of_paths_is_what_the_file_holds(tmp_path: Path) -> None:
    """Links, inodes and rows are remembered by the writing connection: each answer stays the
    one a fresh connection reads, through links, moves, progress, deletes and a path given a
    new inode; a
    read-only connection remembers nothing (the writer is another process)."""

    def fresh(file_id: int) -> list[str]:
        with StateDB(tmp_path / "s.db", readonly=True) as other:
            return other.paths_of(file_id)

    db = StateDB(tmp_path / "s.db")
    ro = StateDB(tmp_path / "s.db", readonly=True)
    a = db.put(_rec("/r/a", ino=2))
    assert a.id is not None
    db.commit()
    assert ro.paths_of(a.id) == ["/r/a"]
    steps = [
        lambda: db.put(_rec("/r/b", ino=2)),  # a link
        lambda: db.set_progress("/r/b", 7),  # through the other link
        lambda: db.put(_rec("/r/a", ino=3)),  # /r/a now names another inode
        lambda: db.delete("/r/b"),  # inode 2's last path
        lambda: db.put(_rec("/r/b", ino=3)),
        lambda: db.put(_rec("/r/b", State.READY, ino=3)),  # seen through /r/a too
        lambda: db.set_progress("/r/b", 9),
        lambda: db.delete("/r/a"),
    ]
    for step in steps:
        db.get("/r/a")  # rows read before the step are remembered too
        step()
        db.commit()
        for rec in [*db.by_inode(1, 2), *db.by_inode(1, 3)]:
            assert rec.id is not None
            assert db.paths_of(rec.id) == fresh(rec.id) == ro.paths_of(rec.id)
        for path in ("/r/a", "/r/b"):
            assert db._inode_of(path) == ro._inode_of(path)
            assert db.get(path) == ro.get(path)
    assert db.paths_of(a.id) == fresh(a.id) == []
    three = db.by_inode(1, 3)
    assert [r.path for r in three] == ["/r/b"]
    ro.close()
    db.close()


def test_ctime_and_recheck_round_trip(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        db.put(_rec("/a").evolve(ctime_ns=123, recheck=True))
        got = db.get("/a")
        assert got is not None
        assert (got.ctime_ns, got.recheck) == (123, True)
        assert isinstance(got.snapshot, FileIdentity)


_SCHEMA_1 = """
CREATE TABLE files (
    id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE, state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '', dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, attr_fp BLOB NOT NULL,
    digest TEXT NOT NULL DEFAULT '', progress INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
    ready_ns INTEGER
);
CREATE INDEX files_state ON files(state);
CREATE INDEX files_inode ON files(dev, ino);
CREATE TABLE checkpoints (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    attr_fp BLOB NOT NULL, offset INTEGER NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
);
"""


def test_schema_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA_1)
    rows = [
        # Two links of inode (1, 5) in different states: the later update wins.
        (1, b"/r/a", "READY", "verity", 1, 5, 100, 7, b"f" * 32, "sha256:00", 100, "", 1, 10, 9),
        (2, b"/r/b", "STALE", "verity", 1, 5, 100, 8, b"f" * 32, "sha256:00", 0, "w", 1, 20, 9),
        (3, b"/r/\xff", "PENDING", "", 1, 6, 50, 7, b"g" * 32, "", 0, "", 1, 5, None),
    ]
    old.executemany("INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    old.execute("INSERT INTO checkpoints VALUES (3, ?, 4096, 1, 6, 50, 7)", (b"g" * 32,))
    old.commit()
    old.close()
    with StateDB(path) as db:
        a, b = db.get("/r/a"), db.get("/r/b")
        assert a is not None
        assert b is not None
        assert a.id == b.id
        assert (a.state, a.mtime_ns, a.error) == (State.STALE, 8, "w")
        assert a.ctime_ns == 0  # unknown until the file is looked at again
        c = db.get(os.fsdecode(b"/r/\xff"))
        assert c is not None
        assert c.state is State.PENDING
        assert c.id == 3
        assert db.get_checkpoint(3) is None  # no checksum in schema 1: dropped
        assert db.totals()[State.STALE].count == 1
    with StateDB(path, readonly=True) as ro:  # migrated once, readable by status
        assert ro.get("/r/b") is not None
        assert ro._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_readonly_open_of_an_old_schema_says_so(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA_1)
    old.close()
    with pytest.raises(StorageError, match="schema 0"):
        StateDB(path, readonly=True)


@pytest.mark.slow
def test_a_million_rows_stay_fast(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        rows = [
            (i + 1, "READY", "", 1, i, 4096, 0, b"x", "", 0, "", 1, 1, None)
            for i in range(1_000_000)
        ]
        db._write("SELECT 1")
        db._db.executemany(
            "INSERT INTO inodes (id, state, kind, dev, ino, size, mtime_ns, attr_fp, digest,"
            " progress, error, created_ns, updated_ns, ready_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        db._db.executemany(
            "INSERT INTO paths (path, inode) VALUES (?, ?)",
            ((f"/data/{i:07d}".encode(), i + 1) for i in range(1_000_000)),
        )
        db.commit()
        t0 = time.perf_counter()
        assert db.get("/data/0765432") is not None
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert db.totals()[State.READY].count == 1_000_000
        totals = time.perf_counter() - t0
    assert one < 0.05
    assert totals < 3
