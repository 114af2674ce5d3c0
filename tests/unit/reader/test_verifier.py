"""The §8.2 walk: data and tree blocks checked up to the first verified tree block."""

from __future__ import annotations

import errno
import io
import os

import pytest

from pyverity.format.hashalg import SHA512
from pyverity.format.params import TreeParams
from pyverity.hashing.api import build_tree
from pyverity.reader import BlockVerifier, MemoryTree, VerificationError
from pyverity.reader.hashpool import HashPool


class CountingTree(MemoryTree):
    def __init__(self, tree: bytes) -> None:
        super().__init__(tree)
        self.reads: list[int] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append(offset)
        return super().read(offset, length)


def _setup(
    data: bytes, params: TreeParams | None = None
) -> tuple[BlockVerifier, CountingTree, bytes]:
    params = params or TreeParams()
    tree = build_tree(io.BytesIO(data), params)
    source = CountingTree(tree.tree or b"")
    bs = params.block_size
    padded = data + bytes(-len(data) % bs)
    return BlockVerifier(tree.descriptor, source, name="f"), source, padded


@pytest.mark.parametrize(
    "params",
    [TreeParams(), TreeParams(block_size=1024, salt=b"salty"), TreeParams(SHA512, 4096)],
)
def test_all_blocks_verify(params: TreeParams) -> None:
    data = os.urandom(params.block_size * 1100 + 17)
    v, _, padded = _setup(data, params)
    bs = params.block_size
    v.verify_blocks(0, padded)
    for i in (0, 5, v.num_data_blocks - 1):
        v.verify_blocks(i, padded[i * bs : (i + 1) * bs])


def test_single_block_checks_root() -> None:
    v, source, padded = _setup(b"a")
    v.verify_blocks(0, padded)
    assert source.reads == []
    with pytest.raises(VerificationError) as e:
        v.verify_blocks(0, b"b" + padded[1:])
    assert e.value.errno == errno.EIO
    assert e.value.level == -1
    assert e.value.block == 0


def test_bitmap_stops_the_climb() -> None:
    v, source, padded = _setup(os.urandom(4096 * 300))  # levels [3, 1]
    v.verify_blocks(0, padded[:4096])
    assert len(source.reads) == 2  # level-0 block 0 and the root block
    source.reads.clear()
    v.verify_blocks(1, padded[4096:8192])  # same level-0 block: no tree read
    assert source.reads == []
    v.verify_blocks(200, padded[200 * 4096 : 201 * 4096])  # new leaf, root already verified
    assert len(source.reads) == 1
    assert v.verified_tree_blocks() == 3


def test_corrupt_data_names_block() -> None:
    v, _, padded = _setup(os.urandom(4096 * 10))
    bad = bytearray(padded)
    bad[7 * 4096 + 9] ^= 1
    with pytest.raises(VerificationError, match="data block 7 at offset 28672") as e:
        v.verify_blocks(0, bad)
    assert e.value.block == 7
    v.verify_blocks(0, padded[: 7 * 4096])


def test_corrupt_tree_block_fails_only_its_blocks() -> None:
    data = os.urandom(4096 * 300)
    tree = build_tree(io.BytesIO(data), TreeParams())
    raw = bytearray(tree.tree or b"")
    # Layout: root block first, then 3 level-0 blocks; corrupt level-0 block 1.
    raw[2 * 4096 + 100] ^= 0x40
    v = BlockVerifier(tree.descriptor, MemoryTree(bytes(raw)), name="f")
    v.verify_blocks(0, data[:4096])
    v.verify_blocks(299, data[299 * 4096 :])
    with pytest.raises(VerificationError, match="level 0") as e:
        v.verify_blocks(128, data[128 * 4096 : 129 * 4096])
    assert e.value.level == 0
    assert e.value.block == 1


def test_short_tree_is_eio() -> None:
    data = os.urandom(4096 * 300)
    tree = build_tree(io.BytesIO(data), TreeParams())
    v = BlockVerifier(tree.descriptor, MemoryTree((tree.tree or b"")[:4096]), name="f")
    with pytest.raises(VerificationError):
        v.verify_blocks(0, data[:4096])


def test_tail_past_eof_must_be_zero() -> None:
    v, _, padded = _setup(b"x" * 5000)
    bad = padded[:-1] + b"\x01"
    with pytest.raises(VerificationError):
        v.verify_blocks(1, bad[4096:])


def test_bad_arguments() -> None:
    v, _, padded = _setup(b"x" * 5000)
    with pytest.raises(ValueError, match="whole number"):
        v.verify_blocks(0, padded[:100])
    with pytest.raises(ValueError, match="beyond"):
        v.verify_blocks(1, padded)


def test_hash_pool_splits_long_runs_and_still_names_the_block() -> None:
    data = os.urandom(4096 * 1000)
    tree = build_tree(io.BytesIO(data), TreeParams())
    pool = HashPool(3)
    try:
        v = BlockVerifier(tree.descriptor, MemoryTree(tree.tree or b""), name="f", pool=pool)
        v.verify_blocks(0, data)
        bad = bytearray(data)
        bad[900 * 4096] ^= 1  # in the last of the three parts
        with pytest.raises(VerificationError, match="data block 900"):
            v.verify_blocks(0, bad)
        # 100 blocks in 3 parts of 34, 34 and 32 blocks, results joined in order:
        first_bytes = pool.hash(lambda b: bytes(b[:1]), data[: 4096 * 100], 4096)
        assert first_bytes == bytes([data[0], data[34 * 4096], data[68 * 4096]])
    finally:
        pool.close()
