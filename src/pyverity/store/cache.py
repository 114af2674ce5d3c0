"""The tree stores: a content-addressed on-disk cache and the in-memory ``none`` backend.

Layout of the cache (DESIGN.md §4): ``<dir>/objects/<alg>/<2 hex>/<hex digest>``, each file the
256-byte descriptor followed by the Merkle tree in the kernel's layout (root level first), i.e.
``fsverity digest --out-descriptor`` followed by ``--out-merkle-tree``. The name is derived
from the file digest only, never from a file name, so identical files share one entry.

The cache is **untrusted**: :meth:`TreeCache.get` checks the descriptor against the digest it
was asked for and the length against the descriptor, discarding anything that does not match;
the tree blocks are checked by whoever uses them — by :func:`verify_tree` in full, or block by
block on the read path. Entries are published atomically (unique ``O_EXCL`` temp file in a
0700 directory, ``fsync``, ``rename``, directory ``fsync``), so nothing partial is ever visible.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import itertools
import logging
import os
import secrets
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyverity.errors import FormatError, IntegrityError, StorageError
from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import format_digest
from pyverity.format.merkletree import MerkleTree
from pyverity.fs.atomic import fsync_dir
from pyverity.hashing.runhash import run_hasher

__all__ = [
    "BACKENDS",
    "CachedTree",
    "MemoryStore",
    "TreeCache",
    "TreeStore",
    "open_store",
    "verify_tree",
]

log = logging.getLogger(__name__)

BACKENDS = ("cache", "none")
_DIR_MODE = 0o700


@dataclass(frozen=True)
class CachedTree:
    """A descriptor that matched the requested digest, and a tree not yet verified."""

    descriptor: Descriptor
    unverified_tree: bytes

    def verified(self) -> MerkleTree:
        """The tree after a full check against the descriptor's root (:func:`verify_tree`)."""
        verify_tree(self.descriptor, self.unverified_tree)
        return MerkleTree(self.descriptor, self.unverified_tree)


def verify_tree(descriptor: Descriptor, unverified_tree: bytes) -> None:
    """Check every block of a tree against its parent, up to the descriptor's root hash.

    Raises :class:`IntegrityError` on any mismatch or a wrong length. Files of at most one
    block have an empty tree (their root is the hash of the data, not checkable here).
    """
    try:
        params = descriptor.params
        geometry = params.geometry(descriptor.data_size)
        geometry.check_bounded()
    except FormatError as e:
        raise IntegrityError(f"cached descriptor is out of bounds: {e}") from e
    if len(unverified_tree) != geometry.tree_size:
        raise IntegrityError(
            f"cached tree is {len(unverified_tree)} bytes, expected {geometry.tree_size}"
        )
    hash_run = run_hasher(params)
    bs, ds = params.block_size, params.digest_size
    view = memoryview(unverified_tree)
    for level, count in enumerate(geometry.level_counts):
        start = geometry.level_start[level] * bs
        end = start + count * bs
        hashes = hash_run(view[start:end])
        if level + 1 == geometry.num_levels:
            expected = descriptor.root_hash
        else:
            parent = geometry.level_start[level + 1] * bs
            expected = bytes(view[parent : parent + count * ds])
        if not hmac.compare_digest(hashes, expected):
            raise IntegrityError(f"cached tree does not match its root (level {level})")


class TreeStore(Protocol):
    """What the daemon and the reader need from a backend."""

    def get(self, algorithm: str, digest: bytes) -> CachedTree | None: ...

    def contains(self, algorithm: str, digest: bytes) -> bool: ...

    def put(self, tree: MerkleTree) -> None: ...

    def discard(self, algorithm: str, digest: bytes) -> None: ...

    def flush(self) -> None: ...


def _check_digest(algorithm: str, digest: bytes) -> str:
    if not algorithm.isalnum() or len(digest) not in (32, 64):
        raise StorageError(f"bad cache key {format_digest(algorithm, digest)}")
    return digest.hex()


def _syncfs(directory: Path) -> bool:
    """``syncfs`` of the filesystem holding ``directory``; whether it succeeded."""
    from pyverity.fs.libc import libc

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return bool(libc().syncfs(fd) == 0)
    finally:
        os.close(fd)


def _sync_data(files: list[str], directory: Path) -> None:
    """Make ``files`` durable: one ``syncfs`` of their filesystem for a batch, else ``fsync``."""
    if len(files) > 4 and _syncfs(directory):
        return
    for f in files:
        _fsync_file(f)


