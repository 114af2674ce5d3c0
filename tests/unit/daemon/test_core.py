"""The daemon's lifecycle in memory (tests/support/daemon.py): events arrive when the test emits
them, builds run when it lets them, and every check waits on state (``settle``), not on time."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pyverity.daemon import protocol as msg
from pyverity.fs.watch import Change
from pyverity.fs.xattr import set_attr
from pyverity.hashing import build_tree
from pyverity.hashing.small import SMALL_FILE_MAX
from pyverity.keys import load_signer, sign_v3
from pyverity.keys.generate import GeneratedKey, generate_key
from tests.support.daemon import DaemonSim
from tests.support.protect import protect_with_pyverity
from tests.support.xattrs import require_user_xattrs


@pytest.fixture
def sim(tmp_path: Path) -> DaemonSim:
    require_user_xattrs(tmp_path)
    return DaemonSim(tmp_path)


#: Larger than what the daemon builds itself: such a build goes to a worker.
BIG = SMALL_FILE_MAX + 4096


def _file(sim: DaemonSim, name: str, data: bytes | None = None) -> Path:
    f = sim.root / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(os.urandom(50_000) if data is None else data)
    return f


def _protect(sim: DaemonSim, f: Path) -> bytes:
    """Protect ``f`` and tell the daemon (IN_ATTRIB); the cache entry it should end with."""
    tree = protect_with_pyverity(f, ns="user")
    sim.emit(Change.ATTR, f)
    return tree.descriptor.to_bytes() + (tree.tree or b"")


def _sign(f: Path, key: GeneratedKey) -> None:
    """Write ``f``'s descriptor and a v3 signature of it by ``key`` (no event)."""
    desc = build_tree(f).descriptor
    signer = load_signer(str(key.key_path), cert=str(key.cert_path))
    set_attr(f, "user.verity", desc.to_bytes())
    set_attr(f, "user.ima", sign_v3(signer, desc.hash_algorithm, desc.digest()).to_bytes())


def _cache_entry(sim: DaemonSim, digest: str) -> bytes:
    alg, _, hexd = digest.partition(":")
    return (sim.base / "cache" / "objects" / alg / hexd[:2] / hexd).read_bytes()


def _metric(sim: DaemonSim, name: str) -> int:
    return sim.d.metrics[name]


def test_attribute_then_ready_and_cached(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "a.bin")
    entry = _protect(sim, f)
    sim.settle()
    rec = sim.record(f)
    assert rec is not None
    assert str(rec.state) == "READY"
    assert rec.kind == "verity"
    assert _cache_entry(sim, rec.digest) == entry
    assert sim.request("wait", f)["state"] == "READY"


def test_write_makes_stale_chmod_and_touch_do_not_a_new_value_rebuilds(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "w.bin")
    _protect(sim, f)
    sim.settle()
    f.chmod(0o600)
    os.utime(f)
    sim.emit(Change.ATTR, f)
    sim.settle()
    assert sim.state(f) == "READY"  # chmod and touch change nothing
    with f.open("r+b") as w:
        w.write(b"changed")
    sim.emit(Change.WRITE, f)
    sim.settle()
    rec = sim.record(f)
    assert rec is not None
    assert str(rec.state) == "STALE"
    assert "written" in rec.error
    started = _metric(sim, "builds_started")
    f.chmod(0o644)
    sim.emit(Change.ATTR, f)
    sim.settle()
    assert sim.state(f) == "STALE"  # nothing leaves STALE but a new value or a rebuild
    assert _metric(sim, "builds_started") == started
    _protect(sim, f)
    sim.settle()
    assert sim.state(f) == "READY"


