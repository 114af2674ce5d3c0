"""Property tests for verified reads: exact bytes for any read pattern, corruption always caught."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.format.hashalg import SHA256, SHA512
from pyverity.format.params import TreeParams
from pyverity.hashing.api import build_tree
from pyverity.reader import BlockVerifier, MemoryTree, VerifiedRawIO

params_st = st.builds(
    TreeParams,
    st.sampled_from([SHA256, SHA512]),
    st.sampled_from([1024, 2048, 4096]),
    st.binary(max_size=32),
)


def _reader(data: bytes, params: TreeParams, tree: bytes | None = None) -> VerifiedRawIO:
    built = build_tree(io.BytesIO(data), params)
    fd, path = tempfile.mkstemp()
    Path(path).unlink()
    os.write(fd, data)
    verifier = BlockVerifier(built.descriptor, MemoryTree(built.tree if tree is None else tree))
    return VerifiedRawIO(fd, verifier, name=path, chunk=3 * params.block_size)


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=70000),
    params=params_st,
    ops=st.lists(st.tuples(st.integers(0, 80000), st.integers(0, 20000)), max_size=12),
)
def test_random_reads_return_exact_bytes(
    data: bytes, params: TreeParams, ops: list[tuple[int, int]]
) -> None:
    with io.BufferedReader(_reader(data, params), buffer_size=params.block_size) as f:
        for offset, size in ops:
            f.seek(offset)
            assert f.read(size) == data[offset : offset + size]
            assert f.tell() == min(offset + size, max(offset, len(data)))
        f.seek(0)
        assert f.read() == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=60000),
    params=params_st,
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
    in_tree=st.booleans(),
)
def test_any_flipped_bit_is_detected(
    data: bytes, params: TreeParams, where: float, bit: int, in_tree: bool
) -> None:
    built = build_tree(io.BytesIO(data), params)
    tree = built.tree or b""
    bs = params.block_size
    if in_tree and tree:
        bad_tree = bytearray(tree)
        pos = int(where * len(tree))
        bad_tree[pos] ^= 1 << bit
        raw = _reader(data, params, bytes(bad_tree))
    else:
        bad = bytearray(data)
        pos = int(where * len(data))
        bad[pos] ^= 1 << bit
        raw = _reader(data, params)
        os.pwrite(raw._fd, bytes(bad), 0)  # the file changed after it was protected
    with raw:
        errnos: list[int | None] = []
        for block in range(-(-len(data) // bs)):
            try:
                got = raw.pread(bs, block * bs)
            except OSError as e:
                errnos.append(e.errno)
            else:
                assert got == data[block * bs : (block + 1) * bs]
        assert set(errnos) <= {errno.EIO}
        # A flipped data bit fails its block; a flipped tree bit fails at least one block
        # (every byte of the tree, padding included, is covered by a hash).
        assert len(errnos) >= 1
