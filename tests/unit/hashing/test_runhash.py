"""Run hashers: the compiled accelerator, the pure path and the per-block reference agree."""

from __future__ import annotations

import hashlib
import os
import platform
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from pyverity.format.hashalg import SHA256, SHA512, HashAlgorithm
from pyverity.format.params import TreeParams
from pyverity.hashing import runhash
from pyverity.hashing.blockhash import block_hasher

HAS_SHANI = platform.machine() in ("x86_64", "AMD64") and " sha_ni" in (
    Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
)
BLOCK_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


def _require_accel(
    monkeypatch: pytest.MonkeyPatch, has_path: Callable[[ModuleType], object], feature: str
) -> None:
    """Skip unless the accelerator is enabled and ``has_path`` says its path can run here."""
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    module = runhash.accelerator()
    if module is None or not has_path(module):
        pytest.skip(f"the compiled accelerator is not built or this CPU lacks {feature}")


@pytest.fixture
def with_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator's SHA-256 path (SHA-NI) can run here."""
    _require_accel(monkeypatch, lambda module: module.available(), "SHA-NI")


@pytest.fixture
def with_accel512(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator's SHA-512 path (AVX-512) can run here."""
    _require_accel(monkeypatch, lambda module: module.sha512_widths(), "AVX-512")


def accelerated_algs() -> list[object]:
    """SHA256 and SHA512, each skipped where the accelerator has no path for it."""
    module = runhash.accelerator()
    return [
        pytest.param(
            alg,
            marks=pytest.mark.skipif(
                module is None
                or not (module.available() if alg is SHA256 else module.sha512_widths()),
                reason=f"no accelerated {alg.name} path here",
            ),
            id=alg.name,
        )
        for alg in (SHA256, SHA512)
    ]


def reference_run(params: TreeParams, data: bytes) -> bytes:
    one = block_hasher(params)
    bs = params.block_size
    return b"".join(one(data[o : o + bs]) for o in range(0, len(data), bs))


def test_accelerator_is_built_where_it_can_be(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI installs gcc and Python headers: on a SHA-NI machine the extension must be there."""
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    if not (HAS_SHANI and shutil.which("gcc")):
        pytest.skip("no SHA-NI CPU or no C compiler here: the pure path is the only one")
    assert runhash.accelerator() is not None


def test_no_accel_environment_forces_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runhash.NO_ACCEL_ENV, "1")
    assert runhash.accelerator() is None
    with pytest.raises(RuntimeError, match="not available"):
        runhash.run_hasher(TreeParams(), accel=True)


def test_sha512_asks_for_the_accelerator_only_where_it_has_avx512(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    module = runhash.accelerator()
    params = TreeParams(SHA512, 4096, b"salt")
    if module is None or not module.sha512_widths():
        with pytest.raises(RuntimeError, match="sha512"):
            runhash.run_hasher(params, accel=True)
        assert not runhash.uses_accelerator(params)
    else:
        data = os.urandom(3 * 4096)
        assert runhash.run_hasher(params, accel=True)(data) == reference_run(params, data)
        assert runhash.uses_accelerator(params, accel=True)
    if " avx512bw" in Path("/proc/cpuinfo").read_text() and shutil.which("gcc"):
        assert module is not None
        assert module.sha512_widths() == (8,)


@pytest.mark.parametrize("alg", [SHA256, SHA512])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("salt_len", [0, 1, 16, 31, 32])
def test_pure_matches_reference(alg: object, block_size: int, salt_len: int) -> None:
    rng = random.Random(block_size * 100 + salt_len)
    params = TreeParams(alg, block_size, rng.randbytes(salt_len))  # type: ignore[arg-type]
    for n in (0, 1, 2, 3):
        data = rng.randbytes(n * block_size)
        assert runhash.pure_run_hasher(params)(data) == reference_run(params, data)


@pytest.mark.parametrize("alg", accelerated_algs())
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("salt_len", [0, 1, 5, 16, 31, 32])
def test_accelerated_matches_pure_and_reference(
    monkeypatch: pytest.MonkeyPatch, alg: HashAlgorithm, block_size: int, salt_len: int
) -> None:
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    rng = random.Random(block_size + salt_len)
    params = TreeParams(alg, block_size, rng.randbytes(salt_len))
    accelerated = runhash.run_hasher(params, accel=True)
    pure = runhash.run_hasher(params, accel=False)
    for n in (0, 1, 2, 3, 4, 5, 7, 9, 17, 34):
        data = rng.randbytes(n * block_size)
        # A zero-padded partial last block, as the builders pass it.
        if n:
            data = data[: -rng.randrange(block_size)].ljust(n * block_size, b"\0")
        want = reference_run(params, data)
        assert accelerated(data) == want
        assert pure(data) == want


def accel_widths() -> list[int]:
    """0 (the default) and every width the accelerator takes here (none when it is absent)."""
    module = runhash.accelerator()
    return [0, *module.widths()] if module is not None else []


@pytest.mark.usefixtures("with_accel")
@pytest.mark.parametrize(("block_size", "salt_len"), [(1024, 0), (4096, 32), (65536, 7)])
def test_every_interleave_width_and_tail_matches_hashlib(block_size: int, salt_len: int) -> None:
    """Every width, and every count modulo it: the AVX-512 width (16) leaves up to 15 blocks to
    the SHA-NI groups of 4 and their narrower tail; 0..2*width+3 blocks cover all of them."""
    from pyverity.hashing import _accel

    rng = random.Random(block_size + salt_len)
    params = TreeParams(SHA256, block_size, rng.randbytes(salt_len))
    data = rng.randbytes(35 * block_size)
    want = [
        hashlib.sha256(params.padded_salt + data[o : o + block_size]).digest()
        for o in range(0, len(data), block_size)
    ]
    for width in accel_widths():
        for n in range(2 * (width or _accel.default_width()) + 4):
            run = data[: n * block_size]
            got = _accel.sha256_blocks(run, block_size, params.padded_salt, width)
            assert got == b"".join(want[:n]), (width, n)


@pytest.mark.usefixtures("with_accel512")
@pytest.mark.parametrize(("block_size", "salt_len"), [(128, 0), (1024, 0), (4096, 32), (65536, 7)])
def test_every_sha512_width_and_tail_matches_hashlib(block_size: int, salt_len: int) -> None:
    """Eight lanes: 0..19 blocks cover every count modulo 8 (the unused lanes of the last
    group hash a block again and must not be written), salted and not."""
    from pyverity.hashing import _accel

    rng = random.Random(block_size + salt_len)
    params = TreeParams(SHA512, max(block_size, 128), rng.randbytes(salt_len))
    assert len(params.padded_salt) % 128 == 0
    data = rng.randbytes(19 * block_size)
    want = [
        hashlib.sha512(params.padded_salt + data[o : o + block_size]).digest()
        for o in range(0, len(data), block_size)
    ]
    for width in (0, *_accel.sha512_widths()):
        for n in range(20):
            got = _accel.sha512_blocks(
                data[: n * block_size], block_size, params.padded_salt, width
            )
            assert got == b"".join(want[:n]), (width, n)
    # A salt of several compression blocks is absorbed block by block.
    long_salt = rng.randbytes(384)
    got = _accel.sha512_blocks(data[: 9 * block_size], block_size, long_salt)
    assert got == b"".join(
        hashlib.sha512(long_salt + data[o : o + block_size]).digest()
        for o in range(0, 9 * block_size, block_size)
    )


@pytest.mark.usefixtures("with_accel512")
def test_sha512_accelerator_rejects_bad_arguments() -> None:
    from pyverity.hashing import _accel

    for width in (-1, 1, 4, 16):
        with pytest.raises(ValueError, match="width"):
            _accel.sha512_blocks(b"\0" * 128, 128, b"", width)
    with pytest.raises(ValueError, match="multiple of 128"):
        _accel.sha512_blocks(b"\0" * 128, 64, b"")
    with pytest.raises(ValueError, match="multiple of 128"):
        _accel.sha512_blocks(b"\0" * 200, 128, b"")
    with pytest.raises(ValueError, match="multiple of 128"):
        _accel.sha512_blocks(b"\0" * 128, 128, b"\0" * 64)
    data = bytearray(os.urandom(128 * 3))
    assert _accel.sha512_blocks(memoryview(data), 128, b"") == _accel.sha512_blocks(
        bytes(data), 128, b""
    )


@pytest.mark.usefixtures("with_accel")
def test_widths_and_default() -> None:
    from pyverity.hashing import _accel

    assert _accel.widths()[:4] == (1, 2, 3, 4)
    assert set(_accel.widths()) <= {1, 2, 3, 4, 16}
    assert _accel.default_width() in _accel.widths()
    if " avx512bw" in Path("/proc/cpuinfo").read_text():
        assert 16 in _accel.widths()
    sig = _accel.cpu_signature()
    assert sig.count("|") == 5
    assert sig.isascii()
    assert sig == _accel.cpu_signature()  # the same on every call (no APIC id)


@pytest.mark.usefixtures("with_accel")
def test_accelerator_rejects_a_bad_width() -> None:
    from pyverity.hashing import _accel

    for width in (-1, 5, 8, 17):
        with pytest.raises(ValueError, match="width"):
            _accel.sha256_blocks(b"\0" * 64, 64, b"", width)


@pytest.mark.usefixtures("with_accel")
def test_accelerator_takes_any_buffer_and_small_blocks() -> None:
    from pyverity.hashing import _accel

    data = bytearray(os.urandom(64 * 21))
    params = TreeParams(SHA256, 64)
    want = reference_run(params, bytes(data))
    assert _accel.sha256_blocks(memoryview(data), 64, b"") == want
    assert _accel.sha256_blocks(data, 64, b"") == want
    with pytest.raises(ValueError, match="multiple of 64"):
        _accel.sha256_blocks(data[:100], 64, b"")
    with pytest.raises(ValueError, match="multiple of 64"):
        _accel.sha256_blocks(data, 64, b"salt")


def test_default_hasher_is_accelerated_only_for_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runhash.NO_ACCEL_ENV, raising=False)
    data = os.urandom(8192)
    for alg in (SHA256, SHA512):
        params = TreeParams(alg, 4096, b"s")
        assert runhash.run_hasher(params)(data) == reference_run(params, data)
