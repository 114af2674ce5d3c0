"""Every digest of a file in one read: the fs-verity tree and whole-file hashes together.

A manifest records, for each file, its fs-verity digest and the whole-file hashes that IMA's
classic signatures and attestation tools use (sha256, sha384, …). Reading the file once per
digest would double the I/O of a cold tree; :func:`hash_once` reads each chunk of whole blocks
once (``preadv`` into one reused buffer) and hands it to the level-0 run hasher of
:mod:`~pyverity.hashing.runhash` (the accelerator when it applies), whose digests go to a
:class:`~pyverity.hashing.folder.TreeFolder`, and to one :mod:`hashlib` object per whole-file
hash. The descriptor is byte-identical to :func:`~pyverity.hashing.build_tree`'s.

The result depends only on the file's bytes and the options (a pure function that a worker
process, or a cluster worker, can run). The file's identity (device, inode, size, mtime) is
compared before and after: a file that changes while it is read raises
:class:`~pyverity.errors.FileChangedError` and yields nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

from pyverity.errors import FileChangedError, UsageError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity, identity
from pyverity.fs.readexact import pread_blocks
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.progress import ProgressFn
from pyverity.hashing.runhash import RunHasher, run_hasher

__all__ = ["CHUNK_SIZE", "OnePass", "hash_once"]


@functools.lru_cache(maxsize=16)
def _run_hasher(params: TreeParams, accel: bool | None) -> RunHasher:
    """One run hasher per parameters and process (looking the accelerator up costs more than
    hashing a small file)."""
    return run_hasher(params, accel=accel)


#: Bytes read per call (rounded down to whole blocks, at least one block).
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class OnePass:
    """The descriptor, the whole-file hashes (hashlib name -> digest, in the order asked) and
    the identity the file had while it was read."""

    descriptor: Descriptor
    hashes: tuple[tuple[str, bytes], ...]
    identity: FileIdentity

    def file_hash(self, name: str) -> bytes:
        for alg, digest in self.hashes:
            if alg == name:
                return digest
        raise KeyError(name)


def hash_once(
    fd: int,
    params: TreeParams,
    file_hashes: tuple[str, ...] = ("sha256",),
    *,
    accel: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressFn | None = None,
) -> OnePass:
    """Read the regular file open as ``fd`` once (not closed) and compute every digest.

    ``file_hashes`` are :mod:`hashlib` names (``sha256``, ``sha384``, ``sha3_256`` …).
    """
    try:
        hashers = [hashlib.new(name) for name in file_hashes]
    except ValueError as e:
        raise UsageError(f"unknown whole-file hash: {e}") from None
    before = identity(os.fstat(fd))
    size = before.size
    bs = params.block_size
    chunk = max(bs, chunk_size - chunk_size % bs)
    run = _run_hasher(params, accel)
    folder = TreeFolder(params)
    view = memoryview(bytearray(min(chunk, -(-size // bs) * bs)))  # small files: small buffer
    offset = 0
    while offset < size:
        want = min(chunk, size - offset)
        blocks = pread_blocks(fd, view, offset, want, bs)
        data = view[:want]  # the whole-file hashes take the bytes, not the padding
        for h in hashers:
            h.update(data)
        folder.add(run(blocks))
        offset += want
        if progress is not None:
            progress(offset)
    if identity(os.fstat(fd)) != before:
        raise FileChangedError("file changed while it was being hashed")
    tree = folder.finish(size)
    digests = tuple((name, h.digest()) for name, h in zip(file_hashes, hashers, strict=True))
    return OnePass(tree.descriptor, digests, before)
