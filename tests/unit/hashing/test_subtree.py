"""hashing.subtree: subtree roots folded by the client equal build_tree's digest."""

from __future__ import annotations

import io
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.format.hashalg import by_name
from pyverity.format.params import TreeParams
from pyverity.hashing.reference import build_from_stream
from pyverity.hashing.subtree import fold_roots, hash_subtrees, subtree_bytes, subtree_height

PARAMS = st.builds(
    TreeParams,
    st.sampled_from([by_name("sha256"), by_name("sha512")]),
    st.sampled_from([1024, 4096]),
    st.binary(max_size=32),
)


def _by_subtrees(data: bytes, params: TreeParams, height: int, per_task: int) -> bytes:
    size = subtree_bytes(params, height)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        fd = f.fileno()
        roots: list[bytes] = []
        step = size * per_task
        for start in range(0, len(data), step):
            roots += hash_subtrees(fd, params, start, min(start + step, len(data)), height)
    return fold_roots(params, len(data), height, roots).to_bytes()


@settings(max_examples=60, deadline=None)
@given(params=PARAMS, blocks=st.integers(2, 3000), tail=st.integers(0, 1023),
       per_task=st.integers(1, 3), seed=st.integers(0, 255))  # fmt: skip
def test_equals_reference_builder(
    params: TreeParams, blocks: int, tail: int, per_task: int, seed: int
) -> None:
    height = 1
    size = subtree_bytes(params, height)
    n = max(size + 1, (blocks - 1) * params.block_size + tail + 1)
    data = bytes((i * 7 + seed) & 0xFF for i in range(n))
    want = build_from_stream(io.BytesIO(data), params).descriptor.to_bytes()
    assert _by_subtrees(data, params, height, per_task) == want


@pytest.mark.parametrize("extra", [0, 1, 4096, 5000])
def test_height_two_exact_and_partial(extra: int) -> None:
    params = TreeParams(by_name("sha256"), 1024)  # arity 32: height 2 is 1 MiB
    size = subtree_bytes(params, 2)
    data = os.urandom(size * 2 + extra)
    want = build_from_stream(io.BytesIO(data), params).descriptor.to_bytes()
    assert _by_subtrees(data, params, 2, 1) == want


def test_exactly_arity_squared_plus_roots_need_two_levels() -> None:
    # more roots than fit in one block: the client folds two levels
    params = TreeParams(by_name("sha512"), 1024)  # arity 16, height 1 = 16 KiB
    data = os.urandom(subtree_bytes(params, 1) * 20 + 3)
    want = build_from_stream(io.BytesIO(data), params).descriptor.to_bytes()
    assert _by_subtrees(data, params, 1, 4) == want


def test_height_choice_and_refusals() -> None:
    params = TreeParams()
    assert subtree_height(params, 64 << 20) == 2
    assert subtree_height(params, 1) == 1
    assert subtree_bytes(params, 2) == 64 << 20
    with pytest.raises(ValueError, match="height"):
        subtree_bytes(params, 0)
    with pytest.raises(ValueError, match="subtrees"):
        fold_roots(params, 100, 1, [b"\0" * 32])
    with tempfile.TemporaryFile() as f, pytest.raises(ValueError, match="aligned"):
        hash_subtrees(f.fileno(), params, 5, 10, 1)


def test_shrunk_file_is_changed() -> None:
    from pyverity.errors import FileChangedError

    params = TreeParams()
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 1000)
        f.flush()
        with pytest.raises(FileChangedError):
            hash_subtrees(f.fileno(), params, 0, subtree_bytes(params, 1), 1)
