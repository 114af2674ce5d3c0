"""Small trees for the tests of recursive walks (``-r``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["tree_and_outside"]


def tree_and_outside(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp_path/tree`` holding ``a`` and ``sub/f``, and ``tmp_path/outside`` holding its own
    ``f``: the directory a symlink in the tree (or one swapped for ``sub``) would lead to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"outside\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"inside\n")
    (tree / "a").write_bytes(b"a\n")
    return tree, outside
