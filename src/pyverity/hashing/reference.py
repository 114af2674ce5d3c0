"""The reference builder: plain, streaming, obviously correct (DESIGN.md §5).

It reads the data once, in order, from any binary stream (a file, a pipe) and is the yardstick
the fast builder is tested against byte for byte.
"""

from __future__ import annotations

from typing import BinaryIO

from pyverity.errors import FileChangedError
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.hashing.blockhash import block_hasher
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.progress import CancelCheck, ProgressFn, check_cancel

__all__ = ["build_from_stream"]

_CHUNK = 1 << 20


def _fill(stream: BinaryIO, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; returns the bytes read."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def build_from_stream(
    stream: BinaryIO,
    params: TreeParams,
    *,
    keep_tree: bool = False,
    expected_size: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> MerkleTree:
    """Hash ``stream`` to its end and return its descriptor (and tree if ``keep_tree``).

    With ``expected_size`` (a regular file whose size was taken before reading), reading more
    or fewer bytes than that raises :class:`FileChangedError`.
    """
    bs = params.block_size
    hash_block = block_hasher(params)
    folder = TreeFolder(params, keep_tree=keep_tree)
    chunk = max(bs, _CHUNK - _CHUNK % bs)
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    while True:
        check_cancel(cancel)
        got = _fill(stream, view)
        if got == 0:
            break
        total += got
        if expected_size is not None and total > expected_size:
            raise FileChangedError("file grew while it was being hashed")
        if got % bs:
            view[got : got + bs - got % bs] = bytes(bs - got % bs)
        digests = bytearray()
        for off in range(0, got, bs):
            digests += hash_block(view[off : off + bs])
        folder.add(digests)
        if progress is not None:
            progress(total)
        if got < chunk:
            break
    if expected_size is not None and total != expected_size:
        raise FileChangedError("file shrank while it was being hashed")
    return folder.finish(total)
