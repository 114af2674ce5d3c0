"""Kernel keyrings: load a certificate where the kernel's IMA or fs-verity looks for keys.

What ``evmctl import`` and ``keyctl padd asymmetric`` do, through the ``add_key`` and ``keyctl``
system calls (no ``keyctl`` binary, no libkeyutils):

* :func:`import_certificate` adds an X.509 certificate (PEM or DER; the kernel parses DER) as an
  ``asymmetric`` key to a keyring and returns the key's serial;
* :func:`resolve_keyring` names the keyring: ``_ima`` (IMA's keyring on kernels without
  ``CONFIG_INTEGRITY_TRUSTED_KEYRING``, Debian's: searched for in the session and user keyrings
  and, if missing, created in the user keyring as ``keyctl newring _ima @u`` does), ``.ima`` and
  ``.fs-verity`` (the kernel's own keyrings, found in ``/proc/keys``), ``%keyring:NAME`` (a
  keyring named NAME in the session or user keyring), ``@s``/``@u``/``@us``/``@t``/``@p`` or a
  serial number.

``.ima`` (``CONFIG_INTEGRITY_TRUSTED_KEYRING``) accepts only certificates signed by a key the
kernel already trusts: its refusal (EKEYREJECTED, EACCES or EPERM) is reported as such.
``.fs-verity`` takes any certificate from root (self-signed too) until someone restricts it
(``keyctl restrict_keyring``), which then refuses every addition.
:func:`describe` and :func:`keyring_members` read keys back (``KEYCTL_DESCRIBE``/``KEYCTL_READ``);
:func:`restrict_keyring` restricts a keyring as the kernel restricts ``.ima``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pyverity.errors import ConfigurationError, SignatureError, UsageError
from pyverity.fs.libc import libc
from pyverity.keys.cert import load_certificate

__all__ = [
    "KEY_SPEC_SESSION_KEYRING",
    "KEY_SPEC_USER_KEYRING",
    "KeyringError",
    "add_key",
    "describe",
    "import_certificate",
    "join_new_session_keyring",
    "keyring_members",
    "new_keyring",
    "resolve_keyring",
    "restrict_keyring",
    "search_keyring",
]

logger = logging.getLogger(__name__)

KEY_SPEC_THREAD_KEYRING = -1
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
_SPECIAL = {
    "@t": KEY_SPEC_THREAD_KEYRING,
    "@p": KEY_SPEC_PROCESS_KEYRING,
    "@s": KEY_SPEC_SESSION_KEYRING,
    "@u": KEY_SPEC_USER_KEYRING,
    "@us": KEY_SPEC_USER_SESSION_KEYRING,
}
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_DESCRIBE = 6
KEYCTL_READ = 11
KEYCTL_SEARCH = 10
KEYCTL_RESTRICT_KEYRING = 29
#: The kernel keyrings pyverity knows by name (not reachable from a process's keyrings).
SYSTEM_KEYRINGS = (".ima", ".fs-verity", ".evm", ".platform", ".machine")

#: (add_key, keyctl) system call numbers per machine.
_SYSCALLS = {
    "x86_64": (248, 250),
    "aarch64": (217, 219),
    "riscv64": (217, 219),
    "i386": (286, 288),
    "i686": (286, 288),
    "ppc64le": (269, 271),
    "ppc64": (269, 271),
    "s390x": (278, 280),
    "armv7l": (309, 311),
}


class KeyringError(SignatureError):
    """The kernel refused a keyring operation."""


def _numbers() -> tuple[int, int]:
    machine = platform.machine()
    try:
        return _SYSCALLS[machine]
    except KeyError:
        raise ConfigurationError(
            f"kernel keyrings: unknown system call numbers on {machine}"
        ) from None


def _syscall(number: int, *args: object) -> int:
    fn = libc().syscall
    fn.restype = ctypes.c_long
    ctypes.set_errno(0)
    result = int(fn(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def add_key(kind: str, description: str | None, payload: bytes | None, keyring: int) -> int:
    """``add_key(2)``: the new (or updated) key's serial."""
    buf = ctypes.create_string_buffer(payload or b"", len(payload or b"") or 1)
    return _syscall(
        _numbers()[0],
        ctypes.c_char_p(kind.encode()),
        ctypes.c_char_p(description.encode() if description is not None else None),
        buf if payload is not None else ctypes.c_void_p(None),
        ctypes.c_size_t(len(payload or b"")),
        ctypes.c_int32(keyring),
    )


def _keyctl(op: int, *args: object) -> int:
    return _syscall(_numbers()[1], ctypes.c_int(op), *args)


def join_new_session_keyring() -> int:
    """Give this process a new anonymous session keyring (``keyctl new_session``)."""
    return _keyctl(KEYCTL_JOIN_SESSION_KEYRING, ctypes.c_char_p(None))


def new_keyring(name: str, parent: int) -> int:
    """A keyring called ``name`` linked into ``parent`` (``keyctl newring``)."""
    return add_key("keyring", name, None, parent)


def search_keyring(name: str, start: int) -> int | None:
    """``KEYCTL_SEARCH`` for a keyring called ``name`` from ``start``; None if there is none."""
    try:
        return _keyctl(
            KEYCTL_SEARCH,
            ctypes.c_int32(start),
            ctypes.c_char_p(b"keyring"),
            ctypes.c_char_p(name.encode()),
            ctypes.c_int32(0),
        )
    except OSError as e:
        if e.errno in (errno.ENOKEY, errno.EKEYREVOKED, errno.EKEYEXPIRED, errno.EACCES):
            return None
        raise


