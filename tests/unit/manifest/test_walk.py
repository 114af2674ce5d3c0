"""manifest.walk: byte order of full paths (the a.b / a/b trap), symlinks, beneath-the-root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.manifest.walk import (
    MissingError,
    NotRegularError,
    SymlinkInPathError,
    WalkStats,
    open_beneath,
    open_root,
    walk,
)
from tests.unit.manifest.helpers import make_tree


def _walk(root: Path) -> tuple[list[bytes], WalkStats]:
    fd = open_root(root)
    stats = WalkStats()
    try:
        return [f.path for f in walk(fd, stats)], stats
    finally:
        os.close(fd)


def test_dot_sorts_before_slash(tmp_path: Path) -> None:
    # a per-directory sorted DFS would give a/x, a.b, a0 (dir "a" < "a.b" < "a0"): wrong.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "a.b").write_text("2")
    (tmp_path / "a0").write_text("3")
    (tmp_path / "a-").mkdir()
    (tmp_path / "a-" / "y").write_text("4")
    paths, _ = _walk(tmp_path)
    assert paths == [b"a-/y", b"a.b", b"a/x", b"a0"]
    assert paths == sorted(paths)


def test_awkward_tree_is_sorted_and_skips_fifo(tmp_path: Path) -> None:
    expected = make_tree(tmp_path)
    paths, stats = _walk(tmp_path)
    assert paths == expected
    assert stats.skipped == 1
    assert stats.skipped_paths == [b"fifo"]


def test_symlinks_recorded_not_followed(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "ld").symlink_to("d")
    (tmp_path / "out").symlink_to("/etc")
    fd = open_root(tmp_path)
    try:
        found = list(walk(fd, WalkStats()))
    finally:
        os.close(fd)
    assert [(f.path, f.is_symlink, f.target) for f in found] == [
        (b"d/f", False, b""),
        (b"ld", True, b"d"),
        (b"out", True, b"/etc"),
    ]


_name = st.binary(min_size=1, max_size=6).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_name, min_size=1, max_size=3), min_size=1, max_size=25))
def test_any_tree_walks_in_byte_order(
    tmp_path_factory: pytest.TempPathFactory, paths: list[list[bytes]]
) -> None:
    root = tmp_path_factory.mktemp("t")
    made: set[bytes] = set()
    for parts in paths:
        full = b"/".join(parts)
        # skip paths whose prefix is already a file, or that would be a directory already
        if any(b"/".join(parts[:i]) in made for i in range(1, len(parts))) or any(
            m.startswith(full + b"/") for m in made
        ):
            continue
        try:
            os.makedirs(os.fsencode(root) + b"/" + b"/".join(parts[:-1]), exist_ok=True)  # noqa: PTH103
            with open(os.fsencode(root) + b"/" + full, "xb"):
                pass
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        made.add(full)
    got, _ = _walk(root)
    assert got == sorted(made)


def test_open_beneath_refuses_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "up").symlink_to(outside)
    (root / "f").write_text("x")
    (root / "lf").symlink_to("f")
    os.mkfifo(root / "p")
    fd = open_root(root)
    try:
        with pytest.raises(SymlinkInPathError, match="leaves the directory"):
            open_beneath(fd, b"up/secret")
        with pytest.raises(NotRegularError, match="symbolic link"):
            open_beneath(fd, b"lf")
        with pytest.raises(NotRegularError, match="not a regular file"):
            open_beneath(fd, b"p")  # refused at once, never blocks
        with pytest.raises(MissingError):
            open_beneath(fd, b"nope/x")
        with pytest.raises(MissingError):
            open_beneath(fd, b"f/x")  # a component that is a file, not a symlink
        ffd = open_beneath(fd, b"f")
        assert os.read(ffd, 10) == b"x"
        os.close(ffd)
    finally:
        os.close(fd)
