"""The ``kernel`` backend: hand a file's tree to the kernel's fs-verity (DESIGN.md §4).

Where the filesystem supports fs-verity (ext4 with ``-O verity``, f2fs, btrfs), a protected
file can be enabled with ``FS_IOC_ENABLE_VERITY`` using the parameters of its descriptor
(``<ns>.verity``). The kernel then builds and keeps the tree and checks every page it reads,
and pyverity's own cache is not needed for that file: its state is READY as long as the kernel's
digest (``FS_IOC_MEASURE_VERITY``) equals the declared one.

This trades the seed's write-tolerant lifecycle for kernel enforcement, so it is opt-in:

- the file becomes **read-only for good** (it can be replaced, renamed or deleted, not written);
- enabling fails while anyone has the file open for writing (ETXTBSY);
- kernels before 6.3 accept only a block size equal to the page size (4096 on x86-64), and
  ext4 there also needs a filesystem block size equal to the page size.

Every refusal is reported as one :class:`~pyverity.errors.Error` with a remedy. Enabling is
irreversible, so :func:`enable` makes sure first that the file still is what the descriptor
describes (unchanged since it was hashed, or hashed again), and checks the kernel's digest after.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from dataclasses import dataclass

from pyverity.errors import Error, FileChangedError, FormatError, IntegrityError, Reason
from pyverity.format import hashalg
from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import FileDigest, format_digest
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs import ioctl
from pyverity.fs.openfile import FileIdentity, identity, open_regular
from pyverity.hashing import build_tree

__all__ = [
    "KernelVerity",
    "OtherTreeParamsError",
    "enable",
    "enable_fd",
    "kernel_descriptor",
    "kernel_digest",
    "kernel_version",
    "read_tree",
    "supported_block_sizes",
]

log = logging.getLogger(__name__)

#: First kernel that accepts fs-verity block sizes other than the page size.
_SUBPAGE_BLOCKS_SINCE = (6, 3)
_MIN_BLOCK_SIZE = 1024


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of the running kernel (or of ``release``, e.g. ``"6.1.0-56-amd64"``)."""
    text = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def supported_block_sizes(
    fs_block_size: int, *, release: str | None = None, page_size: int | None = None
) -> tuple[int, ...]:
    """The fs-verity block sizes a kernel accepts on a filesystem (spec/fsverity.md §1.2)."""
    page = page_size or os.sysconf("SC_PAGE_SIZE")
    if kernel_version(release) < _SUBPAGE_BLOCKS_SINCE:
        return (page,)
    top = min(page, fs_block_size)
    return tuple(1 << n for n in range(10, 17) if _MIN_BLOCK_SIZE <= 1 << n <= top)


@dataclass(frozen=True)
class KernelVerity:
    """What the kernel enforces for one file: its fs-verity digest."""

    digest: FileDigest

    def matches(self, descriptor: Descriptor) -> bool:
        return self.digest.algorithm_number == descriptor.hash_algorithm and hmac.compare_digest(
            self.digest.digest, descriptor.digest()
        )


def kernel_digest(target: int | str | os.PathLike[str]) -> KernelVerity | None:
    """The kernel's digest of a verity file; None if fs-verity is not enabled on it.

    Raises :class:`~pyverity.fs.ioctl.VerityUnsupportedError` where the filesystem has no
    fs-verity at all (the caller then knows the kernel backend cannot be used there).
    """
    try:
        measured = ioctl.measure_verity(target)
    except ioctl.NotVerityError:
        return None
    alg = hashalg.by_number(measured.digest_algorithm)
    return KernelVerity(FileDigest(alg.name, measured.digest, alg.number))


def _named(err: Error, fd: int, label: str) -> Error:
    """``err`` (from :mod:`pyverity.fs.ioctl`, which names the descriptor) naming the path."""
    message = err.message.replace(f"'fd {fd}'", f"'{label}'")
    return err if message == err.message else type(err)(message, remedy=err.remedy)


