"""pyverity: fs-verity Merkle trees and IMA signatures, byte-compatible with Linux.

The public API is re-exported here lazily, so that ``import pyverity`` stays cheap and a
command that only hashes never imports ``cryptography``:

- hashing: ``compute_digest``, ``build_tree`` (``TreeParams``, ``Descriptor``, ``MerkleTree``,
  ``FileDigest``), byte-identical to ``fsverity digest``;
- keys and protection: ``generate_key``, ``load_signer``, ``Keyring``, ``sign_file``,
  ``enable_file``, ``verify_file`` (raises) / ``appraise_file`` (returns a result);
- verified reads: ``open`` (a read-only file object; every block checked against its tree);
- policy and measurement: ``Policy``, ``MeasurementLog``;
- errors: every failure is a ``pyverity.Error``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "build_tree": "pyverity.hashing.api",
    "compute_digest": "pyverity.hashing.api",
    "FileDigest": "pyverity.format.digest",
    "MerkleTree": "pyverity.format.merkletree",
    "TreeParams": "pyverity.format.params",
    "Descriptor": "pyverity.format.descriptor",
    "Error": "pyverity.errors",
    "open": "pyverity.reader.api",
    "sign_file": "pyverity.protect.sign",
    "enable_file": "pyverity.protect.sign",
    "verify_file": "pyverity.protect.check",
    "appraise_file": "pyverity.protect.check",
    "load_signer": "pyverity.keys.signer",
    "generate_key": "pyverity.keys.generate",
    "Keyring": "pyverity.keys.keyring",
    "Policy": "pyverity.policy.engine",
    "MeasurementLog": "pyverity.measure.log",
}

if TYPE_CHECKING:
    from pyverity.errors import Error as Error
    from pyverity.format.descriptor import Descriptor as Descriptor
    from pyverity.format.digest import FileDigest as FileDigest
    from pyverity.format.merkletree import MerkleTree as MerkleTree
    from pyverity.format.params import TreeParams as TreeParams
    from pyverity.hashing.api import build_tree as build_tree
    from pyverity.hashing.api import compute_digest as compute_digest
    from pyverity.keys.generate import generate_key as generate_key
    from pyverity.keys.keyring import Keyring as Keyring
    from pyverity.keys.signer import load_signer as load_signer
    from pyverity.measure.log import MeasurementLog as MeasurementLog
    from pyverity.policy.engine import Policy as Policy
    from pyverity.protect.check import appraise_file as appraise_file
    from pyverity.protect.check import verify_file as verify_file
    from pyverity.protect.sign import enable_file as enable_file
    from pyverity.protect.sign import sign_file as sign_file
    from pyverity.reader.api import open as open  # noqa: A004

__all__ = sorted(_LAZY)  # noqa: PLE0605


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyverity' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
