"""Measurement-list reading rate and memory, by hand (not CI).

    .venv/bin/python bench/log.py [--size-mib 64] [--dir DIR] [--keep]

Generates a list of about ``--size-mib`` MiB of ``ima-sigv2`` records (names of 40-90
bytes, a 256-byte signature field: about 400 bytes a record) with its ``LIST.pcrs``, then runs
``pyverity log show``, ``log verify`` and ``log pcrs --replay`` on it, each in its own
process with stdout to /dev/null, and prints for each the wall and CPU time, MiB and records
per CPU-second (on a shared machine wall time measures the load) and the process's peak RSS
(``wait4``'s ``ru_maxrss``; the parent is small, so it is the command's own). The list is in
the page cache: this measures the parser, not the disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.measure.files import pcr_path
from pyverity.measure.pcr import PcrReplay

MIB = 1 << 20


def generate(path: Path, size: int) -> int:
    """Write about ``size`` bytes of records to ``path`` and its PCR values; the count."""
    distinct = [
        MeasurementRecord.for_file(
            "ima-sigv2",
            DigestField("sha256", i.to_bytes(4, "little") * 8, "verity"),
            f"/srv/data/{'d' * (i % 50)}/file-{i:06d}",
            b"\x03\x02" + bytes(254),
        )
        for i in range(997)
    ]
    blobs = [r.to_bytes() for r in distinct]
    replay = PcrReplay()
    written = count = 0
    with path.open("wb", buffering=4 * MIB) as f:
        while written < size:
            i = count % len(distinct)
            f.write(blobs[i])
            replay.extend(distinct[i], size=len(blobs[i]))
            written += len(blobs[i])
            count += 1
    pcr_path(path).write_text(replay.values().to_json())
    return count


def run(argv: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, exit code, peak RSS in KiB) of ``pyverity ARGV``."""
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pyverity.cli", *argv], stdout=null)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the list")
    ap.add_argument("--keep", action="store_true", help="keep the generated list")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "list"
        t0 = time.perf_counter()
        count = generate(path, args.size_mib * MIB)
        size = path.stat().st_size
        print(
            f"generated {size / MIB:.0f} MiB, {count} records in {time.perf_counter() - t0:.1f} s"
        )
        cpu = platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                model = (ln for ln in info if ln.startswith("model name"))
                cpu = next(model).split(":", 1)[1].strip()
        except (OSError, StopIteration):
            pass
        print(f"CPU: {cpu}; Python {platform.python_version()}")
        for argv in (["log", "show"], ["log", "verify"], ["log", "pcrs", "--replay"]):
            wall, cpu_s, rc, rss = run([*argv, str(path)])
            print(
                f"  {' '.join(argv):<17} {wall:6.1f} s ({cpu_s:6.1f} s CPU)  "
                f"{size / MIB / cpu_s:6.1f} MiB/CPU-s  {count / cpu_s:8.0f} records/CPU-s  "
                f"peak RSS {rss / 1024:4.0f} MiB  exit {rc}"
            )
        if args.keep:
            kept = Path.cwd() / "bench-list"
            path.rename(kept)
            pcr_path(path).rename(pcr_path(kept))
            print(f"kept {kept}")


if __name__ == "__main__":
    main()
