# ruff: noqa: PTH116, PTH208
# (descriptors, not paths: os.listdir(fd) and os.stat of /proc/self/fd/N are the point)
"""Resolution beneath a root: with openat2 and with the checked walk (forced), the same answers."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.errors import InputError
from pyverity.fs import beneath


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "openat2" and not beneath._kernel_has_openat2():
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """root/{a/b/f, a/link -> b, a/flink -> b/f, a/out -> outside, file}, outside/secret."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"inside")
    (root / "file").write_bytes(b"top")
    (root / "a" / "link").symlink_to("b")
    (root / "a" / "flink").symlink_to("b/f")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "a" / "out").symlink_to(outside)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield root, fd
    finally:
        os.close(fd)


def _errno(fn: object, *args: object) -> int:
    try:
        os.close(fn(*args))  # type: ignore[operator]
    except OSError as e:
        return e.errno or -1
    return 0


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_is_the_mode_in_force(mode: str) -> None:
    assert beneath.has_openat2() == (mode == "openat2")


def test_opens_beneath(mode: str, tree: tuple[Path, int]) -> None:
    del mode
    _, root_fd = tree
    assert _read(beneath.open_beneath(root_fd, "a/b/f")) == b"inside"
    assert _read(beneath.open_beneath(root_fd, "./a//b/./f")) == b"inside"
    dfd = beneath.open_beneath(root_fd, "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(dfd)) == ["b", "flink", "link", "out"]
    finally:
        os.close(dfd)
    top = beneath.open_beneath(root_fd, "", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(top)) == ["a", "file"]
    finally:
        os.close(top)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("a/link/f", errno.ELOOP),  # symlink in the middle, even one staying inside
        ("a/out/secret", errno.ELOOP),  # symlink in the middle, leading out
        ("a/flink", errno.ELOOP),  # final symlink, opened for reading
        ("file/x", errno.ENOTDIR),
        ("a/../file", errno.EXDEV),
        ("..", errno.EXDEV),
        ("/etc/passwd", errno.EXDEV),
        ("a/missing/f", errno.ENOENT),
    ],
)
def test_refusals(mode: str, tree: tuple[Path, int], path: str, code: int) -> None:
    del mode
    assert _errno(beneath.open_beneath, tree[1], path) == code


def test_final_symlink_as_itself(mode: str, tree: tuple[Path, int]) -> None:
    del mode
    fd = beneath.open_beneath(tree[1], "a/out", os.O_PATH)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
        assert os.readlink("", dir_fd=fd) == str(tree[0].parent / "outside")
    finally:
        os.close(fd)


def test_open_at_one_component_only(mode: str, tree: tuple[Path, int]) -> None:
    del mode
    _, root_fd = tree
    for name in ("a/b", "..", ""):
        assert _errno(beneath.open_at, root_fd, name, os.O_PATH) == errno.EXDEV
    dfd = beneath.open_beneath(root_fd, "a", os.O_PATH)
    try:
        assert _errno(beneath.open_at, dfd, "link", os.O_RDONLY | os.O_DIRECTORY) in (
            errno.ELOOP,
            errno.ENOTDIR,
        )
        # Creating with a mode carrying file-type bits, as FUSE passes it.
        fd = beneath.open_at(dfd, "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o100600)
        os.close(fd)
        assert stat.S_IMODE(os.stat("new", dir_fd=dfd).st_mode) & 0o600 == 0o600
    finally:
        os.close(dfd)


def test_open_parent_checks_each_directory_passed(mode: str, tree: tuple[Path, int]) -> None:
    del mode
    root, root_fd = tree
    seen: list[int] = []
    dfd = beneath.open_parent(root_fd, ["a", "b", "f"], lambda st: seen.append(st.st_ino))
    try:
        assert os.fstat(dfd).st_ino == (root / "a" / "b").stat().st_ino
    finally:
        os.close(dfd)
    assert seen == [
        root.stat().st_ino,
        (root / "a").stat().st_ino,
        (root / "a" / "b").stat().st_ino,
    ]
    seen.clear()
    os.close(beneath.open_parent(root_fd, [], lambda st: seen.append(st.st_ino)))
    assert seen == []  # the root alone: nothing is looked up in it

    def deny(st: os.stat_result) -> None:
        if st.st_ino == (root / "a").stat().st_ino:
            raise PermissionError(errno.EACCES, "no")

    with pytest.raises(PermissionError):
        beneath.open_parent(root_fd, ["a", "b", "f"], deny)
    assert _errno(beneath.open_parent, root_fd, ["a", "link", "f"]) == errno.ELOOP


def test_open_parent_keeps_to_the_directory_it_opened(tree: tuple[Path, int]) -> None:
    """A directory swapped for a symlink after the walk passed it changes nothing."""
    root, root_fd = tree
    dfd = beneath.open_parent(root_fd, ["a", "b", "f"])
    try:
        (root / "a" / "b").rename(root / "a" / "b2")
        (root / "a" / "b").symlink_to(tree[0].parent / "outside")
        fd = beneath.open_at(dfd, "f", os.O_RDONLY)
        assert _read(fd) == b"inside"
    finally:
        os.close(dfd)


def test_reopen_and_proc_path(tree: tuple[Path, int]) -> None:
    pfd = beneath.open_beneath(tree[1], "a/b/f", os.O_PATH)
    try:
        assert _read(beneath.reopen(pfd, os.O_RDONLY)) == b"inside"
        assert os.stat(beneath.proc_path(pfd)).st_ino == (tree[0] / "a/b/f").stat().st_ino
    finally:
        os.close(pfd)


def test_walk_tree(mode: str, tree: tuple[Path, int]) -> None:
    del mode
    root, root_fd = tree
    (root / "a" / "b" / "c").mkdir()
    (root / "a" / "b" / "c" / "g").write_bytes(b"")
    (root / "a" / "e").write_bytes(b"")
    os.mkfifo(root / "a" / "fifo")
    assert list(beneath.walk_tree(root_fd)) == [
        ("file", False),
        ("a", True),
        ("a/e", False),  # files first, then directories; symlinks and the FIFO left out
        ("a/b", True),
        ("a/b/f", False),
        ("a/b/c", True),
        ("a/b/c/g", False),
    ]


def test_walk_tree_closes_its_descriptors(tree: tuple[Path, int]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    walk = beneath.walk_tree(tree[1])
    next(walk)
    next(walk)
    walk.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_input_error_is_one_line() -> None:
    err = beneath.input_error(OSError(errno.ELOOP, "loop"), "d/x")
    assert isinstance(err, InputError)
    assert "symbolic link" in str(err)
    assert "\n" not in str(err)
