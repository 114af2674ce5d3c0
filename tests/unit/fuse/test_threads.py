"""How many libfuse worker threads a mount asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyverity.fuse import mount
from pyverity.fuse.config import MountConfig


def _config(threads: int = 0) -> MountConfig:
    return MountConfig(source=Path("/src"), mountpoint=Path("/mnt"), threads=threads)


def test_one_worker_per_usable_cpu_at_least_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount.os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})
    assert mount.worker_threads(_config(), (3, 14)) == 4
    monkeypatch.setattr(mount.os, "sched_getaffinity", lambda pid: {3})
    assert mount.worker_threads(_config(), (3, 14)) == 2


def test_configured_count_wins() -> None:
    assert mount.worker_threads(_config(threads=7), (3, 12)) == 7


def test_libfuse_without_max_threads_is_not_told() -> None:
    # libfuse before 3.12 refuses the whole mount for an option it does not know.
    assert mount.worker_threads(_config(threads=7), (3, 11)) is None
    assert mount.worker_threads(_config(), (3, 10)) is None
