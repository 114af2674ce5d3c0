"""Manifests: peak memory for a huge tree, and one read against two, by hand (not CI).

    .venv/bin/python bench/manifest.py [--scale 0.1] [--scratch DIR] [--only memory|throughput]
    .venv/bin/python bench/manifest.py --scale 1      # the issue's figures (several minutes)

``memory``: a tree of ``1,000,000 x scale`` empty files (1,000 per directory) and
``pyverity manifest create``'s peak RSS (the largest process, from ``wait4``'s rusage).

``throughput``: ``100,000 x scale`` small files (1-8 KiB) and four files of ``1 GiB x scale``,
each measured on a cold page cache (``sync; echo 3 > /proc/sys/vm/drop_caches`` before each
run, root only) with

* ``manifest``: ``pyverity manifest create`` (fs-verity digest and sha256 in one read);
* ``sign -r``: ``pyverity sign -r`` (fs-verity digest, sign, write attributes);
* ``two passes``: pyverity's own fs-verity digest of every file (``hash_file``, the pool
  ``sign -r`` uses), then the cache dropped, then its whole-file sha256 (``whole_file_hash``):
  what a manifest would cost without the one-read path, on a tree larger than the page cache.

Figures: wall time, files/s, GB/s of file data, CPU seconds, and bytes read from storage
(``ru_inblock`` x 512 of the run and every process it waited for). The machine is shared:
each line carries the load average it started at.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyverity.fs.openfile import FileRef

PYVERITY = [sys.executable, "-m", "pyverity.cli"]


def _drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _run(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``; wall seconds, CPU seconds, peak RSS (MiB) and storage bytes read."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss / 1024,
        "read": usage.ru_inblock * 512.0,
        "load": load,
    }


def _key(scratch: Path) -> list[str]:
    keys = scratch / "keys"
    if not keys.exists():
        subprocess.run(
            [*PYVERITY, "key", "generate", "--type", "rsa", "--out", str(keys)],
            check=True,
            capture_output=True,
        )
    return ["--key", str(keys / "ima.key"), "--cert", str(keys / "ima.pem")]


def _make_files(root: Path, count: int, size_of: functools.partial[int] | None) -> int:
    total = 0
    for i in range(count):
        d = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = size_of(i) if size_of is not None else 0
        fd = os.open(d / f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if size:
            os.write(fd, os.urandom(size))
        os.close(fd)
        total += size
    return total


def _small_size(i: int) -> int:
    return 1024 + (i * 2654435761) % 7168


def _check_space(scratch: Path, need: int) -> None:
    free = shutil.disk_usage(scratch).free
    print(f"# scratch {scratch}: {free / 2**30:.1f} GiB free, need ~{need / 2**30:.1f} GiB")
    if free < need * 1.2:
        raise SystemExit("not enough free space; use --scale or --scratch")


def _line(what: str, files: int, nbytes: int, r: dict[str, float]) -> None:
    print(
        f"{what:<12} {r['wall']:8.2f} s  {files / r['wall']:10,.0f} files/s"
        f"  {nbytes / r['wall'] / 1e9:6.2f} GB/s  cpu {r['cpu']:7.2f} s"
        f"  read {r['read'] / 1e9:7.3f} GB  rss {r['rss']:6.1f} MiB  (load {r['load']:.2f})",
        flush=True,
    )


def memory(scratch: Path, scale: float, jobs: int) -> None:
    n = int(1_000_000 * scale)
    tree = scratch / "many"
    _check_space(scratch, n * 4096 + n * 400)
    t = time.perf_counter()
    _make_files(tree, n, None)
    print(f"# made {n:,} empty files in {time.perf_counter() - t:.1f} s")
    out = scratch / "many.jsonl"
    r = _run(
        [
            *PYVERITY,
            "manifest",
            "create",
            "--jobs",
            str(jobs),
            "-o",
            str(out),
            *_key(scratch),
            str(tree),
        ]
    )
    print(f"memory: {n:,} files, manifest {out.stat().st_size / 2**20:.0f} MiB")
    _line("manifest", n, 0, r)
    print(f"peak RSS {r['rss']:.1f} MiB (target < 200 MiB)")


def _two_passes(tree: Path, jobs: int) -> dict[str, float]:
    first = _run([sys.executable, __file__, "_pass", "verity", str(tree), str(jobs)])
    _drop_caches()
    second = _run([sys.executable, __file__, "_pass", "sha256", str(tree), str(jobs)])
    return {k: first[k] + second[k] if k != "rss" else max(first[k], second[k]) for k in first}


def throughput(scratch: Path, scale: float, jobs: int, drop: bool, only: str | None) -> None:
    n_small = int(100_000 * scale) if only != "big" else 0
    big_size = int((1 << 30) * scale) if only != "small" else 0
    _check_space(scratch, n_small * 8192 + 4 * big_size)
    key = _key(scratch)
    sets = []
    small = scratch / "small"
    sets.append(
        ("small", small, n_small, _make_files(small, n_small, functools.partial(_small_size)))
    )
    big = scratch / "big"
    big.mkdir()
    for i in range(4):
        with (big / f"big{i}").open("wb") as f:
            left = big_size
            while left:
                f.write(os.urandom(min(left, 1 << 24)))
                left -= min(left, 1 << 24)
    sets.append(("big", big, 4, 4 * big_size))
    for name, tree, files, nbytes in sets:
        if not files or not nbytes:
            continue
        print(f"{name}: {files:,} files, {nbytes / 1e9:.2f} GB, jobs {jobs}, cold cache {drop}")
        runs = {
            "manifest": [
                *PYVERITY,
                "manifest",
                "create",
                "--jobs",
                str(jobs),
                "-o",
                str(scratch / f"{name}.jsonl"),
                *key,
                str(tree),
            ],
            "sign -r": [
                *PYVERITY,
                "sign",
                "-r",
                "--jobs",
                str(jobs),
                "--xattr-user",
                *key,
                str(tree),
            ],
        }
        for what, cmd in runs.items():
            if drop:
                _drop_caches()
            _line(what, files, nbytes, _run(cmd))
        if drop:
            _drop_caches()
        _line("two passes", files, nbytes, _two_passes(tree, jobs))


def _pass(kind: str, tree: str, jobs: int) -> None:
    """One pass of the two-pass baseline over every file of ``tree`` (runs as a subprocess)."""
    from pyverity.protect.batch import expand_paths, map_files
    from pyverity.protect.sign import hash_file

    files = expand_paths([tree], recursive=True)
    fn = functools.partial(hash_file, jobs=1) if kind == "verity" else _sha256
    for out in map_files(fn, files, jobs=jobs):
        if out.failure is not None:
            raise SystemExit(f"{out.path}: {out.failure.message}")


def _sha256(path: FileRef) -> bytes:
    from pyverity.format.ima import algo_by_name
    from pyverity.protect.sign import whole_file_hash

    fd = path.open()
    try:
        return whole_file_hash(fd, algo_by_name("sha256"))
    finally:
        os.close(fd)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "_pass":
        _pass(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=0.1, help="1 = the issue's sizes (default 0.1)")
    p.add_argument("--scratch", help="directory on a real disk (default: a temp dir in /var/tmp)")
    p.add_argument("--only", choices=("memory", "throughput", "small", "big"))
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--warm", action="store_true", help="do not drop the page cache")
    p.add_argument("--keep", action="store_true", help="keep the scratch tree")
    args = p.parse_args()
    base = Path(args.scratch or "/var/tmp")
    scratch = Path(tempfile.mkdtemp(prefix="pyverity-bench-manifest-", dir=base))
    drop = not args.warm and os.geteuid() == 0
    print(f"# {' '.join(sys.argv)}; cpus {os.cpu_count()}, load {os.getloadavg()}")
    try:
        if args.only in (None, "memory"):
            memory(scratch, args.scale, args.jobs)
        if args.only in (None, "throughput", "small", "big"):
            throughput(scratch, args.scale, args.jobs, drop, args.only)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
