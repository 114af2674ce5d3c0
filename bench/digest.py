#!/usr/bin/env python3
"""Benchmark ``pyverity digest`` against ``fsverity digest`` (run by hand, not in CI).

Speed: both tools run as command-line processes on the same page-cached file (1 GiB of random
data unless ``--file`` names one), alternately, ``--runs`` pairs per variant; before each pair
one byte of the file is changed, so neither tool can reuse anything. Prints the wall-clock
median of each tool and the ratio (and, for reference, the median CPU seconds, which other
load on the machine disturbs less), and checks that both printed the same digest. Variants:
default jobs, ``--jobs=1``, and the pure-Python path (``PYVERITY_NO_ACCEL=1``).

Limit (printed first, in the same run): the machine's hashing limit, the accelerator's chosen
width hashing a 2 MiB buffer in memory on all cores at once (one forked process per CPU,
started together), against the hashing phase of ``pyverity digest`` (``compute_digest`` in
this process: no interpreter start-up, default jobs) on the same page-cached file, interleaved,
best of ``--runs``; the fraction of the limit it reaches (target: 80 %), and its CPU seconds
per GiB against hashing's alone.

Start-up (``--startup``, also part of the default run): ``pyverity digest`` and ``fsverity
digest`` of a 4 KiB file as whole processes, alternately, ``--startup-runs`` times each
(hyperfine-style): median, mean ± standard deviation, min, and the median CPU time.

Memory (``--memory``): ``pyverity digest`` on a sparse file (16 GiB by default, created on
tmpfs so that reading its holes fills no page cache), with and without ``--out-merkle-tree``.
The whole process tree (the command and its forked workers) is sampled every few
milliseconds from ``/proc``; the peak of the summed ``RssAnon`` is reported, next to the
largest single ``VmHWM`` (which also counts shared, file-backed pages).

    .venv/bin/python bench/digest.py            # limit, start-up, speed: 1 GiB, 5 pairs
    .venv/bin/python bench/digest.py --startup  # start-up only
    .venv/bin/python bench/digest.py --memory   # memory on a 16 GiB sparse file
"""

from __future__ import annotations

import argparse
import atexit
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
#: Byte-compiled modules for the measured processes: an installed package has its .pyc files,
#: so the processes are timed with a bytecode cache (in a scratch directory, written by the
#: warm-up runs) even where the environment says PYTHONDONTWRITEBYTECODE.
_PYCACHE = tempfile.mkdtemp(prefix="pyverity-bench-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of the timed commands: ours, with a bytecode cache, without
    ``PYVERITY_NO_ACCEL`` unless ``extra`` sets it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYVERITY_NO_ACCEL", "PYTHONDONTWRITEBYTECODE")
    }
    return {**env, "PYTHONPYCACHEPREFIX": _PYCACHE, **extra}


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
    base_env = tool_env()
    variants = [
        ("default jobs", [], base_env),
        ("--jobs=1", ["--jobs=1"], base_env),
        ("pure Python (PYVERITY_NO_ACCEL=1)", [], tool_env(PYVERITY_NO_ACCEL="1")),
    ]
    for _name, extra, env in variants:  # warm-up: page cache, bytecode cache, width cache
        subprocess.run(
            [*pyverity_cmd(), "digest", *extra, str(path)], env=env, check=True, capture_output=True
        )
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
        target = "  (target 3.0x)" if name == "default jobs" else ""
        print(
            f"{name:<36} {a:>8.3f}s {b:>8.3f}s {b / a:>5.2f}x   {ca:>11.3f}s {cb:>7.3f}s{target}",
            flush=True,
        )


def _hash_for(seconds: float, width: int, wfd: int, go: int) -> None:  # pragma: no cover
    """In a forked child: wait for the start byte, hash for ``seconds``, report bytes/s."""
    from pyverity.hashing import _accel

    data = os.urandom(2 << 20)
    os.read(go, 1)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        _accel.sha256_blocks(data, 4096, b"", width)
        n += len(data)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    os.write(wfd, f"{n / wall} {n / cpu}\n".encode())
    os._exit(0)


def hashing_limit(procs: int, seconds: float = 0.5) -> tuple[float, float]:
    """Bytes per second of ``procs`` processes hashing in memory at once (the limit), and the
    best of their bytes per CPU second (one core's speed)."""
    from pyverity.hashing.runhash import accel_choice

    choice = accel_choice()
    if choice is None:
        sys.exit("the accelerator is not available: no hashing limit to compare with")
    rfd, wfd = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            _hash_for(seconds, choice.widths["sha256"], wfd, go_r)
        pids.append(pid)
    os.write(go_w, b"x" * procs)  # all start together
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(wfd)
    with os.fdopen(rfd) as results:
        rates = [[float(x) for x in line.split()] for line in results]
    for fd in (go_r, go_w):
        os.close(fd)
    return sum(r[0] for r in rates), max(r[1] for r in rates)


