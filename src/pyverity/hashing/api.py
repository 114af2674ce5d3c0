"""The hashing entry points: a path or a stream in, a :class:`MerkleTree` out."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from pyverity.format.digest import FileDigest
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import open_regular
from pyverity.hashing.fast import build_fast
from pyverity.hashing.progress import CancelCheck, ProgressFn
from pyverity.hashing.reference import build_from_stream

__all__ = ["Source", "build_tree", "compute_digest"]

#: A path, an open binary stream (a pipe is fine), or a file descriptor (not closed).
Source = str | os.PathLike[str] | BinaryIO | int


def build_tree(
    source: Source,
    params: TreeParams | None = None,
    *,
    keep_tree: bool = True,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> MerkleTree:
    """Compute the fs-verity descriptor and (if ``keep_tree``) the Merkle tree of ``source``.

    The result is byte-identical to ``fsverity digest --out-descriptor/--out-merkle-tree``.
    ``jobs`` is the number of worker processes for large regular files (default: all CPUs);
    streams are hashed inline. A file that changes while it is hashed raises
    :class:`~pyverity.errors.FileChangedError`, never returns a wrong tree.
    """
    params = params or TreeParams()
    if isinstance(source, int):
        return _build_fd(
            source, params=params, keep_tree=keep_tree, jobs=jobs, progress=progress, cancel=cancel
        )
    if isinstance(source, (str, os.PathLike)):
        fd = open_regular(source)
        try:
            return _build_fd(
                fd, params=params, keep_tree=keep_tree, jobs=jobs, progress=progress, cancel=cancel
            )
        finally:
            os.close(fd)
    return build_from_stream(source, params, keep_tree=keep_tree, progress=progress, cancel=cancel)


def compute_digest(
    source: Source,
    params: TreeParams | None = None,
    *,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> FileDigest:
    """The fs-verity file digest of ``source`` (what ``fsverity digest`` prints)."""
    tree = build_tree(source, params, keep_tree=False, jobs=jobs, progress=progress, cancel=cancel)
    return tree.file_digest()


def _build_fd(
    fd: int,
    *,
    params: TreeParams,
    keep_tree: bool,
    jobs: int | None,
    progress: ProgressFn | None,
    cancel: CancelCheck | None,
) -> MerkleTree:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return build_fast(
            fd, params, keep_tree=keep_tree, jobs=jobs, progress=progress, cancel=cancel
        )
    # Anything else (a pipe, a socket, a character device given as a descriptor) is read as
    # a stream from where it stands, by the reference builder.
    with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
        return build_from_stream(
            stream, params, keep_tree=keep_tree, progress=progress, cancel=cancel
        )
