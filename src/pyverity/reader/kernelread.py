"""Reads of files whose pages the kernel verifies (fs-verity enabled, the ``kernel`` backend).

When a file has fs-verity enabled and the kernel's digest (``FS_IOC_MEASURE_VERITY``) equals
the digest of the descriptor that was just appraised (signature and all), every page the kernel
hands out has been checked against that very tree by the kernel itself, and the file cannot be
written any more. Reads are then served by plain ``pread``, with no hashing in Python.

The trade, stated plainly: for such a file pyverity trusts the running kernel's fs-verity to
verify the data (as ``fsverity``/IMA users do) instead of checking each block itself; a kernel
that lies about its digest or skips verification is outside pyverity's threat model (it could
as well change any byte pyverity reads). Files without kernel fs-verity, or whose kernel digest
differs, are verified block by block as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyverity.errors import Error
from pyverity.format.descriptor import Descriptor
from pyverity.reader.tree import MemoryTree
from pyverity.reader.verifier import BlockVerifier, Buffer
from pyverity.store.kernel import kernel_descriptor, kernel_digest

if TYPE_CHECKING:
    from pyverity.format.params import TreeParams

__all__ = ["KernelVerified", "kernel_descriptor_of", "kernel_enforces"]


def kernel_enforces(fd: int, descriptor: Descriptor) -> bool:
    """Whether the kernel verifies ``fd``'s pages against exactly ``descriptor``'s tree.

    The comparison of the kernel's digest with the descriptor's is
    :meth:`~pyverity.store.kernel.KernelVerity.matches`, the one the kernel backend uses.
    """
    try:
        verity = kernel_digest(fd)
    except Error:  # no fs-verity on this filesystem, or the ioctl failed: verify ourselves
        return False
    return verity is not None and verity.matches(descriptor)


def kernel_descriptor_of(fd: int, params: TreeParams | None = None) -> Descriptor | None:
    """The descriptor the kernel verifies ``fd``'s pages against; None if not fs-verity here.

    With ``params`` (a v3 signature alone, which declares no descriptor), where the filesystem
    cannot give the descriptor back (btrfs), it is rebuilt from the file with ``params`` and
    taken only if its digest is the kernel's (:func:`~pyverity.store.kernel.kernel_descriptor`).
    That rebuild is one full hash of the file at open, done only when the file is fs-verity
    (the kernel has a digest for it); it replaces the tree build such an open would need
    anyway, but a measure rule without ``digest_type=verity`` then reads the file once more.
    """
    try:
        return kernel_descriptor(fd, params)
    except Error:
        return None


class KernelVerified(BlockVerifier):
    """The verifier of a file the kernel verifies (:func:`kernel_enforces` was true at open).

    :meth:`verify_blocks` checks nothing: every byte ``pread`` returned was verified by the
    kernel's fs-verity against the appraised descriptor's tree.
    """

    def __init__(self, descriptor: Descriptor, *, name: str | None = None) -> None:
        super().__init__(descriptor, MemoryTree(b""), name=name)

    def verify_blocks(self, first: int, data: Buffer) -> None:
        return None
