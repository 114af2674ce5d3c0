"""Renames, worker deaths, clean restarts, a wiped cache, the socket's other requests."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from pyverity.daemon import client
from pyverity.format.descriptor import Descriptor
from pyverity.format.hashalg import SHA512
from pyverity.format.params import TreeParams
from tests.integration.harness import Daemon, protect, setfattr, wait_until, write_file

MiB = 1 << 20
SLOW = ("--hash-alg=sha512", "--block-size=1024")


def test_rename_within_roots_keeps_state(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon().start()
    (d.root / "a").mkdir()
    f = d.root / "a" / "f.bin"
    write_file(f, 2 * MiB)
    protect(f, tmp_path)
    d.wait_state(f, "READY")
    started = d.metrics()["pyverity_builds_started_total"]
    g = d.root / "a" / "g.bin"
    f.rename(g)
    rec = d.wait_state(g, "READY", timeout=5)
    assert rec.size == 2 * MiB
    d.wait_gone(f)
    assert d.metrics()["pyverity_builds_started_total"] == started  # not rebuilt
    outside = tmp_path / "moved-out.bin"
    shutil.move(g, outside)
    d.wait_gone(g)


def test_killed_worker_is_replaced_and_build_finishes(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--workers", "1").start()
    f = d.root / "k.bin"
    write_file(f, 256 * MiB, sparse=True)
    digest, desc, tree = protect(f, tmp_path, *SLOW)
    d.wait_progress(f)
    (pid,) = d.workers()
    os.kill(pid, signal.SIGKILL)
    d.wait_state(f, "READY", timeout=120)
    assert d.cache_entry(digest).read_bytes() == desc + tree
    assert pid not in d.workers()
    assert len(d.workers()) == 1


def test_clean_stop_checkpoints_and_resumes(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("--workers", "1", "--checkpoint-interval", "60").start()
    f = d.root / "r.bin"
    size = 2048 * MiB
    write_file(f, size, sparse=True)
    # Only the checkpointing matters here: a descriptor with the right size and parameters
    # (and a made-up root, so the build would end in MISMATCH) is enough.
    desc = Descriptor.for_tree(TreeParams(SHA512, 1024), size, bytes(64))
    setfattr(f, "user.verity", desc.to_bytes())
    d.wait_progress(f)
    d.stop()  # SIGTERM: the running build checkpoints although the interval is 60 s
    rec = d.record(f)
    assert rec is not None
    assert str(rec.state) == "PENDING"
    assert 0 < rec.progress < rec.size
    d.start()
    d.wait_log(f"resuming build at offset {rec.progress}")


def test_wiped_cache_is_rebuilt_at_start(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon().start()
    f = d.root / "w.bin"
    write_file(f, 3 * MiB)
    digest, desc, tree = protect(f, tmp_path)
    d.wait_state(f, "READY")
    d.stop()
    shutil.rmtree(d.cache / "objects")
    d.start()
    d.wait_state(f, "READY", timeout=30)
    d.wait_for(d.cache_entry(digest).exists, what="the cache entry")
    assert d.cache_entry(digest).read_bytes() == desc + tree


def test_socket_requests(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon().start()
    f, _ = d.ready("m.bin", MiB, tmp_path)
    text = d.request({"op": "metrics"})["text"]
    assert 'pyverity_files{state="READY"} 1' in text
    assert "# TYPE pyverity_builds_ready_total counter" in text
    # A file the daemon missed (here: written while it could not see) is found by a rescan.
    totals = d.request({"op": "status"})["totals"]
    assert totals["READY"]["count"] == 1
    assert d.request({"op": "rescan"})["ok"] is True
    assert d.request({"op": "nonsense"})["error"] == "bad request"
    assert d.request({"op": "status", "path": "relative/path"})["error"] == "bad request"
    reply = client.request({"op": "wait", "path": str(f), "timeout": 1}, state_dir=d.state)
    assert reply["state"] == "READY"


def test_mmap_write_without_event_is_stale_on_first_use(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    import mmap

    d = make_daemon().start()
    f, _ = d.ready("mm.bin", MiB, tmp_path)
    mtime = f.stat().st_mtime_ns
    probe = tmp_path / "tick"

    def ticked() -> bool:  # the kernel stamps mtime from a coarse clock
        probe.write_bytes(b"")
        return probe.stat().st_mtime_ns > mtime

    wait_until(ticked, what="a write to get another mtime stamp")
    with f.open("r+b") as fh, mmap.mmap(fh.fileno(), 0) as m:
        m[0:4] = b"MMAP"  # no IN_MODIFY for writes through a mapping
        m.flush()
        # Still open (no IN_CLOSE_WRITE yet): only the changed mtime tells.
        reply = client.build_now(f, state_dir=d.state, timeout=10)
    assert reply["state"] == "STALE"
    assert "mtime" in reply["error"]
