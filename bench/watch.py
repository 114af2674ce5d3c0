#!/usr/bin/env python3
"""Benchmark the two kernel watchers on one big tree (issue 11; run by hand, as root).

A tree of ``--dirs`` directories and ``--files`` empty files is made in a scratch directory on
a real disk (never a tmpfs), then each watcher runs in its own process:

- **inotify** (:class:`pyverity.fs.inotify.InotifyWatch`): a walk that adds one watch per
  directory, as the daemon's watcher does at start-up;
- **fanotify** (:class:`pyverity.fs.fanotify.FanotifyWatch`): one ``FAN_MARK_FILESYSTEM``
  mark on the scratch directory's filesystem. (The daemon still walks the tree once at
  start-up to scan the files; the inotify run also times a walk alone, on a warm cache.)

For each: set-up time, the process's RSS growth and peak, the watches or marks held (and the
``fs.inotify.max_user_watches`` the tree needs), and the latency from a ``setxattr`` on a random
file to its ATTR event being read and resolved to the path (median, p99, max of ``--samples``;
writer and reader are the same process, so this is delivery + read + parse + path). The
fanotify mark sees the whole filesystem: events from other processes are counted as noise.

    sudo .venv/bin/python bench/watch.py                                 # 10k dirs, 100k files
    sudo .venv/bin/python bench/watch.py --dirs 100000 --files 1000000   # the issue's figure
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))

from pyverity.fs.fanotify import FanotifyWatch  # noqa: E402
from pyverity.fs.inotify import InotifyWatch  # noqa: E402
from pyverity.fs.watch import Change, Watch, filter_to_roots  # noqa: E402

FANOUT = 316  # top-level directories, each holding about dirs / FANOUT subdirectories


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_tree(top: Path, dirs: int, files: int) -> list[str]:
    """``dirs`` directories in two levels, ``files`` empty files spread over them."""
    paths: list[str] = []
    tops = min(FANOUT, dirs)
    for i in range(dirs):
        d = top / f"t{i % tops}" if i < tops else top / f"t{i % tops}" / f"d{i}"
        d.mkdir()
        paths.append(str(d))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for j in range(files):
        os.close(os.open(f"{paths[j % dirs]}/f{j}", flags, 0o644))
    return paths


def walk_dirs(top: str) -> list[str]:
    """Every directory under ``top`` (``top`` first), symlinks not followed."""
    out, stack = [top], [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    out.append(e.path)
                    stack.append(e.path)
    return out


def child(kind: str, top: str, files: list[str]) -> dict[str, object]:
    walk = 0.0
    if kind == "inotify":  # a first walk, timed alone (and warming the caches for the next)
        t0 = time.perf_counter()
        walk_dirs(top)
        walk = time.perf_counter() - t0
    rss0 = status_kib("VmRSS")
    t0 = time.perf_counter()
    w: Watch
    if kind == "inotify":
        w = InotifyWatch()
        for d in walk_dirs(top):
            w.watch_dir(d)
    else:
        w = FanotifyWatch()
        w.add_root(top)
    setup = time.perf_counter() - t0
    rss1 = status_kib("VmRSS")
    lat: list[float] = []
    noise = 0
    roots = (top,)
    for i, f in enumerate(files):
        start = time.perf_counter()
        os.setxattr(f, "user.bench", str(i).encode())
        deadline = time.monotonic() + 5
        seen = False
        while not seen:
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind}: no ATTR event for {f} within 5 s")
            select.select([w.fd], [], [], 1)
            for ev in w.read():
                if ev.change is Change.ATTR and ev.path == f:
                    lat.append(time.perf_counter() - start)
                    seen = True
                elif not list(filter_to_roots([ev], roots)):
                    noise += 1
    lat.sort()
    result: dict[str, object] = {
        "setup_s": setup,
        "walk_s": walk,
        "watches": w.watch_count,
        "rss_growth_kib": rss1 - rss0,
        "peak_kib": status_kib("VmHWM"),
        "lat_median_us": statistics.median(lat) * 1e6,
        "lat_p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
        "lat_max_us": lat[-1] * 1e6,
        "noise_events": noise,
    }
    w.close()
    return result


def run_child(kind: str, top: Path, samples: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--top",
            str(top),
            "--sample-list",
            str(samples),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=200, help="setxattr latency samples")
    ap.add_argument("--scratch", default="/var/tmp", help="parent of the scratch directory")
    ap.add_argument("--child", choices=("inotify", "fanotify"), help=argparse.SUPPRESS)
    ap.add_argument("--top", help=argparse.SUPPRESS)
    ap.add_argument("--sample-list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        files = json.loads(Path(args.sample_list).read_text())
        print(json.dumps(child(args.child, args.top, files)))
        return
    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", args.scratch], check=True, capture_output=True, text=True
    ).stdout.strip()
    if fstype == "tmpfs":
        raise SystemExit(f"{args.scratch} is a tmpfs: pass --scratch on a real disk")
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    if args.dirs + 1 > limit:
        raise SystemExit(f"{args.dirs + 1} watches needed, fs.inotify.max_user_watches={limit}")
    base = Path(tempfile.mkdtemp(prefix="pyverity-watch-bench-", dir=args.scratch))
    try:
        t0 = time.perf_counter()
        tree = base / "tree"
        tree.mkdir()
        dirs = make_tree(tree, args.dirs, args.files)
        made = time.perf_counter() - t0
        rng = random.Random(1)
        picks = rng.sample(range(args.files), min(args.samples, args.files))
        samples = base / "samples.json"
        samples.write_text(json.dumps([f"{dirs[j % args.dirs]}/f{j}" for j in picks]))
        print(f"tree: {args.dirs:,} dirs, {args.files:,} files on {fstype} "
              f"({args.scratch}), made in {made:.1f} s; kernel {os.uname().release}")  # fmt: skip
        for kind in ("inotify", "fanotify"):
            r = run_child(kind, tree, samples)
            held = "watches" if kind == "inotify" else "marks"
            print(
                f"{kind:9s} set-up {r['setup_s']:7.3f} s  {held} {r['watches']:>7,}  "
                + (f"(the walk alone: {r['walk_s']:.3f} s)  " if kind == "inotify" else "")
                + f"RSS +{r['rss_growth_kib']:,} KiB (peak {r['peak_kib']:,} KiB)  "
                f"setxattr->event median {r['lat_median_us']:.0f} us, "
                f"p99 {r['lat_p99_us']:.0f} us, max {r['lat_max_us']:.0f} us  "
                f"(other events read: {r['noise_events']})"
            )
        print(
            f"inotify needs fs.inotify.max_user_watches >= {args.dirs + 1:,} (now {limit:,}); "
            "the kernel also keeps a mark and pins the inode of every watched directory, "
            "memory the RSS above does not show"
        )
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
