"""pyverity: fs-verity Merkle trees and IMA signatures, byte-compatible with Linux.

The public API is re-exported here lazily, so that ``import pyverity`` stays cheap and a
command that only hashes never imports ``cryptography``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "build_tree": "pyverity.hashing.api",
    "compute_digest": "pyverity.hashing.api",
    "FileDigest": "pyverity.hashing.result",
    "MerkleTree": "pyverity.hashing.result",
    "TreeParams": "pyverity.format.params",
    "Descriptor": "pyverity.format.descriptor",
    "Error": "pyverity.errors",
    "open": "pyverity.reader.api",
}

if TYPE_CHECKING:
    from pyverity.errors import Error as Error
    from pyverity.format.descriptor import Descriptor as Descriptor
    from pyverity.format.params import TreeParams as TreeParams
    from pyverity.hashing.api import build_tree as build_tree
    from pyverity.hashing.api import compute_digest as compute_digest
    from pyverity.hashing.result import FileDigest as FileDigest
    from pyverity.hashing.result import MerkleTree as MerkleTree
    from pyverity.reader.api import open as open  # noqa: A004

__all__ = sorted(_LAZY)  # noqa: PLE0605


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyverity' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