def test_small_files_go_to_a_worker_in_one_batch_or_are_built_here(tmp_path: Path) -> None:
    """An idle worker takes the small files queued together as one batch (one message, its
    verdicts appraised there); with the worker on a big file, the daemon builds them itself."""
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()  # workers would wait to be told
    small = [_file(sim, f"s{i}.bin", os.urandom(n)) for i, n in enumerate((0, 1, 50_000))]
    entries = [_protect(sim, f) for f in small]
    sim.settle()
    assert [sim.state(f) for f in small] == ["PENDING"] * 3  # the batch is out, not run yet
    (worker,) = sim.pool.workers
    assert [len(b.items) for b in worker.batches] == [3]
    worker.run()
    sim.settle()
    assert [sim.state(f) for f in small] == ["READY"] * 3
    for f, entry in zip(small, entries, strict=True):
        rec = sim.record(f)
        assert rec is not None
        assert _cache_entry(sim, rec.digest) == entry
    big = _file(sim, "big.bin", os.urandom(BIG))
    _protect(sim, big)
    sim.settle()
    assert sim.state(big) == "BUILDING"  # the one worker has it
    later = [_file(sim, f"t{i}.bin") for i in range(2)]
    for f in later:
        _protect(sim, f)
    sim.settle()
    assert [sim.state(f) for f in later] == ["READY"] * 2  # built by the daemon itself
    assert len(worker.batches) == 1
    sim.pool.auto = True
    worker.run()
    sim.settle()
    assert sim.state(big) == "READY"
    assert len(worker.builds) == 1
    assert _metric(sim, "builds_started") == 6


def test_a_batch_with_a_bad_signature_or_changed_attributes(tmp_path: Path) -> None:
    """A small file's signature is checked with its build (by the worker's gate, with the
    daemon's keys): an untrusted one is INVALID; a file whose attributes change while its
    batch is out is looked at again and built for the new values."""
    from pyverity.format.params import TreeParams

    require_user_xattrs(tmp_path)
    keys = tmp_path / "keys"
    trusted = generate_key(keys / "trusted", "ecdsa")
    stranger = generate_key(keys / "stranger", "ecdsa")
    ring = keys / "ring"
    ring.mkdir()
    shutil.copy(trusted.cert_path, ring / "trusted.pem")
    sim = DaemonSim(tmp_path, auto=False, keyring=ring).start()
    # Workers appraise with the daemon's keys as it loaded them, not the directory's later.
    shutil.copy(stranger.cert_path, ring / "later.pem")
    good, bad, moving = (_file(sim, n) for n in ("good.bin", "bad.bin", "moving.bin"))
    _sign(good, trusted)
    _sign(bad, stranger)
    _sign(moving, trusted)
    for f in (good, bad, moving):
        sim.emit(Change.ATTR, f)
    sim.settle()
    assert [sim.state(f) for f in (good, bad, moving)] == ["PENDING"] * 3
    new = protect_with_pyverity(moving, TreeParams(block_size=1024), ns="user").descriptor
    os.removexattr(moving, "user.ima")  # now a plain descriptor of other parameters
    (worker,) = sim.pool.workers
    worker.run()  # builds the three before the daemon sees the new attribute's event
    sim.settle()
    assert sim.state(good) == "READY"
    assert sim.state(moving) == "PENDING"  # the worker saw other values: looked at again
    assert len(worker.batches) == 2
    sim.emit(Change.ATTR, moving)
    sim.pool.auto = True
    worker.run()
    sim.settle()
    rec = sim.record(bad)
    assert rec is not None
    assert str(rec.state) == "INVALID"
    assert rec.error.startswith("unknown key"), rec.error
    rec = sim.record(moving)
    assert rec is not None
    assert str(rec.state) == "READY"
    assert rec.digest == f"sha256:{new.digest().hex()}"


def test_a_small_file_changed_as_it_is_built_is_not_ready(tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path).start()
    f = _file(sim, "s.bin")
    _protect(sim, f)
    with f.open("r+b") as w:  # written after the attribute, the event not yet seen
        w.write(b"changed")
    sim.settle()
    assert sim.state(f) == "MISMATCH"  # the daemon's own build compares roots too
    assert _metric(sim, "builds_mismatch") == 1


def test_attribute_events_seen_by_one_look_are_looked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path).start()
    f = _file(sim, "a.bin")
    looks: list[str] = []
    look = sim.d.tracker.observe
    monkeypatch.setattr(sim.d.tracker, "observe", lambda p: looks.append(p) or look(p))
    _protect(sim, f)
    sim.emit(Change.ATTR, f)  # the signature's setxattr, queued before the daemon looked
    sim.settle()
    assert sim.state(f) == "READY"
    assert looks == [str(f)]
    sim.emit(Change.ATTR, f)  # after the look: looked at again
    sim.settle()
    assert looks == [str(f)] * 2


