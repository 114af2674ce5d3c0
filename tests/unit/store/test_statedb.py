from __future__ import annotations

import time
from pathlib import Path

import pytest

from pyverity.errors import StorageError
from pyverity.store.checkpoint import PartialStore
from pyverity.store.statedb import Checkpoint, FileRecord, State, StateDB


def _rec(path: str, state: State = State.PENDING, size: int = 10) -> FileRecord:
    return FileRecord(path, state, 1, 2, size, 3, b"f" * 32)


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
        db.put(_rec("/r/a", State.READY, 100))
        db.put(_rec("/r/b/c", State.STALE, 50))
        db.put(_rec("/r/bb", State.READY, 1))
        db.put(_rec("/s", State.INVALID))
        t = db.totals()
        assert t[State.READY].count == 2
        assert t[State.READY].size == 101
        assert [r.path for r in db.records_under("/r/b/")] == ["/r/b/c"]
        assert len(db.by_inode(1, 2)) == 4
        assert [r.path for r in db.records([State.STALE])] == ["/r/b/c"]


def test_checkpoints_cascade(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        r = db.put(_rec("/a"))
        assert r.id is not None
        cp = Checkpoint(r.id, r.attr_fp, 8192, (1, 2, 3, 4))
        db.put_checkpoint(cp)
        assert db.get_checkpoint(r.id) == cp
        db.delete("/a")
        assert db.get_checkpoint(r.id) is None


def test_partial_store_never_behind_the_row(tmp_path: Path) -> None:
    ps = PartialStore(tmp_path)
    ps.append(7, b"a" * 64, 0)
    ps.append(7, b"b" * 32, 64)
    assert ps.load(7, 96) == b"a" * 64 + b"b" * 32
    assert ps.load(7, 64) == b"a" * 64
    assert ps.load(7, 200) is None  # the row claims more than was saved: unusable
    ps.append(7, b"c" * 32, 32)  # rewriting from an older offset drops what followed
    assert ps.load(7, 64) == b"a" * 32 + b"c" * 32
    assert ps.ids() == {7}
    ps.discard(7)
    assert ps.load(7, 0) is None


@pytest.mark.slow
def test_a_million_rows_stay_fast(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        rows = [
            (f"/data/{i:07d}".encode(), "READY", "", 1, i, 4096, 0, b"x", "", 0, "", 1, 1, None)
            for i in range(1_000_000)
        ]
        db._write("SELECT 1")
        db._db.executemany(
            "INSERT INTO files (path, state, kind, dev, ino, size, mtime_ns, attr_fp, digest,"
            " progress, error, created_ns, updated_ns, ready_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
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
