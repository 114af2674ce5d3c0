"""Atomic, durable publication: the whole new content or the old one, never a part."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyverity.fs.atomic import publish_bytes, write_all


def test_publish_replaces_with_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        publish_bytes(target, b"new content", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    publish_bytes(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        publish_bytes(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        publish_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_all_writes_everything(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        write_all(w, b"x" * 1000)
        assert os.read(r, 2000) == b"x" * 1000
    finally:
        os.close(r)
        os.close(w)
