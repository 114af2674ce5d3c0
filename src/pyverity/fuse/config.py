"""What a mount is asked to do; built by the CLI, passed to the filesystem (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyverity.reader.options import ReaderOptions

__all__ = ["MountConfig"]


@dataclass(frozen=True)
class MountConfig:
    source: Path
    mountpoint: Path
    #: Pass writes through (a written protected file becomes STALE until signed again).
    rw: bool = False
    #: fs-verity and appraisal (policy, keyring, enforce or log), tree store, measurement list.
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    #: Keep verified pages in the kernel's page cache while the backing file is unchanged.
    keep_cache: bool = True
    #: Readahead asked of the kernel for the mount (KiB; 0 keeps FUSE's 128).
    readahead_kb: int = 4096
    #: libfuse worker threads at most (0: one per CPU this process may run on, at least 2).
    #: Reads are CPU-bound (copy, hash, reply): more workers than cores only share the cores
    #: (and the GIL) between reads, so each finishes later. The cost: an open that builds a
    #: tree or waits for the daemon holds a worker meanwhile.
    threads: int = 0
    #: ``--unsafe-no-verify``: fs-verity off — every file served without verification,
    #: appraisal or measurement (the baseline of ``bench/read.py``). Nothing else turns
    #: fs-verity off: ``--mode log|off`` keep it.
    unsafe_no_verify: bool = False
