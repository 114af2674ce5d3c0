"""Protection attributes: read, check, appraise, write (DESIGN.md §2, §3).

Reading (:mod:`.attrs`): ``read_protection(fd, namespace) -> Protection`` — both attributes
from an open descriptor, strictly parsed and bounds-checked; ``Protection.kind`` is
``ProtectionKind.NONE | VERITY | VERITY_SIGNED | CLASSIC``; ``Protection.tree_params()`` the
parameters to build with; ``Protection.fingerprint`` changes iff a raw value changes.
Malformed values raise :class:`InvalidProtectionError` carrying the fingerprint.

Appraising (:mod:`.appraise`): ``appraisal_result(protection, computed, keyring) ->
AppraisalResult(state=READY|MISMATCH|INVALID, reason, message, ...)`` and
``verify_protection(...)`` (raises). ``computed`` is the built tree's ``Descriptor``, or the
whole-file hash for CLASSIC. End to end: ``appraise_file(path, keyring)`` / ``verify_file``.

Writing (:mod:`.sign`): ``sign_file`` (descriptor first, signature last, one ``setxattr``
each), ``enable_file`` (descriptor only), ``imasign_file`` (classic 0x03 v2).
"""

import importlib
from typing import TYPE_CHECKING, Any

#: name -> submodule; loaded on first use so that ``enable`` never imports ``cryptography``.
_LAZY = {
    **dict.fromkeys(
        [
            "AppraisalResult",
            "AppraisalState",
            "ContentMismatchError",
            "MissingKeyringError",
            "NotProtectedError",
            "Reason",
            "appraisal_result",
            "classic_hash_algo",
            "verify_declared_signature",
            "verify_protection",
        ],
        "appraise",
    ),
    **dict.fromkeys(
        [
            "InvalidProtectionError",
            "Protection",
            "ProtectionKind",
            "fingerprint",
            "parse_protection",
            "read_protection",
        ],
        "attrs",
    ),
    **dict.fromkeys(["appraise_file", "verify_file"], "check"),
    **dict.fromkeys(
        [
            "HashedFile",
            "SignedFile",
            "enable_file",
            "hash_file",
            "imasign_file",
            "sign_file",
            "verity_values",
            "whole_file_hash",
            "write_hashed",
            "write_protection",
        ],
        "sign",
    ),
}

if TYPE_CHECKING:
    from pyverity.protect.appraise import (
        AppraisalResult,
        AppraisalState,
        ContentMismatchError,
        MissingKeyringError,
        NotProtectedError,
        Reason,
        appraisal_result,
        classic_hash_algo,
        verify_declared_signature,
        verify_protection,
    )
    from pyverity.protect.attrs import (
        InvalidProtectionError,
        Protection,
        ProtectionKind,
        fingerprint,
        parse_protection,
        read_protection,
    )
    from pyverity.protect.check import appraise_file, verify_file
    from pyverity.protect.sign import (
        HashedFile,
        SignedFile,
        enable_file,
        hash_file,
        imasign_file,
        sign_file,
        verity_values,
        whole_file_hash,
        write_hashed,
        write_protection,
    )


__all__ = [
    "AppraisalResult",
    "AppraisalState",
    "ContentMismatchError",
    "HashedFile",
    "InvalidProtectionError",
    "MissingKeyringError",
    "NotProtectedError",
    "Protection",
    "ProtectionKind",
    "Reason",
    "SignedFile",
    "appraisal_result",
    "appraise_file",
    "classic_hash_algo",
    "enable_file",
    "fingerprint",
    "hash_file",
    "imasign_file",
    "parse_protection",
    "read_protection",
    "sign_file",
    "verify_declared_signature",
    "verify_file",
    "verify_protection",
    "verity_values",
    "whole_file_hash",
    "write_hashed",
    "write_protection",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyverity.protect' has no attribute '{name}'")
    return getattr(importlib.import_module(f"pyverity.protect.{module}"), name)
