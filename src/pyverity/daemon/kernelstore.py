"""The daemon's ``kernel`` backend (DESIGN.md §4): hand proven files to the kernel's fs-verity.

With ``backend = "kernel"`` the daemon still builds every tree itself and appraises it (the
computed root must equal the declared one, a signature must verify) before anything is handed
over; only then does it enable fs-verity with the descriptor's parameters
(:func:`pyverity.store.kernel.enable_fd`). From then on the kernel keeps the tree and checks
every page it reads, and the file is READY with nothing in pyverity's cache.

A file that already has fs-verity is READY without a build when the kernel's digest
(``FS_IOC_MEASURE_VERITY``, the hash of the descriptor it enforces) is the declared descriptor's
and that appraises; any other kernel digest makes it MISMATCH.

Where the kernel refuses (no fs-verity on the filesystem, a block size it cannot use, a writer
holding the file open), the file falls back to the cache backend: its tree goes to the cache and
the refusal is recorded in the file's ``error`` column, so ``pyverity status`` shows it.

The trade (opt-in): a file handed over is **read-only for good**; and the kernel hashes the
whole file again while enabling, in the daemon's main loop (a large file delays other events).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyverity.daemon.protection import appraise, mismatch
from pyverity.errors import Error, FileChangedError, IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import format_digest
from pyverity.format.merkletree import MerkleTree
from pyverity.fs.ioctl import VerityUnsupportedError
from pyverity.fs.openfile import FileIdentity
from pyverity.store import kernel

if TYPE_CHECKING:
    from pyverity.keys import Keyring
    from pyverity.protect import Protection
    from pyverity.protect.gate import Verdict

__all__ = ["FALLBACK", "adopt", "hand_over"]

log = logging.getLogger(__name__)

#: Prefix of the ``error`` column of a READY file the kernel refused (its tree is in the cache).
FALLBACK = "kernel fs-verity refused, tree kept in the cache: "


def adopt(fd: int, protection: Protection, keyring: Keyring | None) -> Verdict | None:
    """A file that already has fs-verity: the appraisal of the descriptor the kernel enforces.

    Decided from the kernel's digest (``FS_IOC_MEASURE_VERITY``): a declared descriptor is the
    enforced one exactly when its digest is the kernel's (nothing else is read). A v3 signature
    alone declares none: the kernel's descriptor is read back, or, where the filesystem cannot
    give it (btrfs), rebuilt from the file with the protection's tree parameters, which costs
    one hash of the file (:func:`pyverity.store.kernel.kernel_descriptor`).

    None when fs-verity is not enabled on it, or the filesystem has none (then it is built).
    """
    try:
        verity = kernel.kernel_digest(fd)
    except VerityUnsupportedError:
        return None
    if verity is None:
        return None
    digest = str(verity.digest)
    declared = protection.unverified_descriptor
    if declared is not None:
        if not verity.matches(declared):
            return mismatch(
                protection,
                f"fs-verity is enabled in the kernel with digest {digest}, not the declared"
                f" {format_digest(declared.hash_alg.name, declared.digest())}"
                " (the file is read-only now)",
                digest,
            )
        return appraise(protection, MerkleTree(declared, None), keyring)
    params = protection.tree_params()
    try:
        enforced = kernel.kernel_descriptor(fd, params)
    except kernel.OtherTreeParamsError:
        enforced = None
    if enforced is None or enforced.params != params:
        return mismatch(
            protection,
            f"fs-verity is enabled in the kernel with other tree parameters ({digest})",
            digest,
        )
    return appraise(protection, MerkleTree(enforced, None), keyring)


def hand_over(fd: int, label: str, descriptor: Descriptor, snapshot: FileIdentity) -> str:
    """Enable fs-verity on a proven file; ``""`` when the kernel now keeps its tree, else why
    the kernel refused (the caller falls back to the cache).

    Raises :class:`FileChangedError` when the file is no longer the one that was hashed (the
    build is retried) and :class:`IntegrityError` when it already has another fs-verity digest
    (MISMATCH).
    """
    try:
        kernel.enable_fd(fd, descriptor, label=label, unchanged_since=snapshot)
    except (FileChangedError, IntegrityError):
        raise
    except Error as e:
        log.warning("%s: %s%s", label, FALLBACK, e.message)
        return e.message
    return ""
