"""Verified read throughput, by hand (not CI). Needs root for the mount part.

    .venv/bin/python bench/read.py [--size-mib 1024] [--dir DIR] [--no-mount]

Every figure is for the *first* read after an open: no data block has been verified yet, so
every block read is hashed and checked (the tree comes from memory, as it would from the cache;
the file's pages are in the page cache, so the disk is not what is measured). Reads are 1 MiB:

* API: ``pyverity.open`` + sequential reads, against plain ``os.pread`` of the same file;
* mount: the same through ``pyverity mount`` (``--no-keep-cache``, so each open starts cold),
  relative to the same mount with verification off (``--unsafe-no-verify``);
* random 4 KiB reads per second through the API (fresh open);
* 1 vs 2 concurrent readers (processes, each its own open) through the API.
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
from dataclasses import replace
from pathlib import Path

import pyverity
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.hashing.api import build_tree
from pyverity.hashing.runhash import accelerator
from pyverity.reader import ReaderOptions
from pyverity.reader.pool import HashPool
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


def api_sequential(path: Path, options: ReaderOptions) -> float:
    t0 = time.perf_counter()
    with pyverity.open(path, options=options, buffering=MIB) as f:
        n = read_all(f.raw)
    return n / (time.perf_counter() - t0)


def plain_sequential(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    t0 = time.perf_counter()
    n = off = 0
    while data := os.pread(fd, MIB, off):
        n += len(data)
        off += len(data)
    os.close(fd)
    return n / (time.perf_counter() - t0)


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


def _is_mounted(mnt: Path) -> bool:
    return any(line.split()[1] == str(mnt) for line in Path("/proc/self/mounts").open())


def mount_sequential(src: Path, mnt: Path, name: str, *extra: str) -> float:
    mnt.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pyverity.cli", "mount", "-f", "--no-keep-cache", *extra]
    proc = subprocess.Popen([*cmd, str(src), str(mnt)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mount did not come up")
            time.sleep(0.05)
        with (mnt / name).open("rb"):
            pass  # first open builds the tree into the mount's memory store (not timed)
        best = 0.0
        for _ in range(3):  # best of 3: the machine is shared
            t0 = time.perf_counter()
            with (mnt / name).open("rb", buffering=0) as f:
                n = read_all(f)
            best = max(best, n / (time.perf_counter() - t0))
        return best
    finally:
        proc.terminate()
        proc.wait(30)
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--no-mount", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pyverity-bench-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        path = src / "big"
        options = make_file(path, args.size_mib * MIB)
        plain_sequential(path)  # warm the page cache
        rows: list[tuple[str, str]] = []
        accel = "SHA-NI accelerator" if accelerator() is not None else "hashlib"
        rows.append(("hashing", accel))
        rows.append(("plain pread, 1 MiB", f"{plain_sequential(path) / 1e9:.2f} GB/s"))
        seq = max(api_sequential(path, options) for _ in range(3))
        rows.append(("API verified sequential, 1 MiB reads", f"{seq / 1e9:.2f} GB/s"))
        rnd = max(api_random(path, options) for _ in range(3))
        rows.append(("API random 4 KiB reads", f"{rnd:,.0f} reads/s"))
        one = max(api_concurrent(path, options, 1) for _ in range(3))
        two = max(api_concurrent(path, options, 2) for _ in range(3))
        rows.append(
            ("API 1 reader / 2 readers (aggregate)", f"{one / 1e9:.2f} / {two / 1e9:.2f} GB/s")
        )
        if not args.no_mount and os.geteuid() == 0:
            verified = mount_sequential(src, Path(tmp) / "mnt", "big")
            baseline = mount_sequential(src, Path(tmp) / "mnt", "big", "--unsafe-no-verify")
            rows.append(
                ("mount verified / unverified", f"{verified / 1e9:.2f} / {baseline / 1e9:.2f} GB/s")
            )
            rows.append(("mount verified ÷ unverified", f"{verified / baseline:.2f}×"))
    print(f"| {args.size_mib} MiB file, first read after open | result |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
