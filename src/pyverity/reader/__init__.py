"""Verified reads (DESIGN.md §6): every block read is checked against the file's Merkle tree.

* :mod:`.options` — :class:`ReaderOptions` (policy, keyring, tree store, measurement list) and
  :class:`Access` (who opens the file).
* :mod:`.opening` — what happens at open: fs-verity for every file with a descriptor or a v3
  signature, whatever the policy says, then the policy's appraisal (through
  :mod:`pyverity.protect.gate`) and measurement (:mod:`.measuring`); the result is the
  :class:`ReadAnchor` (descriptor and untrusted tree) that reads are checked against.
* :mod:`.verifier` checks blocks against the tree (:mod:`.tree`: where tree bytes come from;
  :mod:`.hashpool`: threads that hash one long read; :mod:`.kernelread`: files whose pages
  the kernel's fs-verity verifies); :mod:`.file` is the verified file object; :mod:`.api`
  ``pyverity.open``.
"""

from pyverity.reader.api import open, open_fd  # noqa: A004
from pyverity.reader.file import VerifiedRawIO
from pyverity.reader.opening import ReadAnchor, StaleError, VerityOpenError
from pyverity.reader.options import Access, ReaderOptions
from pyverity.reader.tree import FileTree, MemoryTree, TreeSource
from pyverity.reader.verifier import BlockVerifier, VerificationError

__all__ = [
    "Access",
    "BlockVerifier",
    "FileTree",
    "MemoryTree",
    "ReadAnchor",
    "ReaderOptions",
    "StaleError",
    "TreeSource",
    "VerificationError",
    "VerifiedRawIO",
    "VerityOpenError",
    "open",
    "open_fd",
]