def test_a_build_starts_from_the_look_that_queued_it_unless_the_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyverity.daemon import tracker
    from pyverity.format.params import TreeParams

    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path).start()
    reads: list[int] = []
    read = tracker.read_declared
    monkeypatch.setattr(
        tracker, "read_declared", lambda fd, *a, **kw: reads.append(fd) or read(fd, *a, **kw)
    )
    f = _file(sim, "a.bin")
    _protect(sim, f)
    sim.settle()
    assert sim.state(f) == "READY"
    assert len(reads) == 1  # the look at the event; the build started from it
    g = _file(sim, "b.bin")
    sim.emit(Change.WRITE, g)  # just written: its build waits for it to settle
    _protect(sim, g)
    sim.d.step(timeout=0)
    assert sim.state(g) == "PENDING"
    time.sleep(0.02)  # past the clock tick of the last attribute write
    other = protect_with_pyverity(g, TreeParams(block_size=1024)).descriptor  # event not seen
    sim.settle()
    assert len(reads) > 2  # ctime moved: the build looked again
    rec = sim.record(g)
    assert rec is not None
    assert sim.state(g) == "READY"
    assert rec.digest == f"sha256:{other.digest().hex()}"


def test_new_attributes_during_a_build_are_built_once_it_stops(tmp_path: Path) -> None:
    """``pyverity sign`` writes the descriptor, then the signature: a build of the first
    value, cancelled by the second, is followed by a build of the second (none was queued
    while the cancelled one still ran, and the file stayed PENDING)."""
    from pyverity.format.params import TreeParams

    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()
    f = _file(sim, "big.bin", os.urandom(BIG))
    _protect(sim, f)
    sim.settle()
    assert sim.state(f) == "BUILDING"
    other = protect_with_pyverity(f, TreeParams(block_size=1024)).descriptor
    sim.emit(Change.ATTR, f)
    sim.settle()
    assert sim.state(f) == "PENDING"  # the build of the old value is being cancelled
    (worker,) = sim.pool.workers
    sim.pool.auto = True
    worker.run()  # it sees the Cancel and stops
    sim.settle()
    rec = sim.record(f)
    assert rec is not None
    assert sim.state(f) == "READY"
    assert rec.digest == f"sha256:{other.digest().hex()}"
    assert len(worker.builds) == 2


