"""Writing protection: sign or enable a file (DESIGN.md §2).

* :func:`sign_file` — build the tree, write the descriptor to ``<ns>.verity`` **first** and the
  0x06 v3 signature to ``<ns>.ima`` **last**, each in one ``setxattr``, so a watcher never
  pairs a new signature with an old descriptor.
* :func:`enable_file` — the unsigned mode: write only the descriptor; a stale 0x06 signature
  (which could no longer match) is removed after it.
* :func:`imasign_file` — classic ``evmctl ima_sign``: a 0x03 v2 signature over the whole-file
  hash (a stale descriptor is removed first, since descriptor + classic value is invalid);
  :func:`imasign_hashed` does the same for a hash computed elsewhere (``--cluster``).
* :func:`verity_values` / :func:`whole_file_hash` compute without writing (``--sigfile``,
  ``--builtin-sig``, and the verifier).

Everything opens the file once (regular files only) and writes attributes on that descriptor;
the file's identity (dev, ino, size, mtime) is checked between hashing and writing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.errors import FileChangedError, StorageError
from pyverity.format.descriptor import Descriptor
from pyverity.format.ima import ImaSignature, KernelHashAlgo, XattrType
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity, FileRef, identity, open_target
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr, remove_attr, set_attr
from pyverity.hashing import MerkleTree, build_tree
from pyverity.hashing.progress import CancelCheck, ProgressFn

if TYPE_CHECKING:  # keys (and cryptography) are imported only when signing
    from pyverity.keys.signer import Signer

__all__ = [
    "FileHash",
    "HashedFile",
    "SignedFile",
    "enable_file",
    "hash_file",
    "imasign_file",
    "imasign_hashed",
    "sign_file",
    "verity_values",
    "whole_file_hash",
    "write_hashed",
    "write_protection",
]

_CHUNK = 1 << 20
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HashedFile:
    """A file's computed descriptor and the identity it had while hashed (picklable, so
    worker processes can hash and the parent, which holds the key, can sign and write)."""

    path: str
    identity: FileIdentity
    descriptor: Descriptor
    #: How to open the file again to write (a walked file beneath its root); None: ``path``.
    source: FileRef | None = None

    def open(self) -> int:
        """The file opened again, as it was opened to be hashed."""
        return open_target(self.source if self.source is not None else self.path)


@dataclass(frozen=True)
class FileHash:
    """A file's whole-file hash (what a classic v2 signature signs) and the identity it had
    while hashed: computed elsewhere (a cluster's worker), signed and written here."""

    path: str
    identity: FileIdentity
    alg: KernelHashAlgo
    digest: bytes
    #: How to open the file again to write (a walked file beneath its root); None: ``path``.
    source: FileRef | None = None

    def open(self) -> int:
        return open_target(self.source if self.source is not None else self.path)


@dataclass(frozen=True)
class SignedFile:
    """What was computed (and, unless told otherwise, written) for one file."""

    path: str
    descriptor: Descriptor | None
    signature: ImaSignature | None
    #: The whole-file hash, for classic signatures.
    file_hash: bytes | None = None


def whole_file_hash(fd: int, alg: KernelHashAlgo, progress: ProgressFn | None = None) -> bytes:
    """Hash the whole content of ``fd`` with a kernel algorithm; refuse a file that changes."""
    before = identity(os.fstat(fd))
    h = alg.new()  # UnsupportedError for an algorithm hashlib lacks here
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
        if progress is not None:
            progress(offset)
    if offset != before.size or identity(os.fstat(fd)) != before:
        raise FileChangedError("file changed while it was being hashed")
    return h.digest()


def verity_values(
    fd: int,
    params: TreeParams,
    signer: Signer | None,
    *,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> tuple[MerkleTree, ImaSignature | None]:
    """Build the tree of ``fd`` (digest only) and, with a signer, its v3 signature."""
    tree = build_tree(fd, params, keep_tree=False, jobs=jobs, progress=progress, cancel=cancel)
    sig = None
    if signer is not None:
        from pyverity.keys.signer import sign_v3

        d = tree.descriptor
        sig = sign_v3(signer, d.hash_algorithm, d.digest())
    return tree, sig


def write_protection(
    fd: int, namespace: str, descriptor: Descriptor | None, signature: bytes | None
) -> None:
    """Write the descriptor first, then the IMA value; each in one ``setxattr``."""
    if descriptor is not None:
        set_attr(fd, attr_name(namespace, VERITY_SUFFIX), descriptor.to_bytes())
    if signature is not None:
        set_attr(fd, attr_name(namespace, IMA_SUFFIX), signature)


def _check_unchanged(fd: int, before: FileIdentity) -> None:
    if identity(os.fstat(fd)) != before:
        raise FileChangedError("file changed while it was being signed; nothing written")


def _restore(fd: int, name: str, old: bytes | None) -> None:
    """Put back the previous value (best effort) after a failed second write."""
    try:
        if old is None:
            remove_attr(fd, name)
        else:
            set_attr(fd, name, old)
    except StorageError:  # pragma: no cover - the first write worked, so this should too
        logger.warning("could not restore %s after a failed signature write", name)


def _label(path: str | os.PathLike[str] | FileRef) -> str:
    return path.path if isinstance(path, FileRef) else os.fsdecode(path)


def hash_file(
    path: str | os.PathLike[str] | FileRef,
    params: TreeParams | None = None,
    *,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> HashedFile:
    """Open ``path`` (regular files only; a :class:`FileRef` beneath its root) and compute its
    descriptor; no key needed."""
    fd = open_target(path)
    try:
        before = identity(os.fstat(fd))
        tree, _ = verity_values(
            fd, params or TreeParams(), None, jobs=jobs, progress=progress, cancel=cancel
        )
    finally:
        os.close(fd)
    source = path if isinstance(path, FileRef) else None
    return HashedFile(_label(path), before, tree.descriptor, source)


def write_hashed(
    hashed: HashedFile, signer: Signer | None, *, namespace: str = "security"
) -> SignedFile:
    """Sign (if ``signer``) and write a :func:`hash_file` result, if the file is unchanged.

    With a signer: descriptor, then the 0x06 signature. Without (``enable``): the descriptor,
    then a stale 0x06 signature, which could no longer match, is removed.
    """
    d = hashed.descriptor
    sig = None
    if signer is not None:
        from pyverity.keys.signer import sign_v3

        sig = sign_v3(signer, d.hash_algorithm, d.digest())
    fd = hashed.open()
    try:
        _check_unchanged(fd, hashed.identity)
        verity_name = attr_name(namespace, VERITY_SUFFIX)
        old_descriptor = get_attr(fd, verity_name)
        set_attr(fd, verity_name, d.to_bytes())
        if sig is not None:
            try:
                set_attr(fd, attr_name(namespace, IMA_SUFFIX), sig.to_bytes())
            except StorageError:
                _restore(fd, verity_name, old_descriptor)
                raise
        if sig is None:
            ima_name = attr_name(namespace, IMA_SUFFIX)
            old = get_attr(fd, ima_name)
            if old is not None and old[:1] == bytes([XattrType.IMA_VERITY_DIGSIG]):
                remove_attr(fd, ima_name)
    finally:
        os.close(fd)
    return SignedFile(hashed.path, d, sig)


def sign_file(
    path: str | os.PathLike[str] | FileRef,
    signer: Signer,
    params: TreeParams | None = None,
    *,
    namespace: str = "security",
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> SignedFile:
    """Sign ``path``: descriptor to ``<ns>.verity``, then the v3 signature to ``<ns>.ima``."""
    hashed = hash_file(path, params, jobs=jobs, progress=progress, cancel=cancel)
    return write_hashed(hashed, signer, namespace=namespace)


def enable_file(
    path: str | os.PathLike[str] | FileRef,
    params: TreeParams | None = None,
    *,
    namespace: str = "security",
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> SignedFile:
    """Protect ``path`` unsigned: write only ``<ns>.verity`` (drop a stale 0x06 signature)."""
    hashed = hash_file(path, params, jobs=jobs, progress=progress, cancel=cancel)
    return write_hashed(hashed, None, namespace=namespace)


def imasign_file(
    path: str | os.PathLike[str] | FileRef,
    signer: Signer,
    alg: KernelHashAlgo,
    *,
    namespace: str = "security",
    write: bool = True,
    progress: ProgressFn | None = None,
) -> SignedFile:
    """Classic signing (``evmctl ima_sign``): a 0x03 v2 signature over the whole-file hash.

    A stale ``<ns>.verity`` descriptor is removed first (descriptor + classic is invalid).
    """
    from pyverity.keys.signer import sign_v2

    fd = open_target(path)
    try:
        before = identity(os.fstat(fd))
        digest = whole_file_hash(fd, alg, progress)
        sig = sign_v2(signer, alg.id, digest)
        if write:
            _check_unchanged(fd, before)
            _write_classic(fd, namespace, sig)
    finally:
        os.close(fd)
    return SignedFile(_label(path), None, sig, digest)


def imasign_hashed(
    hashed: FileHash, signer: Signer, *, namespace: str = "security", write: bool = True
) -> SignedFile:
    """Sign a :class:`FileHash` as :func:`imasign_file` does and (``write``) write it the same
    way, on the file opened again, only if its identity is still the one hashed."""
    from pyverity.keys.signer import sign_v2

    sig = sign_v2(signer, hashed.alg.id, hashed.digest)
    if write:
        fd = hashed.open()
        try:
            _check_unchanged(fd, hashed.identity)
            _write_classic(fd, namespace, sig)
        finally:
            os.close(fd)
    return SignedFile(hashed.path, None, sig, hashed.digest)


def _write_classic(fd: int, namespace: str, sig: ImaSignature) -> None:
    """A stale descriptor out first (descriptor + classic value is invalid), then the value."""
    remove_attr(fd, attr_name(namespace, VERITY_SUFFIX))
    write_protection(fd, namespace, None, sig.to_bytes())
