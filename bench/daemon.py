#!/usr/bin/env python3
"""Benchmark the daemon (issue #4; run by hand, not in CI). Needs root only for nothing: it
uses ``user.*`` attributes on a temporary directory.

1. **1 GiB attribute → READY**: the time from the ``setxattr`` of a descriptor (computed
   beforehand) on a page-cached 1 GiB file to READY in the daemon, against ``pyverity digest``
   on the same file (median of ``--runs`` each; target ≤ 1.2×).
2. **10,000 signed files**: distinct 16–64 KiB files, each with its own v3 signature (ECDSA
   P-256, made beforehand) and descriptor, written while the daemon runs; time from the last
   ``setxattr`` to all READY (target <= 5 s, issue 16), and the daemon's CPU time over it. With
   fanotify the daemon sees every event of the filesystem: give ``--dir`` on a filesystem of
   its own (a loop-mounted ext4 image) when others use the machine's.
3. **status on 1,000,000 rows**: ``pyverity status PATH`` and ``pyverity status --totals`` on
   a state database of a million rows (targets < 1 s and < 5 s), plus the full ``--json``
   listing.
4. **Peak daemon memory**: ``VmHWM`` of the daemon and of its largest worker after 1 and 2.
5. **Watchers on a big tree** (``--watchers``, issue 11; as root, on a real disk): a tree of
   ``--tree-dirs`` directories and ``--tree-files`` empty files (made as ``bench/watch.py``
   makes it, walked once so that every start is on a warm cache), then for each watcher
   (``--watcher fanotify``, ``--watcher inotify``) a daemon over it: its start-up time (exec to
   the first answer on its socket: the start-up walk of every file, the watches, the socket),
   its RSS and peak RSS (``VmHWM``) once started, and the latency from a ``setxattr`` of a
   descriptor on an unprotected file to the daemon showing the file PENDING (median, p99 and
   max of ``--samples``; a ``status`` request is sent back to back until the file is no longer
   NONE, so each figure includes up to one request's round trip, and is an upper bound when
   the first state seen is already BUILDING or READY, as it is for most empty files).

    .venv/bin/python bench/daemon.py                 # 1-4
    .venv/bin/python bench/daemon.py --files 2000    # smaller
    sudo .venv/bin/python bench/daemon.py --watchers --tree-dirs 100000 --tree-files 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))

from pyverity.daemon import client  # noqa: E402
from pyverity.errors import Error  # noqa: E402
from pyverity.hashing import build_tree  # noqa: E402
from pyverity.store.statedb import StateDB  # noqa: E402


def cli() -> list[str]:
    script = Path(sys.executable).with_name("pyverity")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyverity.cli"]


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_delay(pid: int) -> float:
    """Seconds ``pid``'s main thread has waited for a CPU while runnable (``schedstat``)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Daemon:
    def __init__(
        self, base: Path, *args: str, root: Path | None = None, start_timeout: float = 30
    ) -> None:
        self.root = root or base / "root"
        self.state = base / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        self.args = [
            "daemon", "--root", str(self.root), "--state-dir", str(self.state),
            "--cache-dir", str(base / "cache"), "--xattr-ns", "user", *args,
        ]  # fmt: skip
        base.mkdir(parents=True, exist_ok=True)
        self.log_path = base / "daemon.log"
        self.log = self.log_path.open("ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*cli(), *self.args], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            try:
                client.request({"op": "sync"}, state_dir=self.state, timeout=2)
            except Error:
                time.sleep(0.01)
            else:
                self.startup_s = time.perf_counter() - t0
                return
        self.proc.kill()
        raise SystemExit(f"daemon did not start within {start_timeout} s")

    def memory(self) -> tuple[int, int]:
        workers = [vm_hwm(p) for p in children(self.proc.pid)]
        return vm_hwm(self.proc.pid), max(workers, default=0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def bench_big(base: Path, size: int, runs: int) -> dict[str, float]:
    d = Daemon(base / "big", "--workers", "2")
    f = d.root / "big.bin"
    with f.open("wb") as out:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            out.write(block)
    digests, daemon = [], []
    try:
        for i in range(runs):
            with f.open("r+b") as w:  # new content: nothing can be reused
                os.pwrite(w.fileno(), os.urandom(64), i * 4096)
            desc = build_tree(f, keep_tree=False).descriptor.to_bytes()
            t0 = time.perf_counter()
            subprocess.run([*cli(), "digest", str(f)], check=True, capture_output=True)
            digests.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            os.setxattr(f, "user.verity", desc)
            reply = client.wait(f, state_dir=d.state, timeout=600)
            daemon.append(time.perf_counter() - t0)
            assert reply["state"] == "READY", reply
        mem = d.memory()
    finally:
        d.stop()
    dig, dae = statistics.median(digests), statistics.median(daemon)
    return {"digest_s": dig, "ready_s": dae, "ratio": dae / dig, "daemon_hwm": mem[0],
            "worker_hwm": mem[1]}  # fmt: skip


def bench_many(base: Path, count: int) -> dict[str, float]:
    from pyverity.keys import load_signer, sign_v3
    from pyverity.keys.generate import generate_key

    key = generate_key(base / "key", "ecdsa")
    keyring = base / "keyring"
    keyring.mkdir()
    shutil.copy(key.cert_path, keyring / "ima.pem")
    signer = load_signer(str(key.key_path), cert=str(key.cert_path))
    d = Daemon(base / "many", "--workers", "2", "--keyring", str(keyring))
    rng = random.Random(1)
    values = []
    t0 = time.perf_counter()
    for i in range(count):
        f = d.root / f"d{i // 1000:02d}" / f"f{i:05d}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(os.urandom(rng.randint(16, 64) * 1024))
        desc = build_tree(f, keep_tree=False).descriptor
        sig = sign_v3(signer, desc.hash_algorithm, desc.digest())
        values.append((f, desc.to_bytes(), sig.to_bytes()))
    # The files' data on disk first, as that of files written long before being signed is:
    # else the daemon's first commit (its syncfs, for the durability of the cache entries)
    # also writes back the 0.4 GB just written.
    os.sync()
    prepare = time.perf_counter() - t0
    try:
        cpu0 = cpu_seconds(d.proc.pid)
        workers = children(d.proc.pid)
        workers0 = sum(cpu_seconds(w) for w in workers)
        delay0 = run_delay(d.proc.pid)
        t_first = time.perf_counter()
        for f, desc, sig in values:
            os.setxattr(f, "user.verity", desc)
            os.setxattr(f, "user.ima", sig)
        t_last = time.perf_counter()
        db = d.state / "state.db"
        ready = 0
        while True:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            ready = con.execute("SELECT count(*) FROM inodes WHERE state='READY'").fetchone()[0]
            bad = con.execute(
                "SELECT count(*) FROM inodes WHERE state IN ('INVALID','MISMATCH','STALE')"
            ).fetchone()[0]
            con.close()
            if ready + bad >= count or time.perf_counter() - t_last > 600:
                break
            time.sleep(0.05)
        t_done = time.perf_counter()
        cpu = cpu_seconds(d.proc.pid) - cpu0
        workers_cpu = sum(cpu_seconds(w) for w in workers) - workers0
        delay = run_delay(d.proc.pid) - delay0
        mem = d.memory()
    finally:
        d.stop()
    return {
        "prepare_s": prepare,
        "daemon_cpu_s": cpu,
        "workers_cpu_s": workers_cpu,
        "daemon_run_delay_s": delay,
        "write_s": t_last - t_first,
        "ready_after_last_s": t_done - t_last,
        "ready": ready,
        "daemon_hwm": mem[0],
        "worker_hwm": mem[1],
    }


def bench_status(base: Path, rows: int) -> dict[str, float]:
    state = base / "rows"
    state.mkdir(mode=0o700)
    with StateDB(state / "state.db") as db:
        db._write("SELECT 1")  # open the transaction
        states = ["READY"] * 8 + ["PENDING", "STALE"]
        db._db.executemany(  # schema 2: a row per inode, its paths beside it
            "INSERT INTO inodes (id, dev, ino, state, kind, size, mtime_ns, attr_fp, digest,"
            " progress, error, created_ns, updated_ns, ready_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    i + 1,
                    1,
                    i,
                    states[i % 10],
                    "verity",
                    40960,
                    0,
                    os.urandom(8),
                    "",
                    40960,
                    "",
                    1,
                    1,
                    None,
                )
                for i in range(rows)
            ),
        )
        db._db.executemany(
            "INSERT INTO paths (path, inode) VALUES (?, ?)",
            ((f"/data/{i // 1000:04d}/{i:07d}".encode(), i + 1) for i in range(rows)),
        )
        db.commit()
    out = {}
    for name, args in (
        ("one_path_s", [f"/data/{rows // 2000:04d}/{rows // 2:07d}"]),
        ("totals_s", ["--totals"]),
        ("all_json_s", ["--json"]),
    ):
        t0 = time.perf_counter()
        r = subprocess.run(
            [*cli(), "status", "--state-dir", str(state), *args], capture_output=True, check=False
        )
        out[name] = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
    return out


