"""``VerifiedRawIO.pread_into`` (the mount's zero-copy read) and the idle-gated hash pool."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import pyverity
from pyverity.format.params import TreeParams
from pyverity.hashing.runhash import pure_run_hasher
from pyverity.reader.hashpool import HashPool
from tests.unit.reader.helpers import OPTIONS, flip, protect

BS = 4096


@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (0, 64 * BS),  # aligned, in place
        (BS, 3 * BS),
        (10 * BS, 64 * BS),  # past the end: the zero-padded tail fits
        (100, 2 * BS),  # unaligned: the copying path
        (0, BS + 1),  # the buffer cannot hold the second whole block: copying path
        (12 * BS, BS),  # at the end
    ],
)
def test_pread_into_matches_pread(tmp_path: Path, offset: int, size: int) -> None:
    data = os.urandom(12 * BS + 777)
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        raw = f.raw
        buf = bytearray(b"\xaa" * size)
        n = raw.pread_into(memoryview(buf), offset)  # type: ignore[attr-defined]
        want = data[offset : offset + size]
        assert n == len(want)
        assert bytes(buf[:n]) == want
        assert n == 0 or raw.pread(size, offset) == want  # type: ignore[attr-defined]


def test_pread_into_eio_on_flipped_or_truncated_block(tmp_path: Path) -> None:
    data = os.urandom(20 * BS)
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        raw = f.raw
        flip(tmp_path / "f", 7 * BS + 5)
        buf = memoryview(bytearray(8 * BS))
        with pytest.raises(OSError, match="data block 7") as e:
            raw.pread_into(buf, 0)  # type: ignore[attr-defined]
        assert e.value.errno == errno.EIO
        assert bytes(buf) == bytes(8 * BS)  # nothing unverified left behind
        into = bytearray(8 * BS)
        with pytest.raises(OSError, match="data block 7"):
            raw.readinto(into)  # type: ignore[attr-defined]
        assert into == bytes(8 * BS)
        assert raw.pread_into(buf, 8 * BS) == 8 * BS  # type: ignore[attr-defined]
        assert bytes(buf) == data[8 * BS : 16 * BS]
        os.truncate(tmp_path / "f", 18 * BS + 1)
        with pytest.raises(OSError, match="data block 18") as e:
            raw.pread_into(buf, 16 * BS)  # type: ignore[attr-defined]
        assert e.value.errno == errno.EIO


def test_pool_hashes_like_one_thread_and_never_queues() -> None:
    run = pure_run_hasher(TreeParams())
    data = os.urandom(256 * BS)
    pool = HashPool(2)
    try:
        assert pool.hash(run, data, BS) == run(data)  # a worker was idle: split in two
        entered = threading.Event()
        release = threading.Event()

        def slow(piece: object) -> bytes:
            entered.set()
            release.wait(5)
            return run(piece)  # type: ignore[arg-type]

        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(pool.hash(slow, data, BS)))
        t.start()
        assert entered.wait(5)
        # The only worker is busy: this run is hashed inline, at once, not queued behind it.
        calls: list[int] = []

        def counting(piece: object) -> bytes:
            calls.append(threading.get_ident())
            return run(piece)  # type: ignore[arg-type]

        assert pool.hash(counting, data, BS) == run(data)
        assert calls == [threading.get_ident()]
        release.set()
        t.join(5)
        assert out == [run(data)]
    finally:
        pool.close()


def test_read_and_readinto_return_verified_bytes(tmp_path: Path) -> None:
    data = os.urandom(5 * BS + 3)
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        raw = f.raw
        assert raw.read(100) == data[:100]  # type: ignore[attr-defined]
        buf = bytearray(2 * BS)
        assert raw.readinto(buf) == 2 * BS  # type: ignore[attr-defined]
        assert buf == data[100 : 100 + 2 * BS]
        raw.seek(BS)  # type: ignore[attr-defined]
        assert raw.readinto(buf) == 2 * BS  # type: ignore[attr-defined]
        assert buf == data[BS : 3 * BS]
        assert raw.read() == data[3 * BS :]  # type: ignore[attr-defined]
        assert raw.read(10) == b""  # type: ignore[attr-defined]
