"""Classic IMA files (a whole-file hash or a v2 signature over it) read through a verifier: one
pass that both hashes the whole content, for the appraisal, and builds a Merkle tree of the very
same bytes, so that later reads are checked block by block against content that matched.

Used by :func:`pyverity.protect.gate.compute` with ``keep_tree`` (the reader's open).
"""

from __future__ import annotations

import os

from pyverity.errors import FileChangedError
from pyverity.format.ima import KernelHashAlgo
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.fs.readexact import pread_exact
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.runhash import run_hasher

__all__ = ["hash_and_tree"]

_CHUNK = 4 << 20


def hash_and_tree(
    fd: int, alg: KernelHashAlgo, params: TreeParams | None = None
) -> tuple[bytes, MerkleTree]:
    """``(whole-file hash with alg, tree of the same bytes)``; a file that changes is refused."""
    whole = alg.new()  # UnsupportedError for an algorithm hashlib lacks here
    params = params or TreeParams()
    bs = params.block_size
    hash_run = run_hasher(params)
    folder = TreeFolder(params, keep_tree=True)
    before = identity(os.fstat(fd))
    chunk = max(bs, _CHUNK - _CHUNK % bs)
    offset = 0
    while True:
        data = pread_exact(fd, chunk, offset)
        if not data:
            break
        whole.update(data)
        offset += len(data)
        if len(data) % bs:
            data += bytes(bs - len(data) % bs)
        folder.add(hash_run(data))
        if len(data) < chunk:
            break
    if offset != before.size or identity(os.fstat(fd)) != before:
        raise FileChangedError("file changed while it was being hashed")
    return whole.digest(), folder.finish(offset)
