#!/usr/bin/env python3
"""Benchmark ``pyverity digest`` against ``fsverity digest`` (run by hand, not in CI).

Speed: both tools run as command-line processes on the same page-cached file (1 GiB of random
data unless ``--file`` names one), alternately, ``--runs`` pairs per variant; before each pair
one byte of the file is changed, so neither tool can reuse anything. Prints the wall-clock
median of each tool and the ratio (and, for reference, the median CPU seconds, which other
load on the machine disturbs less), and checks that both printed the same digest. Variants:
default jobs, ``--jobs=1``, and the pure-Python path (``PYVERITY_NO_ACCEL=1``).

Memory (``--memory``): ``pyverity digest`` on a sparse file (16 GiB by default, created on
tmpfs so that reading its holes fills no page cache), with and without ``--out-merkle-tree``.
The whole process tree (the command and its forked workers) is sampled every few
milliseconds from ``/proc``; the peak of the summed ``RssAnon`` is reported, next to the
largest single ``VmHWM`` (which also counts shared, file-backed pages).

    .venv/bin/python bench/digest.py            # speed, 1 GiB, 5 pairs per variant
    .venv/bin/python bench/digest.py --memory   # memory on a 16 GiB sparse file
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1 << 30


def pyverity_cmd() -> list[str]:
    """The installed console script next to this interpreter (else on PATH)."""
    script = Path(sys.executable).with_name("pyverity")
    if script.exists():
        return [str(script)]
    found = shutil.which("pyverity")
    if found is None:
        sys.exit("pyverity is not installed (pip install -e .)")
    return [found]


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def page_cache(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(16 << 20):
            pass


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall-clock seconds, CPU seconds (user + system, workers included) and the digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu, done.stdout.split()[0]


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # all, idle + iowait


def wait_idle(threshold: float = 0.9, limit: float = 60.0) -> None:
    """Wait (at most ``limit`` seconds) until the CPUs were idle ``threshold`` of 0.5 s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        total0, idle0 = _cpu_times()
        time.sleep(0.5)
        total1, idle1 = _cpu_times()
        if idle1 - idle0 >= threshold * max(1, total1 - total0):
            return


def speed(path: Path, runs: int, only: str | None = None, idle: bool = False) -> None:
    fsverity = shutil.which("fsverity")
    if fsverity is None:
        sys.exit("fsverity is not installed (apt-get install fsverity)")
    size = path.stat().st_size
    page_cache(path)
    rng = random.Random()
    base_env = {k: v for k, v in os.environ.items() if k != "PYVERITY_NO_ACCEL"}
    variants = [
        ("default jobs", [], base_env),
        ("--jobs=1", ["--jobs=1"], base_env),
        ("pure Python (PYVERITY_NO_ACCEL=1)", [], {**base_env, "PYVERITY_NO_ACCEL": "1"}),
    ]
    print(f"file: {path} ({size} bytes, page-cached), {runs} pairs per variant, wall clock")
    print(f"{'variant':<36} {'pyverity':>9} {'fsverity':>9} {'ratio':>6}   CPU: pyverity fsverity")
    for name, extra, env in variants:
        if only is not None and only not in name:
            continue
        ours: list[float] = []
        theirs: list[float] = []
        cpu: dict[str, list[float]] = {"ours": [], "theirs": []}
        for i in range(runs):
            if idle:
                wait_idle()
            with path.open("r+b") as f:  # change one byte: nothing can be reused
                f.seek(rng.randrange(size))
                f.write(bytes([rng.randrange(256)]))
            pair = [
                ("ours", [*pyverity_cmd(), "digest", *extra, str(path)]),
                ("theirs", [fsverity, "digest", str(path)]),
            ]
            if i % 2:  # alternate which tool goes first
                pair.reverse()
            digests = {}
            for who, cmd in pair:
                elapsed, seconds, digest = timed(cmd, env)
                (ours if who == "ours" else theirs).append(elapsed)
                cpu[who].append(seconds)
                digests[who] = digest
            if digests["ours"] != digests["theirs"]:
                sys.exit(f"DIGESTS DIFFER: pyverity {digests['ours']} fsverity {digests['theirs']}")
        a, b = statistics.median(ours), statistics.median(theirs)
        ca, cb = statistics.median(cpu["ours"]), statistics.median(cpu["theirs"])
        print(
            f"{name:<36} {a:>8.3f}s {b:>8.3f}s {b / a:>5.2f}x   {ca:>11.3f}s {cb:>7.3f}s",
            flush=True,
        )


def _tree_pids(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return pids


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def sample_memory(cmd: list[str]) -> tuple[int, int, float]:
    """Run ``cmd``; peak summed RssAnon of its process tree, peak single VmHWM, seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_anon = peak_hwm = 0
    while proc.poll() is None:
        stats = [_status(pid) for pid in _tree_pids(proc.pid)]
        peak_anon = max(peak_anon, sum(s.get("RssAnon", 0) for s in stats))
        peak_hwm = max([peak_hwm, *(s.get("VmHWM", 0) for s in stats)])
        time.sleep(0.003)
    if proc.returncode:
        sys.exit(f"{cmd} failed with status {proc.returncode}")
    return peak_anon, peak_hwm, time.perf_counter() - start


def memory(size: int, directory: Path) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as work:
        path = Path(work) / "sparse"
        with path.open("wb") as f:
            f.truncate(size)
            f.write(os.urandom(1 << 20))
            f.seek(size - 4097)
            f.write(os.urandom(4097))
        tree = Path(work) / "tree"
        print(f"file: {size} bytes sparse on {directory}; peak summed RssAnon of the process tree")
        api = "import sys; from pyverity import build_tree; build_tree(sys.argv[1], keep_tree=True)"
        digest = [*pyverity_cmd(), "digest"]
        runs = [
            ("digest only", [*digest, str(path)]),
            ("--out-merkle-tree", [*digest, f"--out-merkle-tree={tree}", str(path)]),
            ("API build_tree(tree)", [sys.executable, "-c", api, str(path)]),
        ]
        for name, cmd in runs:
            anon, hwm, secs = sample_memory(cmd)
            line = f"{name:<22} RssAnon {anon / 2**20:7.1f} MiB  max VmHWM {hwm / 2**20:7.1f} MiB"
            if tree.exists():
                line += f"  (tree {tree.stat().st_size / 2**20:.1f} MiB)"
            print(f"{line}  {secs:.1f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="file to hash (default: a new 1 GiB file)")
    parser.add_argument("--runs", type=int, default=5, help="pairs per variant (default 5)")
    parser.add_argument("--only", help="run only the variants whose name contains this")
    parser.add_argument(
        "--wait-idle", action="store_true", help="on a shared machine: wait for idle CPUs per pair"
    )
    parser.add_argument("--memory", action="store_true", help="measure memory instead")
    parser.add_argument("--sparse-gib", type=int, default=16, help="sparse size for --memory")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="for --memory files")
    args = parser.parse_args()
    if args.memory:
        memory(args.sparse_gib * GIB, args.dir)
        return
    if args.file is not None:
        speed(args.file, args.runs, args.only, args.wait_idle)
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        path = Path(work) / "bench-1g"
        make_file(path, GIB)
        speed(path, args.runs, args.only, args.wait_idle)


if __name__ == "__main__":
    main()
