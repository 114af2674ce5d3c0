"""Shared by the tests that call the filesystem operations directly (no kernel mount)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class FileInfo:
    """Stands in for libfuse's ``fuse_file_info``."""

    flags: int = os.O_RDONLY
    fh: int = 0
    keep_cache: int = 0
    direct_io: int = 0
