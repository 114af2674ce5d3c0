"""Where trees and per-file state live (DESIGN.md §4).

* :mod:`~pyverity.store.cache` — the content-addressed tree cache (untrusted on read) and the
  in-memory ``none`` backend;
* :mod:`~pyverity.store.statedb` — the SQLite (WAL) state database of the daemon;
* :mod:`~pyverity.store.checkpoint` — leaf-level hashes of partial builds, for resuming.
"""

from pyverity.store.cache import (
    CachedTree,
    MemoryStore,
    TreeCache,
    TreeStore,
    open_store,
    verify_tree,
)
from pyverity.store.statedb import FileRecord, State, StateDB

__all__ = [
    "CachedTree",
    "FileRecord",
    "MemoryStore",
    "State",
    "StateDB",
    "TreeCache",
    "TreeStore",
    "open_store",
    "verify_tree",
]
