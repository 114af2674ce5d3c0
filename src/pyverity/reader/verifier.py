"""Checking data blocks against a Merkle tree, as the kernel's ``fs/verity/verify.c`` does.

The algorithm for one data block (spec/fsverity.md §8.2): climb from the level-0 tree block
that holds the wanted digest until a tree block that is already verified (or the root hash in
the descriptor) is met; then descend, hashing each remembered tree block and comparing it with
the digest its parent holds; finally hash the data block and compare it with the level-0
digest. "Already verified" is a bitmap over *tree* blocks in private memory (§8.3), and a
verified tree block's bytes are kept in private memory too — they are never re-read from the
(untrusted, possibly changing) tree source. Data blocks are never marked: every read is hashed.

Many data blocks are checked in one call: their digests are computed in a batch and compared
with the matching slice of the level-0 block in one constant-time comparison; only on a
mismatch is the first failing block searched for and named.
"""

from __future__ import annotations

import errno
import hmac
import logging
import threading
from collections.abc import Callable
from typing import NoReturn

from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import format_digest
from pyverity.hashing.blockhash import block_hasher
from pyverity.hashing.runhash import run_hasher
from pyverity.reader.hashpool import HashPool
from pyverity.reader.tree import TreeSource

__all__ = ["BlockVerifier", "VerificationError"]

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview


class VerificationError(OSError):
    """A data or tree block does not match its hash: ``errno`` is EIO, as the kernel returns.

    ``level`` is -1 for a data block, else the tree level (0 = the leaf hashes); ``block`` is
    the block's index within its level.
    """

    def __init__(self, message: str, *, filename: str | None, level: int, block: int) -> None:
        super().__init__(errno.EIO, message, filename)
        self.level = level
        self.block = block


class BlockVerifier:
    """Verifies data blocks of one file against its descriptor and an untrusted tree source.

    Safe to share between threads: marking a tree block verified is idempotent, and a block
    checked twice by two racing threads is simply hashed twice.
    """

    def __init__(
        self,
        descriptor: Descriptor,
        tree: TreeSource,
        *,
        name: str | None = None,
        on_corrupt_tree: Callable[[], None] | None = None,
        pool: HashPool | None = None,
    ) -> None:
        params = descriptor.params
        geometry = params.geometry(descriptor.data_size)
        geometry.check_bounded()  # block size 1-64 KiB and at most 8 levels
        self.descriptor = descriptor
        self.name = name
        self._on_corrupt_tree = on_corrupt_tree
        self._geometry = geometry
        self._tree = tree
        self._bs = params.block_size
        self._ds = params.digest_size
        self._arity = params.arity
        self._hash = block_hasher(params)
        #: Data blocks are hashed in runs (the compiled accelerator when available).
        self._hash_run = run_hasher(params)
        self._pool = pool
        self._root = descriptor.root_hash
        self._alg = params.hash_alg.name
        self._start = geometry.level_start
        self._levels = geometry.num_levels
        #: One bit per tree block (the kernel's ``hash_block_verified``).
        self._verified = bytearray((geometry.tree_blocks + 7) // 8)
        #: Private copies of the verified tree blocks, by position in the tree layout.
        self._blocks: dict[int, bytes] = {}
        self._lock = threading.Lock()

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def data_size(self) -> int:
        return self.descriptor.data_size

    @property
    def num_data_blocks(self) -> int:
        return self._geometry.num_data_blocks

    def is_verified(self, position: int) -> bool:
        """Whether tree block ``position`` (index in the tree layout) has been verified."""
        return bool(self._verified[position >> 3] & (1 << (position & 7)))

    def verified_tree_blocks(self) -> int:
        return len(self._blocks)

    def verify_blocks(self, first: int, data: Buffer) -> None:
        """Check the data blocks ``first, first+1, ...`` held in ``data``.

        ``data`` is a whole number of blocks; the last block of the file must be passed
        zero-padded to a full block (the tail beyond EOF has to be zero, as in the kernel).
        Raises :class:`VerificationError` naming the first block that does not match.
        """
        bs = self._bs
        if len(data) % bs:
            raise ValueError("data is not a whole number of blocks")
        count = len(data) // bs
        if count == 0:
            return
        if first < 0 or first + count > self.num_data_blocks:
            raise ValueError(f"data blocks {first}..{first + count - 1} are beyond the file")
        if self._pool is not None:
            digests = self._pool.hash(self._hash_run, data, bs)
        else:
            digests = self._hash_run(data)
        if self._levels == 0:
            # One data block: its hash is the root hash itself.
            self._check_data(first, digests, self._root, 0)
            return
        ds = self._ds
        arity = self._arity
        index = first
        end = first + count
        while index < end:
            within = index % arity
            n = min(arity - within, end - index)
            leaf = self._tree_block(0, index // arity)
            want = leaf[within * ds : (within + n) * ds]
            got_off = (index - first) * ds
            got = digests[got_off : got_off + n * ds]
            if not hmac.compare_digest(want, got):
                self._check_data(index, got, want, 0)
            index += n

    def _check_data(self, first: int, got: bytes, want: bytes, _level: int) -> None:
        ds = self._ds
        for i in range(0, len(got), ds):
            if not hmac.compare_digest(got[i : i + ds], want[i : i + ds]):
                block = first + i // ds
                self._fail(-1, block, want[i : i + ds], got[i : i + ds])

    def _tree_block(self, level: int, index: int) -> bytes:
        """The verified bytes of tree block ``index`` of ``level`` (climb, then descend)."""
        position = self._start[level] + index
        block = self._blocks.get(position)
        if block is not None:
            return block
        chain: list[tuple[int, int]] = []
        parent: bytes | None = None
        lvl, idx = level, index
        while True:
            pos = self._start[lvl] + idx
            if self.is_verified(pos):
                parent = self._blocks[pos]
                break
            chain.append((lvl, idx))
            if lvl + 1 == self._levels:
                break
            lvl, idx = lvl + 1, idx // self._arity
        ds = self._ds
        bs = self._bs
        for lvl, idx in reversed(chain):
            pos = self._start[lvl] + idx
            if parent is None:
                want = self._root
            else:
                slot = idx % self._arity
                want = parent[slot * ds : (slot + 1) * ds]
            unverified_block = self._tree.read(pos * bs, bs)
            if len(unverified_block) != bs:
                self._fail(lvl, idx, want, None)
            real = self._hash(unverified_block)
            if not hmac.compare_digest(real, want):
                self._fail(lvl, idx, want, real)
            block = bytes(unverified_block)
            with self._lock:
                self._blocks[pos] = block
                self._verified[pos >> 3] |= 1 << (pos & 7)
            parent = block
        if parent is None:  # pragma: no cover - the chain always holds the wanted block
            raise RuntimeError("tree walk ended without a block")
        return parent

    def _fail(self, level: int, block: int, want: bytes, real: bytes | None) -> NoReturn:
        what = "data block" if level < 0 else f"Merkle tree block (level {level})"
        pos = block * self._bs if level < 0 else block
        real_text = format_digest(self._alg, real) if real is not None else "missing"
        log.error(
            "FILE CORRUPTED! file=%s %s %d, want_hash=%s:%s, real_hash=%s",
            self.name,
            what,
            block,
            self._alg,
            want.hex(),
            real_text,
        )
        if level >= 0 and self._on_corrupt_tree is not None:
            self._on_corrupt_tree()
        where = f" at offset {pos}" if level < 0 else ""
        raise VerificationError(
            f"Input/output error: {what} {block}{where} does not match its hash",
            filename=self.name,
            level=level,
            block=block,
        )
