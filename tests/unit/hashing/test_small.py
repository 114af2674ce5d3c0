"""hashing.small: the one-pread build equals the reference builder, and refuses a changed file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.errors import FileChangedError
from pyverity.format.hashalg import by_name
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.hashing.reference import build_from_stream
from pyverity.hashing.small import SMALL_FILE_MAX, build_small

PARAMS = [TreeParams(), TreeParams(by_name("sha512"), 1024, b"salt"), TreeParams(block_size=65536)]


SIZES = [0, 1, 1023, 4096, 4097, 40 * 1024, 128 * 4096 + 1, SMALL_FILE_MAX]


@pytest.mark.parametrize("params", PARAMS, ids=["sha256-4k", "sha512-1k-salt", "sha256-64k"])
@pytest.mark.parametrize("size", SIZES)
def test_equals_the_reference(tmp_path: Path, params: TreeParams, size: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size))
    fd = os.open(f, os.O_RDONLY)
    try:
        got = build_small(fd, params, identity(os.fstat(fd)))
    finally:
        os.close(fd)
    with f.open("rb") as stream:
        assert got == build_from_stream(stream, params, keep_tree=True)


def test_a_file_that_is_not_its_snapshot_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    fd = os.open(f, os.O_RDWR)
    try:
        snap = identity(os.fstat(fd))
        os.pwrite(fd, b"more", 5000)
        with pytest.raises(FileChangedError):
            build_small(fd, TreeParams(), snap)
    finally:
        os.close(fd)
