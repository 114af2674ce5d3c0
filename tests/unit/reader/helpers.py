"""Shared set-up for reader tests: protect a file with a ``user.verity`` descriptor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.hashing.api import build_tree
from pyverity.reader import ReaderOptions

NS = "user"
OPTIONS = ReaderOptions(xattr_ns=NS)


def protect(
    path: Path, data: bytes, params: TreeParams | None = None, *, ns: str = NS
) -> MerkleTree:
    """Write ``data`` to ``path`` and its descriptor to ``<ns>.verity``; returns the tree."""
    path.write_bytes(data)
    tree = build_tree(path, params or TreeParams())
    try:
        set_attr(path, attr_name(ns, "verity"), tree.descriptor.to_bytes())
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no user xattrs on {path.parent}: {e}")
    return tree


def flip(path: Path, offset: int) -> None:
    """Invert one byte of ``path`` in place (same size, so only content changes)."""
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
