"""Verified read throughput, by hand (not CI). Needs root for the mount part.

    .venv/bin/python bench/read.py [--size-mib 1024] [--dir DIR] [--no-mount] [--runs 5]
                                   [--wait-idle]

Every figure is for the *first* read after an open: no data block has been verified yet, so
every block read is hashed and checked (the tree comes from memory, as it would from the cache;
the file's pages are in the page cache, so the disk is not what is measured). Reads are 1 MiB:

* API: ``pyverity.open`` + sequential reads, against plain ``os.pread`` of the same file;
* mount: the same through ``pyverity mount`` (``--no-keep-cache``, so each open starts cold),
  relative to the same mount with verification off (``--unsafe-no-verify``), both mounted at
  once and read alternately; also the server's CPU time per GiB (less disturbed by load);
* random 4 KiB reads per second through the API (fresh open);
* 1 vs 2 concurrent readers (processes, each its own open) through the API;
* the ceiling of verified ÷ unverified: U / (U + H), where U is the unverified path's CPU
  seconds per GiB (for the mount: the FUSE server plus the reading process, kernel time
  included; for the API: the plain ``pread`` loop) and H hashing's (the accelerator's chosen
  width on 4 KiB blocks in memory, one core, best of 5); and the fraction of that ceiling the
  measured ratio reaches (target 90 %). Where the verified path hashes on two cores while the
  unverified one runs on one (the API), the ratio can exceed the ceiling.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyverity
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.hashing.api import build_tree
from pyverity.hashing.runhash import accel_choice, run_hasher
from pyverity.reader import ReaderOptions
from pyverity.reader.hashpool import HashPool
from pyverity.store.cache import MemoryStore

MIB = 1 << 20
NS = "security"


def make_file(path: Path, size: int) -> ReaderOptions:
    with path.open("wb") as f:
        chunk = os.urandom(16 * MIB)
        for off in range(0, size, len(chunk)):
            f.write(chunk[: min(len(chunk), size - off)])
    tree = build_tree(path)
    set_attr(path, attr_name(NS, "verity"), tree.descriptor.to_bytes())
    store = MemoryStore()
    store.put(tree)
    return ReaderOptions(xattr_ns=NS, store=store)


def read_all(f: object, block: int = MIB) -> int:
    total = 0
    read = f.read  # type: ignore[attr-defined]
    while True:
        data = read(block)
        if not data:
            return total
        total += len(data)


def api_sequential(path: Path, options: ReaderOptions) -> tuple[float, float]:
    """Bytes per second and CPU seconds per GiB (all threads) of a verified sequential read."""
    t0, c0 = time.perf_counter(), time.process_time()
    with pyverity.open(path, options=options, buffering=MIB) as f:
        n = read_all(f.raw)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * (1 << 30) / n


def plain_sequential(path: Path) -> tuple[float, float]:
    """Bytes per second and CPU seconds per GiB of plain 1 MiB ``pread`` calls."""
    fd = os.open(path, os.O_RDONLY)
    t0, c0 = time.perf_counter(), time.process_time()
    n = off = 0
    while data := os.pread(fd, MIB, off):
        n += len(data)
        off += len(data)
    os.close(fd)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * (1 << 30) / n


def hashing_cpu_per_gib(rounds: int = 5) -> float:
    """H: CPU seconds per GiB of the default run hasher on 4 KiB blocks, one core, in memory."""
    run = run_hasher(pyverity.TreeParams())
    data = os.urandom(MIB)
    best = float("inf")
    for _ in range(rounds + 1):
        c0 = time.thread_time()
        for _ in range(64):
            run(data)
        best = min(best, time.thread_time() - c0)
    return best / 64 * 1024


def ceiling(u: float, h: float, ratio: float) -> tuple[str, str]:
    bound = u / (u + h)
    return (
        f"U {u:.3f} / H {h:.3f} CPU s per GiB: ceiling U/(U+H) {bound:.2f}×",
        f"{ratio:.2f}× = {ratio / bound:.0%} of the ceiling (target 90 %)",
    )


def api_random(path: Path, options: ReaderOptions, count: int = 20000) -> float:
    size = path.stat().st_size
    rng = random.Random(1)
    offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(count)]
    with pyverity.open(path, options=options) as f:
        raw = f.raw
        t0 = time.perf_counter()
        for off in offsets:
            raw.pread(4096, off)  # type: ignore[attr-defined]
        return count / (time.perf_counter() - t0)


_CHILD: dict[str, ReaderOptions] = {}


def _init_child(options: ReaderOptions) -> None:
    _CHILD["options"] = replace(options, hash_pool=HashPool())  # threads do not survive fork


def _child(path: str) -> int:
    with pyverity.open(path, options=_CHILD["options"], buffering=MIB) as f:
        return read_all(f.raw)


def api_concurrent(path: Path, options: ReaderOptions, readers: int) -> float:
    ctx = multiprocessing.get_context("fork")  # the options (and tree) are inherited, not pickled
    with ctx.Pool(readers, initializer=_init_child, initargs=(options,)) as pool:
        t0 = time.perf_counter()
        total = sum(pool.map(_child, [str(path)] * readers))
        return total / (time.perf_counter() - t0)


def api_compare(path: Path, options: ReaderOptions, h: float, runs: int) -> list[tuple[str, str]]:
    """Plain and verified API reads interleaved, best of ``runs`` each, and their ceiling."""
    plain: list[tuple[float, float]] = []
    api: list[tuple[float, float]] = []
    for _ in range(runs):
        plain.append(plain_sequential(path))
        api.append(api_sequential(path, options))
    p_speed, p_cpu = max(x[0] for x in plain), min(x[1] for x in plain)
    seq, seq_cpu = max(x[0] for x in api), min(x[1] for x in api)
    return [
        ("plain pread, 1 MiB", f"{p_speed / 1e9:.2f} GB/s, {p_cpu:.3f} CPU s per GiB"),
        (
            f"API verified sequential, 1 MiB reads, best of {runs}",
            f"{seq / 1e9:.2f} GB/s, {seq_cpu:.3f} CPU s per GiB (all threads)",
        ),
        ceiling(p_cpu, h, seq / p_speed),
    ]


def _is_mounted(mnt: Path) -> bool:
    return any(line.split()[1] == str(mnt) for line in Path("/proc/self/mounts").open())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class MountRun:
    """One mount, its server process and the throughput and server CPU of each timed read."""

    name: str
    mnt: Path
    proc: subprocess.Popen[bytes]
    speeds: list[float] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)
    #: CPU seconds per GiB of the reading process (its read calls, kernel time included).
    client_per_gib: list[float] = field(default_factory=list)


def _start_mount(src: Path, mnt: Path, name: str, extra: list[str]) -> MountRun:
    mnt.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pyverity.cli", "mount", "-f", "--no-keep-cache", *extra]
    proc = subprocess.Popen([*cmd, str(src), str(mnt)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _is_mounted(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mount did not come up")
        time.sleep(0.05)
    return MountRun(name, mnt, proc)


def _stop_mount(run: MountRun) -> None:
    run.proc.terminate()
    run.proc.wait(30)
    if _is_mounted(run.mnt):
        subprocess.run(["fusermount3", "-uz", str(run.mnt)], check=False)


def _timed_read(run: MountRun, name: str) -> None:
    cpu0 = _cpu_seconds(run.proc.pid)
    t0, c0 = time.perf_counter(), time.thread_time()
    with (run.mnt / name).open("rb", buffering=0) as f:
        n = read_all(f)
    run.speeds.append(n / (time.perf_counter() - t0))
    run.client_per_gib.append((time.thread_time() - c0) * (1 << 30) / n)
    run.cpu_per_gib.append((_cpu_seconds(run.proc.pid) - cpu0) * (1 << 30) / n)


def mount_compare(src: Path, tmp: Path, name: str, runs: int, idle: bool) -> list[MountRun]:
    """The verified and the unverified mount side by side, their reads alternated.

    Both mounts stay up for the whole comparison and each round reads through one, then the
    other, so that a change of load on a shared machine hits both alike; with ``idle`` each
    read first waits (at most 20 s) for idle CPUs (``bench/digest.py --wait-idle``).
    """
    from digest import wait_idle  # bench/ is sys.path[0] when run as a script

    mounts: list[MountRun] = []
    try:
        for label, extra in (("verified", []), ("unverified", ["--unsafe-no-verify"])):
            mounts.append(_start_mount(src, tmp / f"mnt-{label}", label, extra))
            with (mounts[-1].mnt / name).open("rb"):
                pass  # the first open builds the tree into the mount's memory store (not timed)
        for _ in range(runs):
            for run in mounts:
                if idle:
                    wait_idle(limit=20.0)
                _timed_read(run, name)
    finally:
        for run in mounts:
            _stop_mount(run)
    return mounts


def _spread(values: list[float], scale: float, unit: str) -> str:
    lo, hi = min(values) / scale, max(values) / scale
    return f"{hi:.2f} {unit} (runs {lo:.2f}–{hi:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--no-mount", action="store_true")
    ap.add_argument("--runs", type=int, default=5, help="timed reads per mount (default 5)")
    ap.add_argument(
        "--wait-idle", action="store_true", help="on a shared machine: wait for idle CPUs per read"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pyverity-bench-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        path = src / "big"
        options = make_file(path, args.size_mib * MIB)
        plain_sequential(path)  # warm the page cache
        rows: list[tuple[str, str]] = []
        accel = "hashlib"
        choice = accel_choice()
        if choice is not None and choice.widths.get("sha256"):
            width = choice.widths["sha256"]
            name = "AVX-512 x16" if width == 16 else f"SHA-NI x{width}"
            accel = f"accelerator, {name} ({choice.source})"
        h = hashing_cpu_per_gib()
        rows.append(("hashing", f"{accel}: H = {h:.3f} CPU s per GiB ({1 / h:.2f} GiB/s a core)"))
        rows.extend(api_compare(path, options, h, args.runs))
        rnd = max(api_random(path, options) for _ in range(3))
        rows.append(("API random 4 KiB reads", f"{rnd:,.0f} reads/s"))
        one = max(api_concurrent(path, options, 1) for _ in range(3))
        two = max(api_concurrent(path, options, 2) for _ in range(3))
        rows.append(
            ("API 1 reader / 2 readers (aggregate)", f"{one / 1e9:.2f} / {two / 1e9:.2f} GB/s")
        )
        if not args.no_mount and os.geteuid() == 0:
            ver, unv = mount_compare(src, Path(tmp), "big", args.runs, args.wait_idle)
            for run in (ver, unv):
                rows.append(
                    (f"mount {run.name}, best of {args.runs}", _spread(run.speeds, 1e9, "GB/s"))
                )
            ratios = [v / u for v, u in zip(ver.speeds, unv.speeds, strict=True)]
            best = max(ver.speeds) / max(unv.speeds)
            rows.append(
                (
                    "mount verified ÷ unverified (best ÷ best)",
                    f"{best:.2f}× (per round {min(ratios):.2f}–{max(ratios):.2f}×)",
                )
            )
            cpu = " / ".join(f"{min(r.cpu_per_gib):.2f}" for r in (ver, unv))
            rows.append(("mount server CPU s per GiB, verified / unverified", cpu))
            client = " / ".join(f"{min(r.client_per_gib):.2f}" for r in (ver, unv))
            rows.append(("mount reader's CPU s per GiB, verified / unverified", client))
            u = min(unv.cpu_per_gib) + min(unv.client_per_gib)
            rows.append(ceiling(u, h, best))
    print(f"| {args.size_mib} MiB file, first read after open | result |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
