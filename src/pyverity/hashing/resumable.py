"""A resumable tree build: level-0 digests from an offset on, folded after saved ones.

The daemon's workers run it (:mod:`pyverity.daemon.worker`); it knows nothing of the daemon.
It hashes the data blocks of an open descriptor from ``offset`` on
(:func:`~pyverity.fs.readexact.pread_blocks`), feeding a
:class:`~pyverity.hashing.folder.TreeFolder` that was first given the level-0 digests saved by
a checkpoint. Every ``checkpoint_seconds`` it hands the new digests to ``on_checkpoint`` (the
daemon appends them to the partial file). ``poll`` is called between chunks (about 1 MiB): it
returns ``"cancel"`` or ``"yield"`` to stop, so a cancellation takes effect within milliseconds.
A file that changes under the build raises :class:`FileChangedError`; the final tree is the one
:func:`pyverity.hashing.build_tree` would give (tests compare them byte for byte).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from pyverity.errors import CancelledError, FileChangedError
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity, identity
from pyverity.fs.readexact import pread_blocks
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.runhash import run_hasher

__all__ = ["Stopped", "build_from_offset"]

_CHUNK = 1 << 20


class Stopped(CancelledError):  # noqa: N818 (a stop, not an error)
    """The build was asked to stop; ``offset`` is where it stopped (a block boundary)."""

    def __init__(self, why: str, offset: int) -> None:
        super().__init__(f"build {why} at offset {offset}")
        self.why = why
        self.offset = offset


def _chunk_hasher(fd: int, size: int, params: TreeParams, chunk: int) -> Callable[[int], bytes]:
    """Read the chunk at an offset, zero-pad its last block, return its level-0 digests."""
    hash_run = run_hasher(params)
    bs = params.block_size

    def hash_chunk(at: int) -> bytes:
        want = min(chunk, size - at)
        buffer = memoryview(bytearray(-(-want // bs) * bs))  # one per chunk: chunks run at once
        return hash_run(pread_blocks(fd, buffer, at, want, bs))

    return hash_chunk


def build_from_offset(
    fd: int,
    params: TreeParams,
    snapshot: FileIdentity,
    *,
    offset: int = 0,
    leaves: bytes = b"",
    checkpoint_seconds: float = 1.0,
    threads: int = 1,
    on_progress: Callable[[int], None] | None = None,
    on_checkpoint: Callable[[int, bytes], None] | None = None,
    poll: Callable[[], str | None] | None = None,
) -> MerkleTree:
    """Build the tree of the file open as ``fd``, whose identity must stay ``snapshot``.

    ``threads`` chunks are read and hashed at once (``pread`` and the run hasher release the
    GIL); their digests are folded strictly in file order.
    """
    size = snapshot[2]
    bs, ds = params.block_size, params.digest_size
    if offset % bs or offset > size or len(leaves) != offset // bs * ds:
        raise ValueError("checkpoint does not match its offset")
    if identity(os.fstat(fd)) != snapshot:
        raise FileChangedError("file changed since it was queued")
    folder = TreeFolder(params, keep_tree=True)
    if leaves:
        folder.add(leaves)
    chunk = max(bs, _CHUNK - _CHUNK % bs)

    hash_chunk = _chunk_hasher(fd, size, params, chunk)
    pending = bytearray()
    last_cp = last_report = time.monotonic()
    next_read = offset
    inflight: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        try:
            while offset < size:
                why = poll() if poll is not None else None
                if why is not None:
                    if on_checkpoint is not None and pending:
                        on_checkpoint(offset, bytes(pending))
                    raise Stopped(why, offset)
                while next_read < size and len(inflight) < max(1, threads):
                    inflight.append(pool.submit(hash_chunk, next_read))
                    next_read += chunk
                digests = inflight.popleft().result()
                folder.add(digests)
                offset = min(size, offset + chunk)
                now = time.monotonic()
                if on_checkpoint is not None and offset < size:
                    pending += digests
                    if now - last_cp >= checkpoint_seconds:
                        on_checkpoint(offset, bytes(pending))
                        pending.clear()
                        last_cp = now
                if on_progress is not None and now - last_report >= 0.1:
                    on_progress(offset)
                    last_report = now
        finally:
            for f in inflight:
                f.cancel()
    if os.pread(fd, 1, size):
        raise FileChangedError("file grew while it was being hashed")
    if identity(os.fstat(fd)) != snapshot:
        raise FileChangedError("file changed while it was being hashed")
    return folder.finish(size)
