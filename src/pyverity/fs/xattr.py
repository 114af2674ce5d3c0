"""Extended attributes, read from and written to an open descriptor (or a path, not followed).

Attribute values are untrusted input: reads are size-bounded before anything is allocated. A
write is one ``setxattr`` call, so a reader never sees half a value.
"""

from __future__ import annotations

import errno
import os

from pyverity.errors import FormatError, StorageError

__all__ = [
    "IMA_SUFFIX",
    "MAX_ATTR_SIZE",
    "NAMESPACES",
    "VERITY_SUFFIX",
    "attr_name",
    "get_attr",
    "remove_attr",
    "set_attr",
]

#: Namespaces an operator may configure (DESIGN.md §2): ``security`` needs privilege to write;
#: ``user`` protects against accidents only, not against anyone who can write the file.
NAMESPACES = ("security", "user")
IMA_SUFFIX = "ima"
VERITY_SUFFIX = "verity"
#: Larger than any value we accept (a 256-byte descriptor, a signature of at most a few KiB).
MAX_ATTR_SIZE = 16384

Target = int | str | os.PathLike[str]


def attr_name(namespace: str, suffix: str) -> str:
    """``<ns>.<suffix>``, e.g. ``security.ima``; the namespace must be a known one."""
    if namespace not in NAMESPACES:
        raise FormatError(f"unknown attribute namespace '{namespace}' (use security or user)")
    return f"{namespace}.{suffix}"


def get_attr(target: Target, name: str, *, limit: int = MAX_ATTR_SIZE) -> bytes | None:
    """The value of attribute ``name``, or None if absent; :class:`FormatError` if over ``limit``.

    Paths are not followed (a symlink's own attributes are read, which never carry ours).
    """
    try:
        if isinstance(target, int):
            value = os.getxattr(target, name)
        else:
            value = os.getxattr(target, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        if e.errno in (errno.E2BIG, errno.ERANGE):
            raise FormatError(f"attribute {name} is larger than {limit} bytes") from e
        raise StorageError(f"cannot read attribute {name}: {e.strerror}") from e
    if len(value) > limit:
        raise FormatError(f"attribute {name} is {len(value)} bytes, more than {limit}")
    return value


def set_attr(target: Target, name: str, value: bytes) -> None:
    """Write ``value`` to attribute ``name`` in one ``setxattr`` call."""
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)
    except OSError as e:
        remedy = None
        if e.errno in (errno.EPERM, errno.EACCES) and name.startswith("security."):
            remedy = "security.* attributes need root (CAP_SYS_ADMIN); or use --xattr-ns user"
        elif e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            remedy = "this filesystem does not support these extended attributes"
        raise StorageError(f"cannot write attribute {name}: {e.strerror}", remedy=remedy) from e


def remove_attr(target: Target, name: str) -> bool:
    """Remove attribute ``name``; returns False if it was not there."""
    try:
        if isinstance(target, int):
            os.removexattr(target, name)
        else:
            os.removexattr(target, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise StorageError(f"cannot remove attribute {name}: {e.strerror}") from e
    return True
