"""Run inside the test VM (host's Python over 9p, chrooted): a daemon build cut by power loss.

``phase1 DIR STATE``: starts ``pyverity daemon`` (``crash_policy = resume``) over DIR, waits
until the state database shows a build checkpoint, then until it has committed
:data:`CHECKPOINTS_BEFORE_RESET` checkpoints in all, then resets the machine with ``sysrq b``
— no ``sync``, no unmount: what was not written to the disk (the guest's page cache) is lost,
as at a power cut. Reports go to the console only (a file written now would be lost too).

``phase2 DIR STATE RESULTS``: after the next boot, looks at what survived (the database's
integrity check, the checkpoint row, the saved leaf hashes, the cache's objects) before any
daemon runs, copies the state directory, then runs the daemon with ``crash_policy = resume`` on
the original and ``restart`` on the copy, each until the file is READY. Prints one line per
fact, ``<key> <value>``, to RESULTS/powerloss.out.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyverity.daemon import client
from pyverity.errors import StorageError
from pyverity.store.statedb import FileRecord, StateDB
from tests.support.polling import wait_until  # the checkout is on the guest's PYTHONPATH

#: Checkpoints committed (each a new offset in the database, read by another process) before
#: the reset: several durable commits of the build, while much of the daemon's other writing is
#: still only in the page cache (ext4 writes delayed-allocation data back after up to 30 s).
CHECKPOINTS_BEFORE_RESET = 3


def console(*parts: object) -> None:
    with Path("/dev/console").open("w") as f:
        f.write("@@PL " + " ".join(map(str, parts)) + "\n")


def start_daemon(d: Path, state: Path, policy: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "pyverity.cli", "daemon", "--root", str(d),
        "--state-dir", str(state), "--cache-dir", str(state / "cache"),
        "--xattr-ns", "user", "--workers", "1", "--nice", "0",
        "--crash-policy", policy, "--checkpoint-interval", "0.5",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def checkpoint_offset(state: Path) -> int:
    """The newest committed checkpoint (0: none), read as another process would."""
    try:
        db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT max(offset) FROM checkpoints").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0) if row else 0


def phase1(d: Path, state: Path) -> None:
    start_daemon(d, state, "resume", state.parent / "pl-daemon1.log")
    t0 = time.monotonic()
    seen: list[int] = []  # the committed checkpoint offsets, in order

    def checkpoints(count: int) -> bool:
        offset = checkpoint_offset(state)
        if offset and (not seen or offset > seen[-1]):
            seen.append(offset)
        return len(seen) >= count

    # Not within the deadline: reset anyway, the host sees what was reached.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: checkpoints(1), timeout=60, interval=0.05, what="a checkpoint")
    console("first-checkpoint", seen[0] if seen else 0, f"{time.monotonic() - t0:.1f}")
    with contextlib.suppress(AssertionError):
        if seen:
            n = CHECKPOINTS_BEFORE_RESET
            wait_until(lambda: checkpoints(n), timeout=60, interval=0.05, what="checkpoints")
    console("checkpoints-seen", len(seen))
    console("reset-at-checkpoint", checkpoint_offset(state), f"{time.monotonic() - t0:.1f}")
    with Path("/proc/sysrq-trigger").open("w") as f:
        # Immediate reboot, no sync (qemu -no-reboot then exits): the write does not return
        # (the kernel restarts the machine inside it), so the next line runs only if it failed.
        f.write("b")
        f.flush()
    console("still-running-after-reset")


def survived(state: Path) -> list[str]:
    """What the crash left, before any daemon touches it."""
    out = []
    # A copy opened read-write, as the recovering daemon opens it: a read-only connection can't
    # replay the write-ahead log that the reset left behind, and sees only what was checkpointed.
    scratch = Path(tempfile.mkdtemp(dir=state.parent))
    for name in ("state.db", "state.db-wal"):
        if (state / name).exists():
            shutil.copy2(state / name, scratch / name)
    raw = sqlite3.connect(scratch / "state.db")
    try:
        out.append(f"integrity {raw.execute('PRAGMA integrity_check').fetchone()[0]}")
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        out.append(f"tables {' '.join(sorted(tables)) or '-'}")
        rows = (
            raw.execute(
                "SELECT p.path, i.state FROM paths p JOIN inodes i ON i.id = p.inode"
            ).fetchall()
            if "inodes" in tables  # state DB schema 2: a row per inode, its paths beside it
            else []
        )
        out.append(f"rows {rows}")
        cps = raw.execute("SELECT offset FROM checkpoints").fetchall() if rows else []
        out.append(f"checkpoint {cps[0][0] if cps else 0}")
    finally:
        raw.close()
    partial = state / "partial"
    leaves = sorted(partial.glob("*")) if partial.exists() else []
    out.append(f"leaves {sum(p.stat().st_size for p in leaves)}")
    objects = state / "cache" / "objects"
    found = sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())
    out.append(f"objects {found if objects.exists() else []}")
    return out


def run_until_ready(d: Path, state: Path, policy: str, log: Path) -> list[str]:
    proc = start_daemon(d, state, policy, log)
    out = []
    last: list[FileRecord | None] = [None]

    def ready() -> bool:
        try:  # the socket may be a stale one from before the crash: the schema may be missing
            with StateDB(state / "state.db", readonly=True) as db:
                last[0] = db.get(str(d / "big"))
        except StorageError:
            last[0] = None
        return last[0] is not None and str(last[0].state) == "READY"

    try:
        with contextlib.suppress(AssertionError):  # not READY in time: reported as it is
            wait_until(ready, timeout=300, interval=0.2, what="big READY")
        rec = last[0]
        out.append(f"state {rec.state if rec else None} {rec.digest if rec else ''}")
        text = client.request({"op": "metrics"}, state_dir=state)["text"]
        for line in text.splitlines():
            if line.startswith("pyverity_bytes_hashed"):
                out.append(f"bytes_hashed {line.rsplit(' ', 1)[1]}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    out.append(f"exit {proc.returncode}")
    return out


def phase2(d: Path, state: Path, results: Path) -> None:
    lines = [f"survived-{x}" for x in survived(state)]
    copy = state.with_name(state.name + "-restart")
    shutil.copytree(state, copy, symlinks=True, ignore=shutil.ignore_patterns("control.sock"))
    lines += [f"resume-{x}" for x in run_until_ready(d, state, "resume", results / "pl-resume.log")]
    log = results / "pl-restart.log"
    lines += [f"restart-{x}" for x in run_until_ready(d, copy, "restart", log)]
    results.joinpath("powerloss.out").write_text("".join(x + "\n" for x in lines))


if __name__ == "__main__":
    if sys.argv[1] == "phase1":
        phase1(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        phase2(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
