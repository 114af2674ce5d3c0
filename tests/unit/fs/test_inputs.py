"""fs.inputs: named inputs typed by fstat after an O_NONBLOCK open, and bounded by bytes read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.errors import InputError
from pyverity.fs.inputs import describe_mode, list_directory, open_stream, read_input


def test_regular_file_and_symlink_are_read(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    (tmp_path / "link").symlink_to(f)  # as the 6.10+ securityfs lists are
    assert read_input(f, "policy", 3) == b"abc"
    assert read_input(tmp_path / "link", "policy", 3) == b"abc"


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: p.mkdir(), "a directory"),
        (os.mkfifo, "a FIFO"),
    ],
)
def test_refused_at_once_naming_what_it_is(tmp_path: Path, make: object, kind: str) -> None:
    p = tmp_path / "x"
    assert callable(make)
    make(p)
    with pytest.raises(InputError) as info:
        read_input(p, "policy", 100)
    assert str(info.value) == f"policy '{p}' is {kind}"


def test_devices_are_refused_without_reading() -> None:
    with pytest.raises(InputError, match=r"^daemon config '/dev/zero' is a character device$"):
        read_input("/dev/zero", "daemon config", 1 << 20)


def test_limit_counts_bytes_read_not_st_size(tmp_path: Path) -> None:
    # /proc files report a size of 0, as securityfs does: the content is read all the same
    status = read_input("/proc/self/status", "status", 1 << 20)
    assert b"Pid:" in status
    with pytest.raises(InputError, match="larger than 10 bytes"):
        read_input("/proc/self/status", "status", 10)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    assert len(read_input(big, "key", 101)) == 101
    with pytest.raises(InputError, match=r"^key '.*big' is larger than 100 bytes$"):
        read_input(big, "key", 100)


def test_a_pipe_only_where_allowed(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_input(fifo, "passphrase file", 100, allow_fifo=True) == b""  # no writer: empty
    r, w = os.pipe()  # what --pass-file <(...) gives
    try:
        os.write(w, b"pass\n")
        os.close(w)
        assert read_input(f"/dev/fd/{r}", "passphrase file", 100, allow_fifo=True) == b"pass\n"
        with pytest.raises(InputError, match="is a FIFO"):
            read_input(f"/dev/fd/{r}", "policy", 100)
    finally:
        os.close(r)


def test_unopenable_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^can't read certificate '.*nope': No such file"):
        read_input(tmp_path / "nope", "certificate", 10)


def test_stream_and_directory(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").mkdir()
    with open_stream(tmp_path / "a", "measurement list") as f:
        assert f.read() == b"1"
    fd, names = list_directory(tmp_path, "keyring", 10)
    os.close(fd)
    assert names == ["a", "b"]
    with pytest.raises(InputError, match="is a regular file, not a directory"):
        list_directory(tmp_path / "a", "keyring", 10)
    with pytest.raises(InputError, match="more than 1 entries"):
        list_directory(tmp_path, "keyring", 1)
    assert describe_mode((tmp_path / "b").stat().st_mode) == "a directory"