def test_write_during_a_build_cancels_it_and_stays_stale(tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()
    f = _file(sim, "b.bin", os.urandom(BIG))
    _protect(sim, f)
    sim.settle()
    assert sim.state(f) == "BUILDING"  # handed to the worker, which has not run it yet
    (worker,) = sim.pool.workers
    with f.open("r+b") as w:
        w.write(b"changed")
    sim.emit(Change.WRITE, f)
    sim.settle()
    assert sim.state(f) == "STALE"
    assert isinstance(worker.inbox[-1], msg.Cancel)
    assert _metric(sim, "builds_cancelled") == 1
    worker.run()  # it sees the cancel and stops
    sim.settle()
    assert worker.job is None
    assert sim.state(f) == "STALE"
    sim.restart()
    assert sim.state(f) == "STALE"
    assert _metric(sim, "builds_started") == 0


def test_write_while_down_is_stale_and_rebuild_says_mismatch(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "down.bin")
    _protect(sim, f)
    sim.settle()
    sim.stop()
    with f.open("r+b") as w:
        w.write(b"more")
    sim.start()
    assert sim.state(f) == "STALE"
    assert _metric(sim, "builds_started") == 0
    reply = sim.request("rebuild", f, wait=True)
    assert reply["state"] == "MISMATCH"


def test_ctime_only_change_while_down_rehashes_and_mtime_put_back_is_stale(
    sim: DaemonSim,
) -> None:
    sim.start()
    same, written = _file(sim, "same.bin"), _file(sim, "written.bin")
    _protect(sim, same)
    _protect(sim, written)
    sim.settle()
    sim.stop()
    same.chmod(0o600)
    st = written.stat()
    with written.open("r+b") as w:
        w.write(b"new bytes, same size")
    os.utime(written, ns=(st.st_atime_ns, st.st_mtime_ns))
    sim.start()
    assert sim.state(same) == "READY"
    assert _metric(sim, "builds_started") == 2  # both hashed again
    rec = sim.record(written)
    assert rec is not None
    assert str(rec.state) == "STALE"
    assert "ctime" in rec.error


def test_hard_links_share_one_state_and_one_build(sim: DaemonSim) -> None:
    f = _file(sim, "a.bin")
    protect_with_pyverity(f, ns="user")
    os.link(f, sim.root / "b.bin")
    sim.start()
    assert sim.state(f) == sim.state(sim.root / "b.bin") == "READY"
    assert _metric(sim, "builds_started") == 1
    with (sim.root / "b.bin").open("r+b") as w:
        w.write(b"x")
    sim.emit(Change.WRITE, sim.root / "b.bin")
    sim.settle()
    assert sim.state(f) == "STALE"
    (sim.root / "b.bin").unlink()
    sim.emit(Change.DELETED, sim.root / "b.bin")
    sim.settle()
    assert sim.record(sim.root / "b.bin") is None
    assert sim.state(f) == "STALE"


def test_flipped_cache_byte_is_detected_on_first_use_and_rebuilt(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "c.bin")
    entry = _protect(sim, f)
    sim.settle()
    rec = sim.record(f)
    assert rec is not None
    alg, _, hexd = rec.digest.partition(":")
    path = sim.base / "cache" / "objects" / alg / hexd[:2] / hexd
    raw = bytearray(path.read_bytes())
    raw[256 + 10] ^= 1
    path.write_bytes(bytes(raw))
    assert sim.request("build-now", f)["state"] == "READY"
    assert path.read_bytes() == entry
    assert _metric(sim, "cache_rejects") == 1


def test_none_backend_builds_again_on_first_use_after_restart(tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, backend="none").start()
    f = _file(sim, "n.bin")
    _protect(sim, f)
    sim.settle()
    assert sim.state(f) == "READY"
    sim.restart()
    assert _metric(sim, "builds_started") == 0
    assert sim.request("build-now", f)["state"] == "READY"
    assert _metric(sim, "builds_started") == 1
    assert sim.request("build-now", f)["state"] == "READY"
    assert _metric(sim, "builds_started") == 1  # kept in memory now


def test_faults_are_recorded_not_fatal(sim: DaemonSim) -> None:
    sim.start()
    bad = _file(sim, "bad.bin")
    os.setxattr(bad, "user.verity", b"\1" * 256)
    sim.emit(Change.ATTR, bad)
    other = _file(sim, "other.bin")
    desc = build_tree(_file(sim, "src.bin")).descriptor.to_bytes()
    (sim.root / "src.bin").unlink()
    os.truncate(other, 50_000)
    os.setxattr(other, "user.verity", desc)  # right size, other content
    sim.emit(Change.ATTR, other)
    fifo = sim.root / "fifo"
    os.mkfifo(fifo)
    sim.emit(Change.CREATED, fifo)
    sim.settle()
    rec = sim.record(bad)
    assert rec is not None
    assert str(rec.state) == "INVALID"
    assert rec.error
    rec = sim.record(other)
    assert rec is not None
    assert str(rec.state) == "MISMATCH"
    assert "content" in rec.error
    assert sim.record(fifo) is None


def test_attributes_before_data_end_ready(sim: DaemonSim) -> None:
    """tar --xattrs: the attribute is set first, then the data is written."""
    sim.start()
    data = os.urandom(40_000)
    staged = _file(sim, "stage.bin", data)
    desc = build_tree(staged).descriptor.to_bytes()
    staged.unlink()
    f = sim.root / "t.bin"
    f.write_bytes(b"")
    sim.emit(Change.CREATED, f)
    os.setxattr(f, "user.verity", desc)
    sim.emit(Change.ATTR, f)
    f.write_bytes(data)
    sim.emit(Change.WRITE, f)
    sim.emit(Change.CLOSE_WRITE, f)
    sim.settle()
    assert sim.state(f) == "READY"


def test_first_use_preempts_a_background_build(tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()
    slow, wanted = _file(sim, "slow.bin", os.urandom(BIG)), _file(sim, "w.bin", os.urandom(BIG))
    _protect(sim, slow)
    sim.settle()
    (worker,) = sim.pool.workers
    assert worker.job is not None
    _protect(sim, wanted)
    sim.settle()
    caller_reply = {}
    sim.d.control.handle_request(
        _Root(caller_reply), {"op": "build-now", "path": str(wanted)}, None
    )
    sim.d.step(timeout=0)
    assert isinstance(worker.inbox[-1], msg.Yield)
    assert _metric(sim, "builds_preempted") == 1
    sim.pool.auto = True
    worker.run()  # yields; then the first use is built, then the background one
    sim.settle()
    assert caller_reply["state"] == "READY"
    assert sim.state(slow) == "READY"
    assert [s.offset == 0 for s in worker.builds] == [True, True, True]
    assert sim.d.db.checkpoint_ids() == set()  # the yielded build's checkpoint went at READY
    assert sim.d.scheduler.partial.ids() == set()


class _Root:
    """A caller as root whose one reply lands in ``out``."""

    def __init__(self, out: dict[str, object]) -> None:
        from pyverity.daemon.server import Peer

        self.peer = Peer(os.getpid(), 0, 0)
        self.closed = False
        self._out = out

    def reply(self, obj: dict[str, object]) -> None:
        self._out.update(obj)


@pytest.mark.parametrize("size", [50_000, BIG], ids=["in-a-batch", "alone"])
def test_a_worker_that_dies_is_replaced_and_the_build_done_again(tmp_path: Path, size: int) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()
    f = _file(sim, "d.bin", os.urandom(size))
    _protect(sim, f)
    sim.settle()
    (worker,) = sim.pool.workers
    assert len(worker.batches if size < BIG else worker.builds) == 1
    worker.kill()
    sim.pool.auto = True
    sim.settle()
    (new,) = sim.pool.workers
    assert new is not worker
    assert sim.state(f) == "READY"


def test_duplicate_rebuilds_are_one_build(tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    sim = DaemonSim(tmp_path, auto=False).start()
    f = _file(sim, "r.bin")
    protect_with_pyverity(f, ns="user")
    sim.emit(Change.ATTR, f)
    sim.settle()
    (worker,) = sim.pool.workers
    worker.run()
    sim.settle()
    assert sim.state(f) == "READY"
    for _ in range(3):
        assert sim.request("rebuild", f)["state"] in ("PENDING", "BUILDING")
    sim.pool.auto = True
    worker.run()
    sim.settle()
    assert sim.state(f) == "READY"
    assert _metric(sim, "rebuilds_coalesced") == 2
    assert _metric(sim, "builds_started") == 2
    assert _metric(sim, "builds_cancelled") == 0


def test_rename_within_the_roots_keeps_the_state(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "old.bin")
    _protect(sim, f)
    sim.settle()
    new = sim.root / "new.bin"
    f.rename(new)
    sim.emit(Change.MOVED_FROM, f, cookie=7)
    sim.emit(Change.MOVED_TO, new, cookie=7)
    sim.settle()
    assert sim.record(f) is None
    assert sim.state(new) == "READY"
    assert _metric(sim, "builds_started") == 1


def test_overflow_reconciles_everything(sim: DaemonSim) -> None:
    sim.start()
    f = _file(sim, "o.bin")
    protect_with_pyverity(f, ns="user")  # no event: lost in the overflow
    sim.emit(Change.OVERFLOW, "")
    sim.settle()
    assert sim.state(f) == "READY"
    assert _metric(sim, "rescans") == 2  # start-up and the overflow


def test_sync_commits_what_was_done_before_it(sim: DaemonSim) -> None:
    from pyverity.store.statedb import StateDB

    sim.start()
    f = _file(sim, "s.bin")
    _protect(sim, f)
    sim.settle()
    with f.open("r+b") as w:
        w.write(b"x")
    sim.emit(Change.WRITE, f)
    assert sim.request("sync")["ok"]
    with StateDB(sim.base / "state" / "state.db", readonly=True) as db:
        rec = db.get(str(f))
    assert rec is not None
    assert str(rec.state) == "STALE"  # another reader sees it after the reply
