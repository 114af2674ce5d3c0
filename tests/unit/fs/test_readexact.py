"""fs.readexact: positional reads gathered until full, short only at end of file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.errors import FileChangedError
from pyverity.fs import readexact


def _short_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    real_pread, real_preadv = os.pread, os.preadv
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 3), off))
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: real_preadv(fd, [bufs[0][:3]], off))


def test_short_reads_are_gathered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "f"
    f.write_bytes(bytes(range(20)))
    fd = os.open(f, os.O_RDONLY)
    try:
        _short_reads(monkeypatch)
        assert readexact.pread_exact(fd, 10, 4) == bytes(range(4, 14))
        assert readexact.pread_exact(fd, 100, 15) == bytes(range(15, 20))  # short at EOF
        assert readexact.pread_exact(fd, 5, 40) == b""
        buf = bytearray(12)
        assert readexact.pread_exact_into(fd, memoryview(buf), 1) == 12
        assert bytes(buf) == bytes(range(1, 13))
        assert readexact.pread_exact_into(fd, memoryview(buf), 16) == 4
        assert bytes(buf[:4]) == bytes(range(16, 20))
    finally:
        os.close(fd)


def test_pread_blocks_pads_and_refuses_a_shrunk_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "f"
    f.write_bytes(bytes(range(1, 11)))
    fd = os.open(f, os.O_RDONLY)
    try:
        _short_reads(monkeypatch)
        buf = memoryview(bytearray(b"\xff" * 8))
        assert bytes(readexact.pread_blocks(fd, buf, 5, 5, 4)) == bytes(range(6, 11)) + bytes(3)
        with pytest.raises(FileChangedError, match="shrank"):
            readexact.pread_blocks(fd, buf, 8, 4, 4)  # 2 bytes left
    finally:
        os.close(fd)