def _fsync_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_entry(path: str, tree: MerkleTree, *, sync: bool = False) -> None:
    """Write ``tree``'s entry (its descriptor, then the tree) to the new file ``path``
    (``O_EXCL``, 0600), ``fsync`` ed if ``sync``. Raises :class:`OSError`."""
    if tree.tree is None:
        raise StorageError("cannot cache a tree that was not kept")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = memoryview(tree.descriptor.to_bytes() + tree.tree)
        while data:
            data = data[os.write(fd, data) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class TreeCache:
    """The on-disk cache under ``directory`` (created 0700 if missing)."""

    def __init__(self, directory: str | os.PathLike[str], *, batch_dir_sync: bool = False) -> None:
        self.directory = Path(directory)
        self._objects = self.directory / "objects"
        self._tmp = self.directory / "tmp"
        self._batch = batch_dir_sync
        # The write path works on strings: pathlib's parsing cost a third of an entry's time.
        self._objects_s = str(self._objects)
        self._tmp_s = str(self._tmp)
        self._token = secrets.token_hex(4)
        self._serial = itertools.count()
        self._dirty_dirs: set[str] = set()
        #: Fan-out directories known to exist (no ``mkdir`` per entry).
        self._made: set[str] = set()
        #: Batched mode: written, not yet synced temp files and where they go.
        self._unpublished: list[tuple[str, str]] = []
        #: Entries other processes published, not yet synced (:meth:`published`).
        self._foreign: list[str] = []
        try:
            for d in (self.directory, self._objects, self._tmp):
                d.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the tree cache in {directory}: {e.strerror}") from e

    def path_for(self, algorithm: str, digest: bytes) -> Path:
        return Path(self._entry(algorithm, digest)[1])

    def _entry(self, algorithm: str, digest: bytes) -> tuple[str, str]:
        """The fan-out directory of the entry for ``algorithm:digest``, and the entry's path."""
        hexd = _check_digest(algorithm, digest)
        parent = f"{self._objects_s}/{algorithm}/{hexd[:2]}"
        return parent, f"{parent}/{hexd}"

    def clean_temp(self) -> int:
        """Remove temp files left by a crashed writer; call only while holding the state lock."""
        removed = 0
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                Path(entry.path).unlink()
                removed += 1
        return removed

    def get(self, algorithm: str, digest: bytes) -> CachedTree | None:
        """The entry for ``algorithm:digest``; None if absent or corrupted (then removed)."""
        path = self.path_for(algorithm, digest)
        if self._unpublished:
            self.flush()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._reject(path, "is a symbolic link")
                return None
            raise StorageError(f"cannot open cache entry {path}: {e.strerror}") from e
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < Descriptor.SIZE:
                self._reject(path, "is not a regular file of at least 256 bytes")
                return None
            raw = f.read(Descriptor.SIZE)
            try:
                desc = Descriptor.from_bytes(raw)
                expected_size = Descriptor.SIZE + desc.params.geometry(desc.data_size).tree_size
            except FormatError as e:
                self._reject(path, f"bad descriptor: {e}")
                return None
            if desc.hash_alg.name != algorithm or not hmac.compare_digest(desc.digest(), digest):
                self._reject(path, "descriptor does not hash to its name")
                return None
            if st.st_size != expected_size:
                self._reject(path, f"is {st.st_size} bytes, expected {expected_size}")
                return None
            tree = f.read(expected_size - Descriptor.SIZE)
        if len(tree) != expected_size - Descriptor.SIZE:
            self._reject(path, "truncated while reading")
            return None
        return CachedTree(desc, tree)

    def _reject(self, path: Path, why: str) -> None:
        log.warning("discarding corrupted cache entry %s: %s", path, why)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def contains(self, algorithm: str, digest: bytes) -> bool:
        """Whether an entry exists (unverified: :meth:`get` checks it)."""
        if self._unpublished:
            self.flush()
        return self.path_for(algorithm, digest).is_file()

    def discard(self, algorithm: str, digest: bytes) -> None:
        if self._unpublished:
            self.flush()
        with contextlib.suppress(FileNotFoundError):
            self.path_for(algorithm, digest).unlink()

    def put(self, tree: MerkleTree) -> None:
        """Publish ``tree`` (which must carry its tree bytes) atomically under its digest.

        In batched mode the entry is written to its temp file now and published by the next
        :meth:`flush` (one ``syncfs`` for the whole batch, the renames, one more ``syncfs``
        for the directories), which the daemon calls before it commits the states that refer
        to the entries.
        """
        self._unpublished.append(self._write_temp(tree, sync=not self._batch))
        if not self._batch:
            self.flush()

    def put_unsynced(self, tree: MerkleTree) -> None:
        """Publish ``tree``'s entry at once, not synced: a daemon's worker, whose daemon calls
        :meth:`published` for it and makes it durable with its next :meth:`flush`, before it
        commits a state that refers to it. An entry a crash left torn before that is refused
        by :meth:`get` as any corrupted one (and no committed state refers to it)."""
        tmp, final = self._write_temp(tree, sync=False)
        try:
            self._rename(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise StorageError(f"cannot publish cache entry {final}: {e.strerror}") from e

    def published(self, descriptor: Descriptor) -> None:
        """Another process published ``descriptor``'s entry (:meth:`put_unsynced`): the next
        :meth:`flush` makes it durable."""
        self._foreign.append(self._entry(descriptor.hash_alg.name, descriptor.digest())[1])

    def _write_temp(self, tree: MerkleTree, *, sync: bool) -> tuple[str, str]:
        """``tree``'s entry written to a new temp file; the temp file and the entry's path."""
        desc = tree.descriptor
        parent, final = self._entry(desc.hash_alg.name, desc.digest())
        tmp = f"{self._tmp_s}/{os.getpid()}-{self._token}-{next(self._serial)}"
        try:
            if parent not in self._made:
                Path(parent).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                self._made.add(parent)
            _write_entry(tmp, tree, sync=sync)
        except OSError as e:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise StorageError(f"cannot write the tree cache: {e.strerror}") from e
        return tmp, final

    def _rename(self, tmp: str, final: str) -> None:
        try:
            os.rename(tmp, final)  # noqa: PTH104 - strings on the write path
        except FileNotFoundError:  # its directory was removed since it was made
            parent = os.path.dirname(final)  # noqa: PTH120
            self._made.discard(parent)
            Path(parent).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.rename(tmp, final)  # noqa: PTH104

    def flush(self) -> None:
        """Publish the batch: sync the temp files' data, rename them, sync their directories;
        and make the entries other processes published durable."""
        batch, self._unpublished = self._unpublished, []
        foreign, self._foreign = self._foreign, []
        if self._batch and batch:
            _sync_data([tmp for tmp, _ in batch], self._tmp)
        for tmp, final in batch:
            try:
                self._rename(tmp, final)
            except OSError as e:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()
                log.warning("cannot publish cache entry %s: %s", final, e.strerror)
                continue
            self._dirty_dirs.add(os.path.dirname(final))  # noqa: PTH120
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        dirs.update(os.path.dirname(f) for f in foreign)  # noqa: PTH120
        if (foreign or (self._batch and len(dirs) > 4)) and _syncfs(self._objects):
            return  # data and renames durable: one syncfs instead of a fsync per file and dir
        for f in foreign:
            _fsync_file(f)
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(d)


class MemoryStore:
    """The ``none`` backend: trees in memory only (up to ``max_bytes``, least recent dropped)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self._max = max_bytes
        self._size = 0
        self._trees: OrderedDict[tuple[str, bytes], MerkleTree] = OrderedDict()

    def get(self, algorithm: str, digest: bytes) -> CachedTree | None:
        tree = self._trees.get((algorithm, digest))
        if tree is None or tree.tree is None:
            return None
        self._trees.move_to_end((algorithm, digest))
        return CachedTree(tree.descriptor, tree.tree)

    def contains(self, algorithm: str, digest: bytes) -> bool:
        return (algorithm, digest) in self._trees

    def put(self, tree: MerkleTree) -> None:
        if tree.tree is None:
            raise StorageError("cannot keep a tree that was not kept")
        key = (tree.descriptor.hash_alg.name, tree.descriptor.digest())
        old = self._trees.pop(key, None)
        if old is not None and old.tree is not None:
            self._size -= len(old.tree)
        self._trees[key] = tree
        self._size += len(tree.tree)
        while self._size > self._max and len(self._trees) > 1:
            _, dropped = self._trees.popitem(last=False)
            self._size -= len(dropped.tree or b"")

    def discard(self, algorithm: str, digest: bytes) -> None:
        old = self._trees.pop((algorithm, digest), None)
        if old is not None:
            self._size -= len(old.tree or b"")

    def flush(self) -> None:
        return None


def open_store(backend: str, cache_dir: str | os.PathLike[str] | None) -> TreeStore:
    """The backend named ``backend`` (``cache`` needs ``cache_dir``)."""
    if backend == "none":
        return MemoryStore()
    if backend == "cache":
        if cache_dir is None:
            raise StorageError("the cache backend needs a cache directory")
        return TreeCache(cache_dir, batch_dir_sync=True)
    raise StorageError(f"unknown storage backend '{backend}' (use cache or none)")
