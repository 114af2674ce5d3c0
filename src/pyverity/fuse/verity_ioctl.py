"""The fs-verity ioctls FUSE forwards to its server (Linux ≥ 6.10), spec/fsverity.md §6.

In FUSE's restricted ioctl mode the kernel copies the argument for us: for
``FS_IOC_MEASURE_VERITY`` one buffer of ``4 + digest_size`` bytes (in and out), for
``FS_IOC_ENABLE_VERITY`` the 128-byte ``fsverity_enable_arg`` followed by the salt and the
signature. libfuse hands the server that buffer as ``data``; these functions parse and fill it.

Kernels before 6.10 forward both ioctls too, but as any restricted ioctl: only the
``_IOC_SIZE`` of the command, 4 bytes for ``FS_IOC_MEASURE_VERITY`` (no room for the digest;
writing it overran libfuse's buffer and crashed the server, seen on Debian's 6.1) and the
128-byte structure without salt or signature for ``FS_IOC_ENABLE_VERITY``. libfuse's
high-level API does not tell the server the buffer's size, so the kernel's version decides
(:func:`kernel_forwards_verity`): before 6.10 both answer ENOTTY, as a filesystem without
fs-verity does.

A built-in signature given to ``FS_IOC_ENABLE_VERITY`` is checked against the mount's
``--keyring`` by the appraisal gate (:func:`pyverity.protect.gate.builtin_signature_result`,
over :mod:`pyverity.keys.pkcs7`), its reason mapped to the kernel's errnos: EBADMSG malformed,
ENOKEY no such certificate (or no keyring at all: the kernel's empty ``.fs-verity`` keyring),
EKEYREJECTED the signature does not verify.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.errors import FormatError, Reason
from pyverity.format.descriptor import Descriptor
from pyverity.format.hashalg import by_number
from pyverity.format.params import MAX_SALT_SIZE, TreeParams
from pyverity.store.kernel import kernel_version

if TYPE_CHECKING:
    from pyverity.keys.keyring import Keyring

__all__ = [
    "FORWARDED_SINCE",
    "FS_IOC_ENABLE_VERITY",
    "FS_IOC_GETFLAGS",
    "FS_IOC_MEASURE_VERITY",
    "FS_VERITY_FL",
    "EnableRequest",
    "check_builtin_signature",
    "kernel_forwards_verity",
    "parse_enable",
    "write_flags",
    "write_measure",
]

FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686
#: ``_IOR('f', 1, long)``: 64-bit and 32-bit encodings; both transfer a 32-bit int.
FS_IOC_GETFLAGS = (0x80086601, 0x80046601)
FS_VERITY_FL = 0x00100000
#: First kernel whose FUSE hands the server the whole argument of the two fs-verity ioctls.
FORWARDED_SINCE = (6, 10)
#: ``struct fsverity_enable_arg`` (native endian, 128 bytes).
_ENABLE = struct.Struct("=IIIIQIIQ88s")
#: ``struct fsverity_digest`` header (native endian).
_DIGEST = struct.Struct("=HH")
MAX_SIG_SIZE = 16128

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnableRequest:
    params: TreeParams
    signature: bytes


def kernel_forwards_verity(release: str | None = None) -> bool:
    """Whether the kernel (the running one, or ``release``) forwards ``FS_IOC_MEASURE_VERITY``
    and ``FS_IOC_ENABLE_VERITY`` on FUSE with their variable-length arguments (Linux 6.10)."""
    return kernel_version(release) >= FORWARDED_SINCE


def _os_error(code: int, message: str) -> OSError:
    return OSError(code, message)


def write_measure(data: int, descriptor: Descriptor) -> None:
    """Answer ``FS_IOC_MEASURE_VERITY`` into the kernel-prepared buffer at address ``data``."""
    _, capacity = _DIGEST.unpack(ctypes.string_at(data, _DIGEST.size))
    digest = descriptor.digest()
    if capacity < len(digest):
        raise _os_error(errno.EOVERFLOW, "digest buffer too small")
    out = _DIGEST.pack(descriptor.hash_algorithm, len(digest)) + digest
    ctypes.memmove(data, out, len(out))


def write_flags(data: int, flags: int) -> None:
    """Answer ``FS_IOC_GETFLAGS`` (the kernel asks through ``fileattr_get``, e.g. ``lsattr``)."""
    ctypes.memmove(data, struct.pack("=I", flags), 4)


def parse_enable(data: int) -> EnableRequest:
    """Parse ``FS_IOC_ENABLE_VERITY``'s argument, with the kernel's checks in its order."""
    (version, alg, block_size, salt_size, _salt_ptr, sig_size, reserved1, _sig_ptr, reserved2) = (
        _ENABLE.unpack(ctypes.string_at(data, _ENABLE.size))
    )
    if version != 1 or reserved1 or any(reserved2):
        raise _os_error(errno.EINVAL, "bad fsverity_enable_arg version or reserved field")
    if block_size <= 0 or block_size & (block_size - 1):
        raise _os_error(errno.EINVAL, "block size is not a power of 2")
    if salt_size > MAX_SALT_SIZE or sig_size > MAX_SIG_SIZE:
        raise _os_error(errno.EMSGSIZE, "salt or signature too large")
    tail = ctypes.string_at(data + _ENABLE.size, salt_size + sig_size)
    try:
        params = TreeParams(by_number(alg), block_size, tail[:salt_size])
        params.check_bounded()
    except FormatError as e:
        raise _os_error(errno.EINVAL, str(e)) from e
    return EnableRequest(params, tail[salt_size:])


#: The kernel's errno for each reason a built-in signature is refused.
_BUILTIN_ERRNO = {
    Reason.MALFORMED: errno.EBADMSG,
    Reason.NO_KEYRING: errno.ENOKEY,
    Reason.UNKNOWN_KEY: errno.ENOKEY,
    Reason.BAD_SIGNATURE: errno.EKEYREJECTED,
}


def check_builtin_signature(
    path: str, signature: bytes, descriptor: Descriptor, keyring: Keyring | None
) -> None:
    """Verify a built-in (PKCS#7) signature over ``descriptor``'s digest through the gate;
    OSError with the kernel's errno when it is refused."""
    from pyverity.protect.gate import builtin_signature_result

    verdict = builtin_signature_result(descriptor, signature, keyring)
    if not verdict.failed:
        log.info("built-in signature of '%s' verified: %s", path, verdict.message)
        return
    code = _BUILTIN_ERRNO.get(verdict.reason, errno.EBADMSG)
    if verdict.reason is Reason.NO_KEYRING:
        log.warning(
            "FS_IOC_ENABLE_VERITY on '%s' with a built-in signature refused: the mount has no"
            " --keyring to check it against (ENOKEY, as the kernel with an empty .fs-verity"
            " keyring)",
            path,
        )
    else:
        log.warning(
            "built-in signature of '%s' refused (%s): %s",
            path,
            errno.errorcode[code],
            verdict.message,
        )
    raise _os_error(code, verdict.message) from verdict.error
