from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.errors import FileChangedError
from pyverity.format.hashalg import SHA512
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.hashing import build_tree
from pyverity.hashing.resumable import Stopped, build_from_offset


@pytest.mark.parametrize(
    ("size", "params"),
    [
        (0, TreeParams()),
        (4096, TreeParams()),
        (3 << 20 | 17, TreeParams()),
        (2 << 20, TreeParams(SHA512, 1024, b"s")),
    ],
)
def test_stop_and_resume_gives_the_same_tree(tmp_path: Path, size: int, params: TreeParams) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size))
    expected = build_tree(f, params)
    fd = os.open(f, os.O_RDONLY)
    try:
        snap = identity(os.fstat(fd))
        saved: list[tuple[int, bytes]] = []
        calls = iter([None, "yield"])
        with pytest.raises(Stopped) if size > 1 << 20 else _Nothing():
            build_from_offset(
                fd,
                params,
                snap,
                checkpoint_seconds=0,
                on_checkpoint=lambda off, leaves: saved.append((off, leaves)),
                poll=lambda: next(calls, None),
            )
        offset = saved[-1][0] if saved else 0
        leaves = b"".join(leaf for _, leaf in saved)
        assert len(leaves) == offset // params.block_size * params.digest_size
        got = build_from_offset(fd, params, snap, offset=offset, leaves=leaves)
    finally:
        os.close(fd)
    assert got == expected


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_file_changed_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(1 << 21))
    fd = os.open(f, os.O_RDONLY)
    try:
        snap = identity(os.fstat(fd))
        with f.open("ab") as w:
            w.write(b"x")
        with pytest.raises(FileChangedError):
            build_from_offset(fd, TreeParams(), snap)
    finally:
        os.close(fd)


def test_cancel_stops_at_a_block_boundary(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(4 << 20))
    fd = os.open(f, os.O_RDONLY)
    try:
        calls = iter([None, None, "cancel"])
        with pytest.raises(Stopped) as info:
            build_from_offset(fd, TreeParams(), identity(os.fstat(fd)), poll=lambda: next(calls))
    finally:
        os.close(fd)
    assert info.value.why == "cancel"
    assert info.value.offset == 2 << 20


def test_threads_give_the_same_tree(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom((5 << 20) + 4097))
    fd = os.open(f, os.O_RDONLY)
    try:
        got = build_from_offset(fd, TreeParams(), identity(os.fstat(fd)), threads=3)
    finally:
        os.close(fd)
    assert got == build_tree(f)
