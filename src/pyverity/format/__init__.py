"""Pure byte formats: bytes <-> objects, no I/O (DESIGN.md §9). Field names are the kernel's."""

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