def _pending_latency(d: Daemon, files: list[str], desc: bytes) -> tuple[list[float], str]:
    """Seconds from each ``setxattr`` to the daemon showing the file; the states first seen."""
    lat: list[float] = []
    first: dict[str, int] = {}
    for f in files:
        t1 = time.perf_counter()
        os.setxattr(f, "user.verity", desc)
        while True:
            reply = client.request({"op": "status", "path": f}, state_dir=d.state)
            state = reply["files"][0]["state"]
            if state != "NONE":
                lat.append(time.perf_counter() - t1)
                first[state] = first.get(state, 0) + 1
                break
            if time.perf_counter() - t1 > 10:
                raise SystemExit(f"{f} not PENDING within 10 s")
        reply = client.wait(f, state_dir=d.state, timeout=60)  # idle again for the next one
        assert reply.get("state") == "READY", reply
    lat.sort()
    return lat, " ".join(f"{k} {v}" for k, v in sorted(first.items()))


def _one_watcher(base: Path, kind: str, tree: Path, files: list[str], desc: bytes) -> dict:
    d = Daemon(base / kind, "--watcher", kind, "--workers", "1", root=tree, start_timeout=3600)
    try:
        rss, hwm = status_kib(d.proc.pid, "VmRSS"), status_kib(d.proc.pid, "VmHWM")
        workers = sum(status_kib(p, "VmRSS") for p in children(d.proc.pid))
        text = client.request({"op": "metrics"}, state_dir=d.state)["text"]
        watches = next(
            int(line.split()[1])
            for line in text.splitlines()
            if line.startswith("pyverity_watched_directories ")
        )
        lat, first = _pending_latency(d, files, desc)
    finally:
        d.stop()
    return {
        "startup_s": d.startup_s,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "workers_rss_kib": workers,
        "watches": watches,
        "median_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
        "max_ms": lat[-1] * 1e3,
        "first_seen": first,
    }


