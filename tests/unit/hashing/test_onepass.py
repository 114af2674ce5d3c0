"""hashing.onepass: one read gives build_tree's descriptor and hashlib's whole-file hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pyverity.errors import FileChangedError
from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.hashing.onepass import hash_once
from pyverity.hashing.runhash import accelerator

PARAMS = [
    TreeParams(),
    TreeParams(hashalg.SHA512, 4096),
    TreeParams(hashalg.SHA256, 1024, b"salty"),
    TreeParams(hashalg.SHA256, 65536),
]
SIZES = [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 3 * (1 << 20) + 17]
ACCEL = [False] + ([None] if accelerator() is not None else [])


@pytest.mark.parametrize("accel", ACCEL)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p.hash_alg.name}-{p.block_size}")
@pytest.mark.parametrize("size", SIZES)
def test_same_as_build_tree_and_hashlib(
    tmp_path: Path, size: int, params: TreeParams, accel: bool | None
) -> None:
    data = os.urandom(size)
    f = tmp_path / "f"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        got = hash_once(fd, params, ("sha256", "sha384", "sha512"), accel=accel, chunk_size=65536)
    finally:
        os.close(fd)
    assert got.descriptor == build_tree(f, params, keep_tree=False).descriptor
    assert got.hashes == tuple(
        (n, hashlib.new(n, data).digest()) for n in ("sha256", "sha384", "sha512")
    )
    assert got.file_hash("sha384") == hashlib.sha384(data).digest()


def test_file_changed_while_read_raises(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(1 << 20))
    fd = os.open(f, os.O_RDONLY)

    def grow(done: int) -> None:
        with f.open("ab") as w:
            w.write(b"more")

    try:
        with pytest.raises(FileChangedError):
            hash_once(fd, TreeParams(), ("sha256",), chunk_size=4096, progress=grow)
    finally:
        os.close(fd)
