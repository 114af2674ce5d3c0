"""Protecting files the way other tools do, for tests: ``fsverity digest`` + ``setfattr``, or
pyverity's own tree builder with one ``setxattr``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.hashing import build_tree

__all__ = ["TOOL_TIMEOUT", "fsverity_digest", "protect", "protect_with_pyverity", "setfattr"]

TOOL_TIMEOUT = 120


def fsverity_digest(path: Path, out: Path, *opts: str) -> tuple[str, bytes, bytes]:
    """``fsverity digest`` of ``path``: the digest (``alg:hex``), descriptor and tree (the
    two files are written in the directory ``out``)."""
    desc, tree = out / "desc", out / "tree"
    r = subprocess.run(
        [
            "fsverity",
            "digest",
            *opts,
            str(path),
            f"--out-descriptor={desc}",
            f"--out-merkle-tree={tree}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    )
    return r.stdout.split()[0], desc.read_bytes(), tree.read_bytes()


def setfattr(path: Path, name: str, value: bytes) -> None:
    subprocess.run(
        ["setfattr", "-n", name, "-v", "0x" + value.hex(), str(path)],
        check=True,
        timeout=TOOL_TIMEOUT,
    )


def protect(path: Path, out: Path, *opts: str, ns: str = "user") -> tuple[str, bytes, bytes]:
    """Write ``path``'s descriptor, as ``fsverity digest`` computes it, with ``setfattr``."""
    digest, desc, tree = fsverity_digest(path, out, *opts)
    setfattr(path, f"{ns}.verity", desc)
    return digest, desc, tree


def protect_with_pyverity(
    path: Path, params: TreeParams | None = None, *, ns: str = "user"
) -> MerkleTree:
    """Write ``path``'s descriptor as pyverity builds it (no external tool); the tree."""
    tree = build_tree(path, params or TreeParams())
    set_attr(path, attr_name(ns, "verity"), tree.descriptor.to_bytes())
    return tree
