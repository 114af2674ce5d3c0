"""kill -9 of the daemon and its workers mid-build, then restart: resume or restart (issue #4)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import Daemon, protect, write_file

MiB = 1 << 20
# Slow parameters (1 KiB blocks, sha512) make a Python build of a sparse 1 GiB file last
# a few seconds, so that kills land in the middle of it.
OPTS = ("--hash-alg=sha512", "--block-size=1024", "--salt=0102")
SIZE = 1024 * MiB
KILLS = 3


def _last_start(d: Daemon, f: Path) -> int:
    """The offset the last build of ``f`` started at, from the daemon's log."""
    pattern = re.compile(re.escape(str(f)) + r": (?:resuming build at|building from) offset (\d+)")

    def started() -> list[str] | None:
        found = pattern.findall(d.log.read_text())
        return found if len(found) > d.seen_starts else None

    found = d.wait_for(started, timeout=10, what="a build start in the log")
    d.seen_starts = len(found)
    return int(found[-1])


def _crash_loop(d: Daemon, f: Path, rng: random.Random) -> tuple[int, list[int]]:
    """Kill the daemon at random moments of the build; returns (bytes hashed, resume offsets)."""
    hashed = 0
    starts: list[int] = []
    for _ in range(KILLS):
        d.start()
        start = _last_start(d, f)
        starts.append(start)
        # Once a checkpoint of this run is committed, kill at a random point after it: when a
        # random amount more has been hashed (a position in the data, not a moment in time).
        rec = d.wait_progress(f, start, timeout=30)
        if str(rec.state) != "READY":
            d.wait_progress(f, rec.progress + rng.randrange(0, 48 * MiB), timeout=60)
        rec = d.record(f)
        assert rec is not None
        if str(rec.state) == "READY":  # finished before this kill: nothing left to interrupt
            hashed += SIZE - start
            break
        workers = d.workers()
        assert workers
        d.kill9()
        hashed += rec.progress - start
        d.wait_for(lambda: not d.workers(), timeout=5, what="workers to die with the daemon")
        assert not d.workers(), "workers outlived the daemon"
    else:
        d.start()
        starts.append(_last_start(d, f))
        d.wait_state(f, "READY", timeout=120)
        hashed += SIZE - starts[-1]
        return hashed, starts
    return hashed, starts


@pytest.mark.slow
def test_kill9_resume_hashes_less_than_restart(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    rng = random.Random(4)
    totals = {}
    for policy in ("resume", "restart"):
        base = tmp_path / policy
        base.mkdir()
        d = make_daemon("--workers", "1", "--crash-policy", policy, base=base)
        f = d.root / "big.bin"
        write_file(f, SIZE, sparse=True)
        digest, desc, tree = protect(f, base, *OPTS)
        hashed, starts = _crash_loop(d, f, rng)
        assert d.cache_entry(digest).read_bytes() == desc + tree
        if policy == "resume":
            assert len(starts) >= 2
            assert all(s > 0 for s in starts[1:]), starts  # every restart resumed
            assert "resuming build at offset" in d.log.read_text()
        else:
            assert len(starts) >= 2
            assert starts == [0] * len(starts), starts
        totals[policy] = hashed
        d.stop()
    print(f"hashed across {KILLS} kills: resume {totals['resume']}, restart {totals['restart']}")
    assert totals["resume"] < totals["restart"]
    assert totals["resume"] <= SIZE + 64 * MiB  # at most the work lost between checkpoints
