"""``pyverity status``/``daemon``/``rebuild`` without a running daemon: reading the database,
refusing unsafe directories, one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.store.statedb import FileRecord, State, StateDB


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    # Held as a running daemon holds it: BUILDING rows are shown as BUILDING only then.
    lock = os.open(d / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with StateDB(d / "state.db") as db:
        db.put(FileRecord(str(tmp_path / "a.bin"), State.READY, 1, 1, 8192, 1, b"x", progress=8192))
        db.put(
            FileRecord(
                str(tmp_path / "b.bin"), State.BUILDING, 1, 2, 4 << 20, 1, b"y", progress=1 << 20
            )
        )
        db.put(FileRecord(str(tmp_path / "c.bin"), State.STALE, 1, 3, 10, 1, b"z", error="written"))
    yield d
    os.close(lock)


def test_status_table_and_totals(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("READY     [####################] 100%")
    assert out[1].startswith("BUILDING  [#####...............]  25%")
    assert out[2].endswith("c.bin  (written)")
    assert out[3] == "total: 3 files, 4.0M (BUILDING 1, READY 1, STALE 1)"
    assert main(["status", "--state-dir", str(state), "--totals"]) == 0
    assert capsys.readouterr().out.startswith("total: 3 files")


def test_status_json_by_path(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["status", "--state-dir", str(state), "--json", str(tmp_path / "b.bin"), "nope"])
    assert rc == 1  # a path the database does not know
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["state"] == "BUILDING"
    assert lines[0]["progress"] == 0.25
    assert lines[0]["error"] == ""
    assert lines[1]["state"] == "NONE"


def test_status_without_database_or_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--state-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: no state database readable")
    assert "Traceback" not in err


def test_rebuild_without_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert main(["rebuild", "--state-dir", str(tmp_path), str(f)]) == 1
    assert "daemon is not running" in capsys.readouterr().err


def test_daemon_refuses_unsafe_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    args = ["daemon", "--root", str(root), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--state-dir", str(shared)]) == 1
    err = capsys.readouterr().err
    assert "writable by others" in err
    assert "chmod 700" in err
    assert main([*args, "--state-dir", str(tmp_path / "s"), "--workers", "x"]) == 2
    assert main(["daemon", "--state-dir", str(tmp_path / "s2")]) == 1
    assert "no roots" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 'two'\n")
    assert main(["daemon", "--config", str(bad)]) == 1
    assert "workers must be an integer" in capsys.readouterr().err
