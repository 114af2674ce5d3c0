"""Appraisal at open: attributes → descriptor (→ signature) → a tree to verify reads against.

Everything is read from the one open descriptor, never from the path again, and kept for the
life of the handle: an attribute changed while the file is open does not affect it. The tree
comes from the caller's store (untrusted, checked block by block on read), or is built inline
(the time it took is logged) and checked against the descriptor's root before use.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyverity.errors import FormatError, IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.fs.xattr import VERITY_SUFFIX, attr_name, get_attr
from pyverity.hashing.api import build_tree
from pyverity.hashing.result import MerkleTree
from pyverity.reader.tree import MemoryTree, TreeSource

__all__ = ["Appraisal", "ReaderOptions", "TreeProvider", "appraise_fd", "read_descriptor"]

log = logging.getLogger(__name__)


class CachedEntry(Protocol):
    """What a tree store returns: a descriptor that matched the digest, and untrusted tree bytes."""

    @property
    def descriptor(self) -> Descriptor: ...

    @property
    def unverified_tree(self) -> bytes: ...


class TreeProvider(Protocol):
    """The part of a tree store (``pyverity.store``) the reader uses."""

    def get(self, algorithm: str, digest: bytes) -> CachedEntry | None: ...

    def put(self, tree: MerkleTree) -> None: ...

    def discard(self, algorithm: str, digest: bytes) -> None: ...


@dataclass(frozen=True)
class ReaderOptions:
    """How files are appraised and where trees come from."""

    #: Attribute namespace: ``security`` (default) or ``user``.
    xattr_ns: str = "security"
    #: Untrusted tree store (cache or memory); None builds every tree inline.
    store: TreeProvider | None = None
    #: Largest span read and verified at once.
    chunk: int = 8 << 20
    #: Called with the time (s) an inline build took, for metrics.
    on_inline_build: Callable[[float], None] | None = None


@dataclass(frozen=True)
class Appraisal:
    """The outcome of appraising one open file: what its reads are checked against."""

    descriptor: Descriptor
    tree: TreeSource
    #: Where the tree came from: ``cache`` or ``inline``.
    tree_origin: str


def read_descriptor(fd: int, st: os.stat_result, *, name: str, xattr_ns: str) -> Descriptor:
    """The ``<ns>.verity`` descriptor of an open file, parsed strictly and bounded.

    Raises :class:`IntegrityError` if the file is not protected or its size is not the
    descriptor's ``data_size`` (the file changed since it was protected), :class:`FormatError`
    if the attribute is malformed or out of bounds.
    """
    attr = attr_name(xattr_ns, VERITY_SUFFIX)
    unverified_raw = get_attr(fd, attr, limit=Descriptor.SIZE)
    if unverified_raw is None:
        raise IntegrityError(
            f"'{name}' is not protected (no {attr} attribute)",
            remedy="protect it with `pyverity enable` or `pyverity sign`",
        )
    try:
        descriptor = Descriptor.from_bytes(unverified_raw)
        descriptor.params.geometry(descriptor.data_size).check_bounded()
    except FormatError as e:
        raise FormatError(f"'{name}': invalid {attr} attribute: {e}") from e
    if descriptor.data_size != st.st_size:
        raise IntegrityError(
            f"'{name}' is {st.st_size} bytes but was protected at {descriptor.data_size} bytes",
            remedy="the file changed since it was protected; sign or enable it again",
        )
    return descriptor


def appraise_fd(fd: int, descriptor: Descriptor, *, name: str, options: ReaderOptions) -> Appraisal:
    """Find (or build) the tree for ``descriptor`` of the open file ``fd``."""
    store = options.store
    digest = descriptor.digest()
    alg = descriptor.hash_alg.name
    if store is not None:
        cached = store.get(alg, digest)
        if cached is not None:
            return Appraisal(descriptor, MemoryTree(cached.unverified_tree), "cache")
    t0 = time.monotonic()
    tree = build_tree(fd, descriptor.params)
    elapsed = time.monotonic() - t0
    log.info("built the Merkle tree of '%s' inline in %.3f s", name, elapsed)
    if options.on_inline_build is not None:
        options.on_inline_build(elapsed)
    built = tree.descriptor
    if built.data_size != descriptor.data_size or not hmac.compare_digest(
        built.root_hash, descriptor.root_hash
    ):
        raise IntegrityError(
            f"'{name}': content does not match its descriptor (root hash differs)",
            remedy="the file changed since it was protected; sign or enable it again",
        )
    if store is not None:
        store.put(tree)
    return Appraisal(descriptor, MemoryTree(tree.tree or b""), "inline")
