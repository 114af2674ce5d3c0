"""The kernel's fs-verity ioctls, typed (spec/fsverity.md §6).

``measure_verity``, ``enable_verity``, ``read_verity_metadata`` and ``is_verity`` take an open
descriptor or a path (opened read-only for the call). Errors become :mod:`pyverity.errors`
exceptions with a clear diagnosis: :class:`NotVerityError` (ENODATA),
:class:`VerityUnsupportedError` (ENOTTY, EOPNOTSUPP), and the enable errors of spec §6.2
(EEXIST, ETXTBSY, EINVAL, EMSGSIZE, EPERM, signature errors).

Tiny script::

    from pyverity.fs import ioctl
    print(ioctl.measure_verity("/mnt/file"))          # sha256:...
    ioctl.enable_verity("/mnt/file", block_size=4096)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pyverity.errors import (
    Error,
    FormatError,
    InputError,
    SignatureError,
    StorageError,
)
from pyverity.format.digest import format_digest

__all__ = [
    "FS_IOC_ENABLE_VERITY",
    "FS_IOC_GETFLAGS",
    "FS_IOC_MEASURE_VERITY",
    "FS_IOC_READ_VERITY_METADATA",
    "FS_VERITY_FL",
    "METADATA_DESCRIPTOR",
    "METADATA_MERKLE_TREE",
    "METADATA_SIGNATURE",
    "EnableArg",
    "MeasuredDigest",
    "NotVerityError",
    "ReadMetadataArg",
    "VerityUnsupportedError",
    "enable_verity",
    "get_flags",
    "is_verity",
    "measure_verity",
    "read_all_verity_metadata",
    "read_verity_metadata",
]

Target = int | str | os.PathLike[str]

# _IOC encoding: asm-generic (x86, arm, arm64, riscv, s390, ...) uses 2 direction bits at 30 and
# a 14-bit size; powerpc, mips, sparc and alpha use 3 direction bits at 29 and a 13-bit size.
_OLD_STYLE = platform.machine().startswith(("ppc", "powerpc", "mips", "sparc", "alpha"))
_IOC_WRITE, _IOC_READ = (4, 2) if _OLD_STYLE else (1, 2)
_IOC_DIRSHIFT = 29 if _OLD_STYLE else 30


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (size << 16) | (ord(kind) << 8) | nr


class EnableArg:
    """``struct fsverity_enable_arg`` (128 bytes, native endian; spec §6.2).

    ``pack`` needs the addresses of the salt and signature buffers, which the caller keeps
    alive during the ioctl (see :func:`enable_verity`).
    """

    STRUCT = struct.Struct("=IIIIQIIQ88x")
    SIZE = 128
    VERSION = 1
    MAX_SALT_SIZE = 32
    #: FS_VERITY_MAX_DESCRIPTOR_SIZE (16384) minus the 256-byte descriptor.
    MAX_SIG_SIZE = 16128

    @classmethod
    def pack(
        cls,
        *,
        hash_algorithm: int,
        block_size: int,
        salt_size: int,
        salt_ptr: int,
        sig_size: int,
        sig_ptr: int,
    ) -> bytes:
        return cls.STRUCT.pack(
            cls.VERSION, hash_algorithm, block_size, salt_size, salt_ptr, sig_size, 0, sig_ptr
        )


@dataclass(frozen=True)
class MeasuredDigest:
    """``struct fsverity_digest`` as ``FS_IOC_MEASURE_VERITY`` fills it (native endian)."""

    HEADER = struct.Struct("=HH")
    #: FS_VERITY_MAX_DIGEST_SIZE: the buffer capacity we offer the kernel.
    MAX_DIGEST_SIZE = 64

    digest_algorithm: int
    digest: bytes

    @classmethod
    def request(cls) -> bytearray:
        """An empty structure with room for the largest digest (``digest_size`` = capacity)."""
        return bytearray(cls.HEADER.pack(0, cls.MAX_DIGEST_SIZE) + bytes(cls.MAX_DIGEST_SIZE))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> MeasuredDigest:
        if len(data) < cls.HEADER.size:
            raise FormatError("fsverity_digest is truncated")
        alg, size = cls.HEADER.unpack_from(data)
        if size > len(data) - cls.HEADER.size:
            raise FormatError(f"fsverity_digest claims {size} digest bytes")
        return cls(alg, bytes(data[cls.HEADER.size : cls.HEADER.size + size]))

    @property
    def algorithm(self) -> str:
        """``sha256``/``sha512``, or ``ALG_<n>`` for a number we do not know (as fsverity)."""
        return {1: "sha256", 2: "sha512"}.get(self.digest_algorithm, f"ALG_{self.digest_algorithm}")

    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return format_digest(self.algorithm, self.digest)


class ReadMetadataArg:
    """``struct fsverity_read_metadata_arg`` (40 bytes; spec §6.4)."""

    STRUCT = struct.Struct("=QQQQQ")
    SIZE = 40

    @classmethod
    def pack(cls, *, metadata_type: int, offset: int, length: int, buf_ptr: int) -> bytes:
        return cls.STRUCT.pack(metadata_type, offset, length, buf_ptr, 0)


FS_IOC_ENABLE_VERITY = _ioc(_IOC_WRITE, "f", 133, EnableArg.SIZE)
FS_IOC_MEASURE_VERITY = _ioc(_IOC_READ | _IOC_WRITE, "f", 134, MeasuredDigest.HEADER.size)
FS_IOC_READ_VERITY_METADATA = _ioc(_IOC_READ | _IOC_WRITE, "f", 135, ReadMetadataArg.SIZE)
FS_IOC_GETFLAGS = _ioc(_IOC_READ, "f", 1, ctypes.sizeof(ctypes.c_long))
FS_VERITY_FL = 0x00100000

METADATA_MERKLE_TREE = 1
METADATA_DESCRIPTOR = 2
METADATA_SIGNATURE = 3
#: Largest item read by :func:`read_all_verity_metadata` unless told otherwise (a tree of a
#: 16 TiB file with 4 KiB blocks is ~130 GiB: callers reading trees should pass their size).
DEFAULT_METADATA_LIMIT = 1 << 30


class NotVerityError(InputError):
    """The file does not have fs-verity enabled (ENODATA)."""


class VerityUnsupportedError(StorageError):
    """The filesystem (or kernel) does not support fs-verity (ENOTTY, EOPNOTSUPP)."""


@contextlib.contextmanager
def _opened(target: Target) -> Iterator[tuple[int, str]]:
    """``(fd, label)``: the descriptor given, or ``target`` opened read-only for the call."""
    if isinstance(target, int):
        yield target, f"fd {target}"
        return
    label = os.fsdecode(target)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise InputError(f"can't open '{label}' for reading: {e.strerror}") from e
    try:
        yield fd, label
    finally:
        os.close(fd)


def error_for(op: str, label: str, err: OSError) -> Error:
    """The :mod:`pyverity.errors` exception for ``err`` from ioctl ``op`` on ``label``."""
    code = err.errno
    what = f"{op} failed on '{label}'"
    if code == errno.ENODATA:
        if op == "FS_IOC_READ_VERITY_METADATA(signature)":
            return NotVerityError(f"{what}: the file has no built-in signature")
        return NotVerityError(f"{what}: fs-verity is not enabled on this file")
    if code == errno.ENOTTY and op.startswith("FS_IOC_READ_VERITY_METADATA"):
        return VerityUnsupportedError(
            f"{what}: this filesystem does not let fs-verity metadata be read back"
            f" ({err.strerror}; btrfs implements only enable and measure)",
            remedy="read the tree and descriptor on ext4 or f2fs, or rebuild them from the file",
        )
    if code in (errno.ENOTTY, errno.EOPNOTSUPP):
        return VerityUnsupportedError(
            f"{what}: this filesystem does not support fs-verity ({err.strerror})",
            remedy="fs-verity needs ext4 (mkfs/tune2fs -O verity), f2fs (-O verity) or btrfs,"
            " and a kernel with CONFIG_FS_VERITY",
        )
    messages: dict[int, tuple[type[Error], str]] = {
        errno.EEXIST: (InputError, "fs-verity is already enabled on this file"),
        errno.ETXTBSY: (
            InputError,
            (
                "the file is open for writing (by this or another process, or a shared"
                " writable mmap); close all writers first"
            ),
        ),
        errno.EINVAL: (
            FormatError,
            (
                "the kernel refused the parameters (algorithm, block size: a power of 2 from"
                " 1024 to the page and filesystem block size), or the file is not regular"
            ),
        ),
        errno.EMSGSIZE: (FormatError, "salt (max 32 bytes) or signature (max 16128) too large"),
        errno.EFBIG: (FormatError, "the file is too large for a tree of at most 8 levels"),
        errno.EPERM: (
            InputError,
            (
                "operation not permitted: the file is append-only, or the kernel requires"
                " signed files (fs.verity.require_signatures)"
            ),
        ),
        errno.EACCES: (InputError, "no write permission on the file (enable needs it)"),
        errno.EBADF: (InputError, "the descriptor is not open for reading"),
        errno.EISDIR: (InputError, "it is a directory"),
        errno.EROFS: (StorageError, "the filesystem is mounted read-only"),
        errno.EBUSY: (StorageError, "fs-verity is already being enabled on this file"),
        errno.EOVERFLOW: (FormatError, "the digest is larger than the buffer"),
        errno.EBADMSG: (SignatureError, "the built-in signature is malformed"),
        errno.EKEYREJECTED: (SignatureError, "the built-in signature does not verify"),
        errno.ENOKEY: (SignatureError, "the signing certificate is not in the .fs-verity keyring"),
    }
    cls, text = messages.get(code or 0, (StorageError, err.strerror or str(err)))
    return cls(f"{what}: {text}")


def measure_verity(target: Target) -> MeasuredDigest:
    """The digest the kernel enforces for a verity file (``FS_IOC_MEASURE_VERITY``)."""
    buf = MeasuredDigest.request()
    with _opened(target) as (fd, label):
        try:
            fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf, True)
        except OSError as e:
            raise error_for("FS_IOC_MEASURE_VERITY", label, e) from e
    return MeasuredDigest.from_bytes(buf)


def enable_verity(
    target: Target,
    *,
    hash_algorithm: int = 1,
    block_size: int = 4096,
    salt: bytes = b"",
    signature: bytes = b"",
) -> None:
    """``FS_IOC_ENABLE_VERITY``: the kernel builds the tree and makes the file read-only.

    ``target`` must not be open for writing anywhere (else ETXTBSY); a path is opened
    read-only. The kernel checks the parameters; sizes are checked here first.
    """
    if len(salt) > EnableArg.MAX_SALT_SIZE:
        raise FormatError(f"salt is {len(salt)} bytes, at most {EnableArg.MAX_SALT_SIZE}")
    if len(signature) > EnableArg.MAX_SIG_SIZE:
        raise FormatError(f"signature is {len(signature)} bytes, at most {EnableArg.MAX_SIG_SIZE}")
    salt_buf = ctypes.create_string_buffer(salt, len(salt) or 1)
    sig_buf = ctypes.create_string_buffer(signature, len(signature) or 1)
    arg = EnableArg.pack(
        hash_algorithm=hash_algorithm,
        block_size=block_size,
        salt_size=len(salt),
        salt_ptr=ctypes.addressof(salt_buf) if salt else 0,
        sig_size=len(signature),
        sig_ptr=ctypes.addressof(sig_buf) if signature else 0,
    )
    with _opened(target) as (fd, label):
        try:
            fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
        except OSError as e:
            raise error_for("FS_IOC_ENABLE_VERITY", label, e) from e
    del salt_buf, sig_buf  # kept alive until here: the kernel read them during the call


_TYPE_NAMES = {
    METADATA_MERKLE_TREE: "merkle_tree",
    METADATA_DESCRIPTOR: "descriptor",
    METADATA_SIGNATURE: "signature",
}


def read_verity_metadata(target: Target, metadata_type: int, offset: int, length: int) -> bytes:
    """One ``FS_IOC_READ_VERITY_METADATA`` call: up to ``length`` bytes at ``offset``.

    Returns fewer bytes near the end of the item and ``b""`` past it (as ``pread``).
    """
    with _opened(target) as (fd, label):
        return _read_metadata(fd, label, metadata_type, offset, length)


def _read_metadata(fd: int, label: str, metadata_type: int, offset: int, length: int) -> bytes:
    if metadata_type not in _TYPE_NAMES:
        raise FormatError(f"unknown fs-verity metadata type {metadata_type}")
    if offset < 0 or length < 0 or offset + length >= 1 << 64:
        raise FormatError("metadata offset/length out of range")
    length = min(length, (1 << 31) - 1)
    buf = ctypes.create_string_buffer(max(length, 1))
    arg = bytearray(
        ReadMetadataArg.pack(
            metadata_type=metadata_type,
            offset=offset,
            length=length,
            buf_ptr=ctypes.addressof(buf),
        )
    )
    op = f"FS_IOC_READ_VERITY_METADATA({_TYPE_NAMES[metadata_type]})"
    while True:
        try:
            n = fcntl.ioctl(fd, FS_IOC_READ_VERITY_METADATA, arg, True)
            break
        except InterruptedError:
            continue
        except OSError as e:
            raise error_for(op, label, e) from e
    return buf.raw[:n]


def read_all_verity_metadata(
    target: Target, metadata_type: int, *, limit: int = DEFAULT_METADATA_LIMIT
) -> bytes:
    """A whole metadata item (tree, descriptor or signature), read in chunks until its end."""
    chunk = 1 << 20
    out = bytearray()
    with _opened(target) as (fd, label):
        while True:
            want = min(chunk, limit + 1 - len(out))
            part = _read_metadata(fd, label, metadata_type, len(out), want)
            if not part:
                return bytes(out)
            out += part
            if len(out) > limit:
                raise FormatError(f"fs-verity metadata is larger than {limit} bytes")


def get_flags(target: Target) -> int:
    """The inode flags (``FS_IOC_GETFLAGS``; the kernel writes a 32-bit int)."""
    buf = bytearray(8)
    with _opened(target) as (fd, label):
        try:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        except OSError as e:
            raise error_for("FS_IOC_GETFLAGS", label, e) from e
    value: int = struct.unpack_from("=I", buf)[0]
    return value


def is_verity(target: Target) -> bool:
    """Whether fs-verity is enabled (``FS_VERITY_FL``); False where flags are unsupported."""
    try:
        return bool(get_flags(target) & FS_VERITY_FL)
    except VerityUnsupportedError:
        return False