def limit(path: Path, runs: int, idle: bool) -> None:
    """The hashing limit against pyverity's hashing phase on ``path``, interleaved."""
    from pyverity.hashing import compute_digest
    from pyverity.hashing.fast import default_jobs
    from pyverity.hashing.runhash import accel_choice

    size = path.stat().st_size
    page_cache(path)
    procs = default_jobs()
    choice = accel_choice()
    assert choice is not None
    lim: list[float] = []
    core: list[float] = []
    phase: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        if idle:
            wait_idle()
        total, one = hashing_limit(procs)
        lim.append(total)
        core.append(one)
        t0, c0 = time.perf_counter(), os.times()
        compute_digest(path)
        elapsed, c1 = time.perf_counter() - t0, os.times()
        phase.append(size / elapsed)
        cpu.append(
            (c1.user + c1.system + c1.children_user + c1.children_system)
            - (c0.user + c0.system + c0.children_user + c0.children_system)
        )
    alone = GIB / max(core)  # CPU seconds per GiB of hashing alone
    print(
        f"hashing limit: {max(lim) / 1e9:.2f} GB/s ({procs} processes, SHA-256 width "
        f"{choice.widths['sha256']}, data in memory; best of {runs}, runs "
        f"{min(lim) / 1e9:.2f}-{max(lim) / 1e9:.2f})"
    )
    print(
        f"pyverity digest hashing phase: {max(phase) / 1e9:.2f} GB/s = "
        f"{max(phase) / max(lim):.0%} of the limit (target 80 %; runs "
        f"{min(phase) / 1e9:.2f}-{max(phase) / 1e9:.2f})",
    )
    print(
        f"  CPU per GiB: {min(cpu) * GIB / size:.3f} s against {alone:.3f} s for hashing alone "
        f"({max(core) / 1e9:.2f} GB/s per core): hashing is {alone / (min(cpu) * GIB / size):.0%} "
        f"of the CPU it uses (less disturbed by other load than the wall clock)",
        flush=True,
    )


def startup(runs: int) -> None:
    """``pyverity digest`` and ``fsverity digest`` of a 4 KiB file, whole processes."""
    fsverity = shutil.which("fsverity")
    if fsverity is None:
        sys.exit("fsverity is not installed (apt-get install fsverity)")
    with tempfile.TemporaryDirectory() as work:
        small = Path(work) / "4k"
        small.write_bytes(os.urandom(4096))
        cmds = {
            "pyverity digest": [*pyverity_cmd(), "digest", str(small)],
            "fsverity digest": [fsverity, "digest", str(small)],
        }
        wall: dict[str, list[float]] = {name: [] for name in cmds}
        cpus: dict[str, list[float]] = {name: [] for name in cmds}
        env = tool_env()
        for cmd in cmds.values():  # warm-up (page cache, .pyc, the width cache)
            subprocess.run(cmd, capture_output=True, check=True, env=env)
        for i in range(runs):
            order = list(cmds.items())
            if i % 2:
                order.reverse()
            for name, cmd in order:
                elapsed, seconds, _ = timed(cmd, env)
                wall[name].append(elapsed)
                cpus[name].append(seconds)
    print(f"start-up: a 4 KiB file, whole process, {runs} runs each, alternately (target 60 ms)")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print(
            "  (PYTHONDONTWRITEBYTECODE is set here: timed with a bytecode cache in a scratch dir)"
        )
    for name in cmds:
        w = wall[name]
        print(
            f"  {name}: median {statistics.median(w) * 1e3:.1f} ms, "
            f"mean {statistics.mean(w) * 1e3:.1f} ± {statistics.stdev(w) * 1e3:.1f} ms, "
            f"min {min(w) * 1e3:.1f} ms; CPU median {statistics.median(cpus[name]) * 1e3:.1f} ms",
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
    parser.add_argument("--startup", action="store_true", help="measure start-up only")
    parser.add_argument("--startup-runs", type=int, default=40, help="runs per tool (40)")
    parser.add_argument("--no-limit", action="store_true", help="skip the hashing limit")
    parser.add_argument("--sparse-gib", type=int, default=16, help="sparse size for --memory")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="for --memory files")
    args = parser.parse_args()
    if args.memory:
        memory(args.sparse_gib * GIB, args.dir)
        return
    if args.startup:
        startup(args.startup_runs)
        return

    def all_of(path: Path) -> None:
        if not args.no_limit:
            limit(path, args.runs, args.wait_idle)
        startup(args.startup_runs)
        speed(path, args.runs, args.only, args.wait_idle)

    if args.file is not None:
        all_of(args.file)
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        path = Path(work) / "bench-1g"
        make_file(path, GIB)
        all_of(path)


if __name__ == "__main__":
    main()
