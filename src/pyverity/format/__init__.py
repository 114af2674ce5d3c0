"""Pure byte formats: bytes <-> objects, no I/O (DESIGN.md §9). Field names are the kernel's.

Also the pure results of hashing: :mod:`.merkletree` (``MerkleTree``: a descriptor and its
tree) and :mod:`.digest` (``FileDigest`` and ``format_digest``/``parse_digest``, the one place
a digest's ``alg:hex`` text is written and read).
"""

from pyverity.format.descriptor import Descriptor
from pyverity.format.formatted_digest import FormattedDigest
from pyverity.format.hashalg import SHA256, SHA512, HashAlgorithm
from pyverity.format.params import TreeGeometry, TreeParams

__all__ = [
    "SHA256",
    "SHA512",
    "Descriptor",
    "FormattedDigest",
    "HashAlgorithm",
    "TreeGeometry",
    "TreeParams",
]
