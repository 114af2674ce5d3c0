"""fs.openfile.FileRef: walked files opened beneath their root, named files with O_NOFOLLOW."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pyverity.errors import InputError
from pyverity.fs import beneath
from pyverity.fs.openfile import FileRef, open_regular_beneath


def _ref(root: Path, rel: str) -> FileRef:
    st = root.stat()
    return FileRef(str(root), rel, (st.st_dev, st.st_ino))


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(beneath, "use_openat2", request.param)
    return bool(request.param)


def test_walked_file_opens_beneath_its_root(tmp_path: Path, resolution: bool) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    ref = pickle.loads(pickle.dumps(_ref(tmp_path, "d/f")))  # noqa: S301 - as a worker gets it
    assert ref.path == str(tmp_path / "d" / "f")
    fd = ref.open()
    try:
        assert os.pread(fd, 4, 0) == b"x"
    finally:
        os.close(fd)


def test_directory_swapped_for_symlink_is_refused(tmp_path: Path, resolution: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    ref = _ref(root, "d/f")
    (root / "d").rmdir()
    (root / "d").symlink_to(outside)
    with pytest.raises(InputError, match="symbolic link") as e:
        ref.open()
    assert str(e.value).startswith(f"can't open '{root / 'd' / 'f'}' beneath its root")
    # a final symlink, and a FIFO, are refused too
    (outside / "g").symlink_to(outside / "f")
    with pytest.raises(InputError, match="symbolic link"):
        _ref(outside, "g").open()
    os.mkfifo(outside / "p")
    with pytest.raises(InputError, match="not a regular file"):
        _ref(outside, "p").open()


def test_root_replaced_since_listing_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"")
    ref = _ref(root, "f")
    root.rename(tmp_path / "old")
    root.mkdir()
    (root / "f").write_bytes(b"")
    with pytest.raises(InputError, match="was replaced since it was listed"):
        ref.open()
    (root / "f").unlink()
    root.rmdir()
    root.symlink_to(tmp_path / "old")  # the same directory, but through a symlink now
    with pytest.raises(InputError, match="Not a directory"):
        ref.open()


def test_named_file_is_opened_without_following_a_final_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.close(FileRef(None, str(tmp_path / "f")).open())
    with pytest.raises(InputError, match="is a symbolic link"):
        FileRef(None, str(tmp_path / "link")).open()


def test_open_regular_beneath_refuses_dotdot(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(InputError, match="leads outside its root"):
            open_regular_beneath(fd, "../x", "x")
    finally:
        os.close(fd)