def _block_size_error(err: Error, fd: int, label: str, block_size: int) -> Error:
    """A clearer diagnosis for EINVAL: usually a block size this kernel cannot use."""
    fs_block = os.fstatvfs(fd).f_bsize
    allowed = supported_block_sizes(fs_block)
    if block_size in allowed:
        return err
    release = os.uname().release
    sizes = ", ".join(str(b) for b in allowed)
    return FormatError(
        f"can't enable fs-verity on '{label}': kernel {release} accepts only block sizes"
        f" {sizes} on this filesystem (block size {fs_block}), the descriptor uses {block_size}",
        remedy="protect the file with --block-size 4096 (the page size), or use Linux 6.3+;"
        " the pyverity cache backend has no such limit",
    )


def enable(
    path: str | os.PathLike[str],
    descriptor: Descriptor,
    *,
    unchanged_since: FileIdentity | None = None,
    signature: bytes = b"",
) -> KernelVerity:
    """Enable fs-verity on ``path`` with ``descriptor``'s parameters; return what the kernel says.

    ``signature``: a built-in (PKCS#7) signature the kernel checks against its ``.fs-verity``
    keyring (``fsverity enable --signature``).

    Idempotent: a file that already has fs-verity with the descriptor's digest is left alone;
    with another digest it raises :class:`IntegrityError`. Before the irreversible ioctl the file
    must still be what ``descriptor`` describes: unchanged since ``unchanged_since`` (the
    identity it had when it was hashed), or, without it, hashed again now.
    """
    fd = open_regular(path)
    try:
        return enable_fd(
            fd,
            descriptor,
            label=os.fspath(path),
            unchanged_since=unchanged_since,
            signature=signature,
        )
    finally:
        os.close(fd)


def enable_fd(
    fd: int,
    descriptor: Descriptor,
    *,
    label: str,
    unchanged_since: FileIdentity | None = None,
    signature: bytes = b"",
) -> KernelVerity:
    """:func:`enable` on a file the caller opened read-only (e.g. beneath a root, no symlinks)."""
    try:
        current = kernel_digest(fd)
    except ioctl.VerityUnsupportedError as e:
        raise ioctl.VerityUnsupportedError(
            f"can't enable fs-verity on '{label}': this filesystem does not support it",
            remedy=e.remedy,
        ) from e
    except Error as e:
        raise _named(e, fd, label) from e
    if current is not None:
        if current.matches(descriptor):
            return current
        raise IntegrityError(
            f"'{label}' already has fs-verity with digest {current.digest}, not the"
            f" descriptor's {format_digest(descriptor.hash_alg.name, descriptor.digest())}",
            remedy="the file's content cannot change any more; write a descriptor for it"
            " as it is (pyverity enable) or replace the file",
        )
    _check_still_described(fd, label, descriptor, unchanged_since)
    try:
        ioctl.enable_verity(
            fd,
            hash_algorithm=descriptor.hash_algorithm,
            block_size=descriptor.block_size,
            salt=descriptor.salt,
            signature=signature,
        )
    except FormatError as e:  # EINVAL
        raise _block_size_error(_named(e, fd, label), fd, label, descriptor.block_size) from e
    except Error as e:
        raise _named(e, fd, label) from e
    done = kernel_digest(fd)
    if done is None or not done.matches(descriptor):
        got = done.digest if done is not None else "none"
        raise IntegrityError(
            f"fs-verity is now enabled on '{label}' with digest {got}, which is not the"
            f" descriptor's: the file was written while it was being enabled",
            remedy="the file is read-only now; write a new descriptor for it (pyverity enable)",
        )
    log.info("fs-verity enabled on %s (%s)", label, done.digest)
    return done


def _check_still_described(
    fd: int, label: str, descriptor: Descriptor, unchanged_since: FileIdentity | None
) -> None:
    st = os.fstat(fd)
    if st.st_size != descriptor.data_size:
        raise FileChangedError(
            f"'{label}' is {st.st_size} bytes, its descriptor says {descriptor.data_size}:"
            " the file changed since it was protected; fs-verity not enabled"
        )
    if unchanged_since is not None:
        if identity(st) != unchanged_since:
            raise FileChangedError(f"'{label}' changed since it was hashed; fs-verity not enabled")
        return
    ours = build_tree(fd, descriptor.params, keep_tree=False).descriptor
    if not hmac.compare_digest(ours.digest(), descriptor.digest()):
        raise IntegrityError(
            f"'{label}' does not match its descriptor (content changed since it was protected);"
            " fs-verity not enabled"
        )