def restrict_keyring(serial: int, key_type: str, restriction: str) -> None:
    """``keyctl restrict_keyring SERIAL TYPE RESTRICTION`` (``KEYCTL_RESTRICT_KEYRING``).

    ``restrict_keyring(ring, "asymmetric", "builtin_and_secondary_trusted")`` makes ``ring``
    accept only what ``.ima`` accepts on kernels that have it (``builtin_trusted`` without a
    secondary keyring).
    """
    _keyctl(
        KEYCTL_RESTRICT_KEYRING,
        ctypes.c_int32(serial),
        ctypes.c_char_p(key_type.encode()),
        ctypes.c_char_p(restriction.encode()),
    )


def _read(op: int, serial: int) -> bytes:
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        n = _keyctl(op, ctypes.c_int32(serial), buf, ctypes.c_size_t(size))
        if n <= size:
            return buf.raw[:n]
        size = n


def describe(serial: int) -> tuple[str, str]:
    """``(type, description)`` of a key (``KEYCTL_DESCRIBE``)."""
    text = _read(KEYCTL_DESCRIBE, serial).rstrip(b"\0").decode("utf-8", "replace")
    parts = text.split(";", 4)
    if len(parts) != 5:
        raise KeyringError(f"unexpected key description {text!r}")
    return parts[0], parts[4]


def keyring_members(serial: int) -> list[int]:
    """The serials linked in a keyring (``KEYCTL_READ`` on it)."""
    raw = _read(KEYCTL_READ, serial)
    return [int.from_bytes(raw[i : i + 4], "little", signed=True) for i in range(0, len(raw), 4)]


def _from_proc_keys(name: str) -> int | None:
    """A keyring called ``name`` that this process may view, from ``/proc/keys``."""
    try:
        lines = Path("/proc/keys").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(None, 8)
        if len(fields) == 9 and fields[7] == "keyring":
            description = fields[8].rsplit(": ", 1)[0]
            if description == name:
                return int(fields[0], 16)
    return None


def resolve_keyring(spec: str) -> int:
    """The serial of the keyring named by ``spec`` (see the module docstring)."""
    if spec in _SPECIAL:
        return _SPECIAL[spec]
    text = spec.lower()
    if text.isdigit() or (text.startswith("-") and text[1:].isdigit()):
        return int(text)
    if text.startswith("0x") and text[2:] and all(c in "0123456789abcdef" for c in text[2:]):
        return int(text, 16)
    name = spec.removeprefix("%keyring:")
    if not name:
        raise UsageError(f"keyring '{spec}': no name")
    if name.startswith("."):
        found = _from_proc_keys(name)
        if found is None:
            raise KeyringError(
                f"the kernel has no '{name}' keyring (or this process may not see it)",
                remedy="Debian's kernels have no .ima keyring: use --keyring _ima"
                if name == ".ima"
                else None,
            )
        return found
    for start in (KEY_SPEC_SESSION_KEYRING, KEY_SPEC_USER_KEYRING):
        found = search_keyring(name, start)
        if found is not None:
            return found
    if spec == "_ima":
        serial = new_keyring("_ima", KEY_SPEC_USER_KEYRING)
        logger.warning("created the _ima keyring (%d) in the user keyring", serial)
        return serial
    raise KeyringError(
        f"no keyring named '{name}' in the session or user keyring",
        remedy=f"create it first (keyctl newring {name} @u)",
    )


def _refused(err: OSError, cert: str, keyring: str) -> KeyringError:
    what = f"the kernel refused certificate '{cert}' for keyring '{keyring}'"
    name = keyring.removeprefix("%keyring:")
    if err.errno in (errno.ENOKEY, errno.EKEYREJECTED):
        # A restricted keyring (.ima is one) found no trusted key that signed it, or the
        # signature did not verify.
        return KeyringError(
            f"{what}: it accepts only certificates signed by a key the kernel trusts"
            f" ({err.strerror})",
            remedy="have the certificate signed by a CA in .builtin_trusted_keys or"
            " .secondary_trusted_keys; a self-signed one is refused",
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        hint = (
            "only root may add to .fs-verity, and only until it is restricted"
            if name == ".fs-verity"
            else "is the keyring writable by this user (and not restricted to refuse all)?"
        )
        return KeyringError(f"{what}: {err.strerror}", remedy=hint)
    if err.errno == errno.ENODEV:
        return KeyringError(f"{what}: the kernel has no 'asymmetric' key type")
    if err.errno in (errno.ENOENT, errno.ENOPKG):
        return KeyringError(
            f"{what}: this kernel cannot use the certificate's key type ({err.strerror})",
            remedy="ECDSA keys need a kernel with CONFIG_CRYPTO_ECDSA; RSA works everywhere",
        )
    if err.errno == errno.EBADMSG:
        return KeyringError(f"{what}: the kernel could not parse it as an X.509 certificate")
    return KeyringError(f"{what}: {err.strerror}")


def import_certificate(cert_path: str | os.PathLike[str], keyring: str) -> int:
    """Add the certificate at ``cert_path`` to ``keyring``; the new key's serial."""
    cert = load_certificate(cert_path)  # IMA-usable (RSA/ECDSA) or SignatureError
    der = cert.cert.public_bytes(serialization.Encoding.DER)
    try:
        target = resolve_keyring(keyring)
    except OSError as e:
        raise KeyringError(f"cannot find keyring '{keyring}': {e.strerror}") from e
    try:
        return add_key("asymmetric", None, der, target)
    except OSError as e:
        raise _refused(e, os.fsdecode(cert_path), keyring) from e
