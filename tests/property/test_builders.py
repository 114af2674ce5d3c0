"""Property tests: the fast builder equals the reference builder; every data byte matters.

The fast builder is driven with tiny chunks and no size threshold (``FastOptions``), so small
hypothesis inputs go through forked workers, the in-order fold and the partial last chunk.
"""

from __future__ import annotations

import io
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyverity.format.hashalg import SHA256, SHA512
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.hashing.fast import FastOptions, build_fast
from pyverity.hashing.reference import build_from_stream
from pyverity.hashing.runhash import uses_accelerator

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tree_params(draw: st.DrawFn) -> TreeParams:
    alg = draw(st.sampled_from([SHA256, SHA512]))
    block_size = draw(
        st.sampled_from([128, 256, 1024, 4096]).filter(lambda b: b >= 2 * alg.digest_size)
    )
    salt = draw(st.binary(max_size=32))
    return TreeParams(alg, block_size, salt)


@st.composite
def cases(draw: st.DrawFn) -> tuple[TreeParams, bytes]:
    params = draw(tree_params())
    nblocks = draw(st.integers(0, 40))
    extra = draw(st.integers(0, params.block_size - 1)) if nblocks else draw(st.integers(0, 3))
    size = max(0, nblocks * params.block_size - extra)
    seed = draw(st.binary(min_size=1, max_size=16))
    data = (
        (seed * (size // len(seed) + 1))[:size]
        if draw(st.booleans())
        else draw(st.randoms(use_true_random=False)).randbytes(size)
    )
    return params, data


def fast_build(
    data: bytes,
    params: TreeParams,
    *,
    jobs: int,
    chunk_blocks: int,
    accel: bool | None,
    spool: bool = False,
) -> MerkleTree:
    if accel and not uses_accelerator(params, accel=True):
        accel = None  # no compiled path for these parameters here: the default one
    options = FastOptions(
        chunk_size=chunk_blocks * params.block_size,
        parallel_min_size=0,
        accel=accel,
        spool_min_tree=0 if spool else 1 << 40,
    )
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return build_fast(f.fileno(), params, keep_tree=True, jobs=jobs, options=options)


@SETTINGS
@given(
    cases(),
    st.integers(1, 3),
    st.integers(1, 5),
    st.sampled_from([None, False, True]),  # True: the accelerator (SHA-256 and SHA-512)
    st.booleans(),
)
def test_fast_equals_reference(
    case: tuple[TreeParams, bytes], jobs: int, chunk_blocks: int, accel: bool | None, spool: bool
) -> None:
    params, data = case
    want = build_from_stream(io.BytesIO(data), params, keep_tree=True)
    got = fast_build(data, params, jobs=jobs, chunk_blocks=chunk_blocks, accel=accel, spool=spool)
    assert got.descriptor.to_bytes() == want.descriptor.to_bytes()
    assert got.tree == want.tree
    assert got.file_digest() == want.file_digest()


@SETTINGS
@given(cases().filter(lambda c: len(c[1]) > 0), st.data())
def test_any_flipped_byte_changes_the_digest(
    case: tuple[TreeParams, bytes], data: st.DataObject
) -> None:
    params, content = case
    index = data.draw(st.integers(0, len(content) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[index] ^= 1 << bit
    original = fast_build(content, params, jobs=2, chunk_blocks=1, accel=None)
    changed = fast_build(bytes(flipped), params, jobs=2, chunk_blocks=1, accel=None)
    assert original.file_digest() != changed.file_digest()
    assert original.root_hash != changed.root_hash
