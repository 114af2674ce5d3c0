"""The one error hierarchy of pyverity.

Every failure that pyverity reports on purpose is an :class:`Error`. It carries a one-line
diagnosis (``str(err)``), an optional remedy for the user, and the exit code the CLI uses.
Foreign exceptions (``OSError``, ``cryptography`` errors, ``sqlite3`` errors) are wrapped at the
boundary with ``raise SomeError(...) from exc`` so that callers only ever catch ``Error``.

An error that an appraisal can end in also carries a :class:`Reason` (``err.reason``): callers
tell failures apart by that enum (or by class), never by comparing message text.
"""

from __future__ import annotations

import enum

__all__ = [
    "CancelledError",
    "ConfigurationError",
    "Error",
    "FileChangedError",
    "FormatError",
    "InputError",
    "IntegrityError",
    "PolicyError",
    "Reason",
    "SignatureError",
    "StorageError",
    "UnsupportedError",
    "UsageError",
]


class Reason(enum.StrEnum):
    """Why an appraisal did not end READY (``OK`` when it did); the value is the short text
    ``pyverity verify`` prints (a :class:`~enum.StrEnum`, so it formats as that text)."""

    OK = "ok"
    NO_ATTRIBUTE = "no attribute"
    MALFORMED = "malformed"
    NO_KEYRING = "no keyring"
    NO_SIGNATURE = "no signature"
    NOT_VERITY = "not fs-verity"
    UNKNOWN_KEY = "unknown key"
    BAD_SIGNATURE = "bad signature"
    CONTENT_MISMATCH = "content does not match"
    STALE = "written since it was protected"
    UNSUPPORTED = "unsupported"


class Error(Exception):
    """Root of all pyverity errors: a human diagnosis, a remedy and a CLI exit code."""

    exit_code: int = 1
    #: Why an appraisal failed, for the errors an appraisal can end in (None for the others).
    reason: Reason | None = None

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return self.message


class UsageError(Error):
    """The caller asked for something malformed (bad option value, unknown algorithm)."""

    exit_code = 2


class InputError(Error):
    """A file named by the caller cannot be opened or read, or is not a regular file."""


class FormatError(Error):
    """Bytes (an attribute, a descriptor, a list entry) do not parse as the spec requires."""

    reason = Reason.MALFORMED


class UnsupportedError(FormatError):
    """Well-formed, but made with an algorithm or key pyverity cannot use (a hash it cannot
    compute, a key type or size the kernel refuses): reason ``unsupported``, not malformed."""

    reason = Reason.UNSUPPORTED


class IntegrityError(Error):
    """Content does not hash to the value it was declared to have."""


class FileChangedError(IntegrityError):
    """A file changed (size, mtime or identity) while it was being read or hashed."""


class SignatureError(Error):
    """A signature is missing, malformed, made by an unknown key, or does not verify."""


class PolicyError(Error):
    """A policy file is malformed, or a policy denies an access."""


class StorageError(Error):
    """The state database, tree cache or an attribute store could not be used."""


class ConfigurationError(Error):
    """The configuration (files, directories, permissions) is unusable."""


class CancelledError(Error):
    """A long operation (a tree build) was cancelled by its caller."""
