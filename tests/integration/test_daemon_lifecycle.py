"""The daemon end to end: attributes written by other tools, writes, restarts (issue #4)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pyverity.daemon import client
from tests.integration.harness import (
    Daemon,
    fsverity_digest,
    protect,
    pyverity,
    setfattr,
    wait_until,
    write_file,
)

MiB = 1 << 20
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="security.* attributes need root")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_idle(pid: int, window: int = 25) -> None:
    """Wait until ``pid`` used at most 2 CPU ticks over ``window`` polls (0.5 s)."""
    ticks: list[int] = []

    def quiet() -> bool:
        ticks.append(_cpu_ticks(pid))
        return len(ticks) > window and ticks[-1] - ticks[-1 - window] <= 2

    wait_until(quiet, timeout=30, what=f"worker {pid} idle")


@pytest.mark.slow
@pytest.mark.parametrize("ns", [pytest.param("security", marks=root_only), "user"])
def test_setfattr_256mib_ready_and_cache_equals_fsverity(
    make_daemon: Callable[..., Daemon], tmp_path: Path, ns: str
) -> None:
    d = make_daemon(ns=ns).start()
    f = d.root / "big.bin"
    write_file(f, 256 * MiB)
    digest, desc, tree = protect(f, tmp_path, ns=d.ns)
    rec = d.wait_state(f, "READY")
    assert rec.digest == digest
    assert rec.kind == "verity"
    assert d.cache_entry(digest).read_bytes() == desc + tree
    assert client.wait(f, state_dir=d.state, timeout=5)["state"] == "READY"


def test_write_during_build_stops_it_and_stays_stale(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--workers", "1").start()
    f = d.root / "w.bin"
    write_file(f, 1024 * MiB, sparse=True)
    # 1 KiB blocks with sha512: slow enough in Python to catch the build in the middle.
    opts = ("--hash-alg=sha512", "--block-size=1024", "--salt=00ff")
    protect(f, tmp_path, *opts, ns=d.ns)
    rec = d.wait_progress(f)
    with f.open("r+b") as w:
        w.write(b"changed")
    assert str(rec.state) == "BUILDING"
    assert 0 < rec.progress < rec.size
    d.sync()  # the write event is handled: STALE now, whatever the machine's speed
    rec = d.record(f)  # type: ignore[assignment]
    assert str(rec.state) == "STALE"
    assert "written" in rec.error
    d.wait_for(lambda: d.metrics()["pyverity_workers_busy"] == 0, what="the worker to stop")
    assert d.metrics()["pyverity_builds_cancelled_total"] == 1
    (worker,) = d.workers()
    _wait_idle(worker)  # the hashing has stopped
    # No rebuild while the attribute is unchanged: none queued, and across a restart.
    assert d.sync() == 0
    assert str(d.record(f).state) == "STALE"  # type: ignore[union-attr]
    d.stop()
    d.start()
    assert d.sync() == 0
    assert str(d.record(f).state) == "STALE"  # type: ignore[union-attr]
    assert d.metrics()["pyverity_builds_started_total"] == 0
    # Rewriting the same value (or chmod/touch) changes nothing; a new value rebuilds.
    f.chmod(0o600)
    os.utime(f)
    d.sync()
    assert str(d.record(f).state) == "STALE"  # type: ignore[union-attr]
    os.truncate(f, 8 * MiB)  # (keeps the rebuild short)
    digest, desc, tree = protect(f, tmp_path, *opts, ns=d.ns)
    rec = d.wait_state(f, "READY", timeout=120)
    assert rec.digest == digest
    assert d.cache_entry(digest).read_bytes() == desc + tree
    # chmod and touch of a READY file leave it READY.
    f.chmod(0o644)
    os.utime(f)
    d.sync()
    assert str(d.record(f).state) == "READY"  # type: ignore[union-attr]


def test_write_while_daemon_down_is_stale_not_rebuilt(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon().start()
    f, _ = d.ready("down.bin", 3 * MiB, tmp_path)
    d.stop()
    with f.open("r+b") as w:
        w.write(b"more")
    d.start()
    rec = d.wait_state(f, "STALE", timeout=5)
    assert rec.size == 3 * MiB
    assert d.sync() == 0
    assert d.metrics()["pyverity_builds_started_total"] == 0
    # `pyverity rebuild` is the other way out of STALE: the content no longer matches.
    r = pyverity("rebuild", "--wait", "--state-dir", str(d.state), str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH" in r.stdout
    assert str(d.record(f).state) == "MISMATCH"  # type: ignore[union-attr]


def test_flipped_cache_byte_is_detected_and_rebuilt(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon().start()
    f = d.root / "c.bin"
    write_file(f, 5 * MiB)
    digest, desc, tree = protect(f, tmp_path, ns=d.ns)
    d.wait_state(f, "READY")
    entry = d.cache_entry(digest)
    raw = bytearray(entry.read_bytes())
    raw[256 + 100] ^= 1
    entry.write_bytes(raw)
    reply = client.build_now(f, state_dir=d.state, timeout=30)
    assert reply["state"] == "READY"
    assert entry.read_bytes() == desc + tree
    assert d.metrics()["pyverity_cache_rejects_total"] == 1
    truncated = entry.read_bytes()[:-10]
    entry.write_bytes(truncated)
    assert client.build_now(f, state_dir=d.state, timeout=30)["state"] == "READY"
    assert entry.read_bytes() == desc + tree


def test_none_backend_builds_on_first_use_after_restart(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--backend", "none").start()
    f, _ = d.ready("n.bin", 2 * MiB, tmp_path)
    assert not (d.cache / "objects").exists()
    d.stop()
    d.start()
    assert d.sync() == 0
    assert d.metrics()["pyverity_builds_started_total"] == 0
    assert client.build_now(f, state_dir=d.state, timeout=30)["state"] == "READY"
    assert d.metrics()["pyverity_builds_started_total"] == 1
    assert client.build_now(f, state_dir=d.state, timeout=30)["state"] == "READY"
    assert d.metrics()["pyverity_builds_started_total"] == 1  # now kept in memory


def test_faults_are_recorded_not_fatal(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon().start()
    bad = d.root / "bad.bin"
    bad.write_bytes(b"x" * 5000)
    setfattr(bad, "user.verity", b"\1" * 256)
    rec = d.wait_state(bad, "INVALID", timeout=5)
    assert rec.error
    wrong_size = d.root / "size.bin"
    wrong_size.write_bytes(b"y" * 6000)
    _, desc, _ = fsverity_digest(bad, tmp_path)
    setfattr(wrong_size, "user.verity", desc)
    d.wait_state(wrong_size, "INVALID", timeout=5)
    other = d.root / "other.bin"
    other.write_bytes(b"z" * 5000)
    setfattr(other, "user.verity", desc)  # right size, other content
    assert "content" in d.wait_state(other, "MISMATCH", timeout=10).error
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o" * 5000)
    protect(outside, tmp_path)
    (d.root / "link.bin").symlink_to(outside)
    fifo = d.root / "fifo"
    os.mkfifo(fifo)
    deleted = d.root / "gone.bin"
    write_file(deleted, 64 * MiB)
    protect(deleted, tmp_path, "--block-size=1024")
    deleted.unlink()
    sub = d.root / "sub" / "deeper"
    sub.mkdir(parents=True)
    late = sub / "late.bin"
    late.write_bytes(b"l" * 9000)
    protect(late, tmp_path)
    d.wait_state(late, "READY", timeout=10)
    d.sync()
    assert d.record(d.root / "link.bin") is None
    assert d.record(deleted) is None
    assert d.proc is not None
    assert d.proc.poll() is None
    # Out of the roots: the socket refuses to answer about it.
    reply = d.request({"op": "status", "path": str(outside)})
    assert reply["error"] == "permission denied"


def test_status_cli_table_and_json(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    import json

    d = make_daemon().start()
    f, _ = d.ready("s.bin", MiB, tmp_path)
    run = ["status", "--state-dir", str(d.state)]
    table = pyverity(*run, check=True).stdout
    assert "READY" in table
    assert "[####################] 100%" in table
    assert "total: 1 files" in table
    out = pyverity(*run, "--json", str(f), check=True)
    obj = json.loads(out.stdout.splitlines()[0])
    assert obj["path"] == str(f)
    assert obj["state"] == "READY"
    assert obj["progress"] == 1.0
    assert obj["error"] == ""
    d.stop()  # the database is read directly when the daemon is not running
    out = pyverity(*run, "--json", str(f), check=True)
    assert json.loads(out.stdout.splitlines()[0])["state"] == "READY"


def test_tar_xattrs_extraction_is_ready_not_stale(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Files created, written and given their attribute in quick succession (tar --xattrs)."""
    from pyverity.hashing import build_tree

    stage = tmp_path / "stage"
    stage.mkdir()
    for i in range(60):
        f = stage / f"f{i:02d}.bin"
        f.write_bytes(os.urandom(4096 * (1 + i % 7) + i))
        os.setxattr(f, "user.verity", build_tree(f, keep_tree=False).descriptor.to_bytes())
    archive = tmp_path / "a.tar"
    tar = ["tar", "--xattrs", "--xattrs-include=user.*"]
    subprocess.run([*tar, "-cf", str(archive), "-C", str(stage), "."], check=True, timeout=60)
    d = make_daemon().start()
    subprocess.run([*tar, "-xf", str(archive), "-C", str(d.root)], check=True, timeout=60)
    for i in range(60):
        rec = d.wait_state(d.root / f"f{i:02d}.bin", "READY", "STALE", "MISMATCH", timeout=30)
        assert str(rec.state) == "READY", rec