def read_tree(target: int | str | os.PathLike[str], descriptor: Descriptor) -> MerkleTree:
    """The tree the kernel keeps for a verity file, if its descriptor is ``descriptor``.

    The bytes are the kernel's (``FS_IOC_READ_VERITY_METADATA``); as everything read from
    storage they are unverified until checked against the root (``store.cache.verify_tree``).
    """
    unverified = ioctl.read_all_verity_metadata(target, ioctl.METADATA_DESCRIPTOR, limit=256)
    if unverified != descriptor.to_bytes():
        raise IntegrityError("the kernel's fs-verity descriptor is not the declared one")
    size = descriptor.params.geometry(descriptor.data_size).tree_size
    tree = ioctl.read_all_verity_metadata(target, ioctl.METADATA_MERKLE_TREE, limit=size)
    if len(tree) != size:
        raise IntegrityError(f"the kernel's tree is {len(tree)} bytes, expected {size}")
    return MerkleTree(descriptor, tree)


class OtherTreeParamsError(IntegrityError):
    """The kernel enforces a descriptor it does not give back, and the file's tree with the
    parameters asked for is not it (so it has other tree parameters or salt)."""

    reason = Reason.CONTENT_MISMATCH


def kernel_descriptor(fd: int, params: TreeParams | None = None) -> Descriptor | None:
    """The descriptor the kernel enforces for the open file ``fd``; None if it is not verity.

    Read with ``FS_IOC_READ_VERITY_METADATA`` and checked against ``FS_IOC_MEASURE_VERITY``
    (the kernel's digest is the hash of this descriptor). Where the filesystem enables and
    measures but cannot give the descriptor back (btrfs: ENOTTY) and ``params`` are given, it
    is rebuilt from the file's content with ``params`` and accepted only if its digest is the
    kernel's; else :class:`OtherTreeParamsError`.

    The rebuild costs one read and hash of the whole file. It happens only where the kernel
    has a digest, i.e. on a file that is fs-verity (read-only for good, so the content hashed
    is the content the kernel enforces); files that are not verity cost one ioctl.

    Raises :class:`~pyverity.fs.ioctl.VerityUnsupportedError` where the filesystem has no
    fs-verity, or cannot give the descriptor back and no ``params`` are given.
    """
    verity = kernel_digest(fd)
    if verity is None:
        return None
    try:
        raw = ioctl.read_all_verity_metadata(fd, ioctl.METADATA_DESCRIPTOR, limit=256)
    except ioctl.VerityUnsupportedError:
        if params is None:
            raise
        return _rebuilt_descriptor(fd, params, verity)
    descriptor = Descriptor.from_bytes(raw)
    if not verity.matches(descriptor):
        raise IntegrityError("the kernel's fs-verity descriptor does not hash to its digest")
    return descriptor


def _rebuilt_descriptor(fd: int, params: TreeParams, verity: KernelVerity) -> Descriptor:
    """The descriptor of ``fd``'s content with ``params``, if the kernel enforces it."""
    t0 = time.monotonic()
    descriptor = build_tree(fd, params, keep_tree=False).descriptor
    log.debug(
        "fs-verity descriptor not readable from the kernel: rebuilt in %.3f s",
        time.monotonic() - t0,
    )
    if not verity.matches(descriptor):
        raise OtherTreeParamsError(
            f"fs-verity is enabled in the kernel with digest {verity.digest}, which is not the"
            f" digest of the content's tree with {params.hash_alg.name},"
            f" {params.block_size}-byte blocks and {len(params.salt)} bytes of salt",
            remedy="the kernel enforces other tree parameters than the file's protection;"
            " protect the file with the kernel's (pyverity measure shows its digest)",
        )
    return descriptor