def bench_watchers(
    scratch: Path, dirs: int, files: int, samples: int, kinds: list[str]
) -> dict[str, dict]:
    sys.path.insert(0, str(HERE / "bench"))
    from watch import make_tree

    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", str(scratch)], check=True, capture_output=True, text=True
    ).stdout.strip()
    if fstype == "tmpfs":
        raise SystemExit(f"{scratch} is a tmpfs: pass --scratch on a real disk")
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    if "inotify" in kinds and dirs + 1 > limit:
        raise SystemExit(f"{dirs + 1} watches needed, fs.inotify.max_user_watches={limit}")
    base = Path(tempfile.mkdtemp(prefix="pyverity-daemon-watchers-", dir=scratch))
    try:
        t0 = time.perf_counter()
        tree = base / "tree"
        tree.mkdir()
        paths = make_tree(tree, dirs, files)
        empty = base / "empty"
        empty.touch()
        desc = build_tree(empty, keep_tree=False).descriptor.to_bytes()  # every file's: empty
        for top, _, names in os.walk(tree):  # each start finds dentries, inodes, xattrs cached
            for name in names:
                os.listxattr(f"{top}/{name}", follow_symlinks=False)
        print(f"tree: {dirs:,} dirs, {files:,} empty files on {fstype} ({scratch}), made and"
              f" walked in {time.perf_counter() - t0:.1f} s; kernel {os.uname().release}",
              flush=True)  # fmt: skip
        picks = random.Random(1).sample(range(files), min(files, samples * len(kinds)))
        return {
            kind: _one_watcher(
                base,
                kind,
                tree,
                [f"{paths[j % dirs]}/f{j}" for j in picks[n * samples : (n + 1) * samples]],
                desc,
            )
            for n, kind in enumerate(kinds)
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, help="work directory (default: a temp dir under /tmp)")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--skip", action="append", default=[], choices=["big", "many", "status"])
    p.add_argument("--watchers", action="store_true", help="only 5: the watchers on a big tree")
    p.add_argument("--watcher", action="append", choices=["fanotify", "inotify"],
                   help="with --watchers: only this one (repeatable; default both)")  # fmt: skip
    p.add_argument("--tree-dirs", type=int, default=10_000)
    p.add_argument("--tree-files", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=200, help="setxattr -> PENDING samples")
    p.add_argument("--scratch", type=Path, default=Path("/var/tmp"), help="for --watchers")
    a = p.parse_args()
    if a.watchers:
        results = bench_watchers(
            a.scratch, a.tree_dirs, a.tree_files, a.samples, a.watcher or ["fanotify", "inotify"]
        )
        for kind, r in results.items():
            print(f"{kind:8s} daemon start-up {r['startup_s']:.2f} s ({r['watches']:,.0f}"
                  f" {'marks' if kind == 'fanotify' else 'watches'}); RSS"
                  f" {r['rss_kib'] / 1024:.0f} MiB (peak {r['hwm_kib'] / 1024:.0f} MiB;"
                  f" worker {r['workers_rss_kib'] / 1024:.0f} MiB); setxattr -> PENDING median"
                  f" {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms"
                  f" (first seen: {r['first_seen']})")  # fmt: skip
        return
    base = Path(tempfile.mkdtemp(prefix="pyverity-bench-", dir=a.dir))
    base.chmod(0o700)
    try:
        if "big" not in a.skip:
            r = bench_big(base, a.size_mib * MiB, a.runs)
            print(f"{a.size_mib} MiB: pyverity digest {r['digest_s']:.2f} s, setxattr -> READY"
                  f" {r['ready_s']:.2f} s, ratio {r['ratio']:.2f}x;"
                  f" daemon VmHWM {r['daemon_hwm'] / MiB:.0f} MiB,"
                  f" worker VmHWM {r['worker_hwm'] / MiB:.0f} MiB")  # fmt: skip
        if "many" not in a.skip:
            r = bench_many(base, a.files)
            print(f"{a.files} signed 16-64 KiB files: {r['ready']:.0f} READY"
                  f" {r['ready_after_last_s']:.1f} s after the last setxattr"
                  f" (writing the attributes took {r['write_s']:.1f} s; daemon CPU from the"
                  f" first setxattr {r['daemon_cpu_s']:.1f} s, its workers'"
                  f" {r['workers_cpu_s']:.1f} s; the daemon waited for a CPU"
                  f" {r['daemon_run_delay_s']:.1f} s);"
                  f" daemon VmHWM {r['daemon_hwm'] / MiB:.0f} MiB,"
                  f" worker VmHWM {r['worker_hwm'] / MiB:.0f} MiB")  # fmt: skip
        if "status" not in a.skip:
            r = bench_status(base, a.rows)
            print(
                f"status on {a.rows} rows: one path {r['one_path_s']:.2f} s,"
                f" --totals {r['totals_s']:.2f} s, all rows --json {r['all_json_s']:.1f} s"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
