"""Reads answered into libfuse's reply buffer: a view over C memory, verified in place."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

import pyverity
from pyverity.fuse.mount import reply_buffer
from tests.unit.reader.helpers import OPTIONS, flip, protect


def _c_buffer(size: int) -> tuple[ctypes.Array[ctypes.c_char], object]:
    buf = ctypes.create_string_buffer(b"\xee" * size, size)
    return buf, ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte))


def test_verified_in_place_and_eio_leaves_view_releasable(tmp_path: Path) -> None:
    data = os.urandom(10 * 4096 + 100)
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        raw = f.raw
        buf, ptr = _c_buffer(1 << 16)
        view = reply_buffer(ptr, 1 << 16)
        assert raw.pread_into(view, 8192) == len(data) - 8192  # type: ignore[attr-defined]
        view.release()
        assert buf.raw[: len(data) - 8192] == data[8192:]
        assert buf.raw[len(data) - 8192 : 9 * 4096] == bytes(4096 - 100)  # the zero tail
        flip(tmp_path / "f", 4096 + 1)
        view = reply_buffer(ptr, 8192)
        with pytest.raises(OSError, match="data block 1") as e:
            raw.pread_into(view, 0)  # type: ignore[attr-defined]
        assert e.value.errno == errno.EIO
        view.release()  # no slice of it is kept by the verifier
        with pytest.raises(ValueError, match="released"):
            view[0]
