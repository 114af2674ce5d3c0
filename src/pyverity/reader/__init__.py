"""Verified reads (DESIGN.md §6): every block read is checked against the file's Merkle tree."""

from pyverity.reader.api import open, open_fd  # noqa: A004
from pyverity.reader.appraise import Access, Appraisal, ReaderOptions
from pyverity.reader.file import VerifiedRawIO
from pyverity.reader.tree import FileTree, MemoryTree, TreeSource
from pyverity.reader.verifier import BlockVerifier, VerificationError

__all__ = [
    "Access",
    "Appraisal",
    "BlockVerifier",
    "FileTree",
    "MemoryTree",
    "ReaderOptions",
    "TreeSource",
    "VerificationError",
    "VerifiedRawIO",
    "open",
    "open_fd",
]
