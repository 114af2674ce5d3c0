"""What a mount is asked to do; built by the CLI, passed to the filesystem (no globals)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pyverity.reader.appraise import ReaderOptions

__all__ = ["AppraiseMode", "MountConfig"]


class AppraiseMode(enum.Enum):
    """What a failed appraisal does: deny (EACCES), or log it and serve the file unverified."""

    ENFORCE = "enforce"
    LOG = "log"


@dataclass(frozen=True)
class MountConfig:
    source: Path
    mountpoint: Path
    #: Pass writes through (a written protected file becomes STALE until signed again).
    rw: bool = False
    mode: AppraiseMode = AppraiseMode.ENFORCE
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    #: Keep verified pages in the kernel's page cache while the backing file is unchanged.
    keep_cache: bool = True
    #: Bench only: serve every file without verification (the baseline of ``bench/read.py``).
    unsafe_no_verify: bool = False
