"""Protection attributes: read, appraise, write (DESIGN.md §2, §3).

Reading (:mod:`.attrs`): ``read_protection(fd, namespace) -> Protection`` — both attributes
from an open descriptor, strictly parsed and bounds-checked; ``Protection.kind`` is
``ProtectionKind.NONE | VERITY | VERITY_SIGNED | CLASSIC``; ``Protection.tree_params()`` the
parameters to build with; ``Protection.fingerprint`` changes iff a raw value changes.
Malformed values raise :class:`InvalidProtectionError` carrying the fingerprint.

Appraising (:mod:`.gate`, the one appraisal gate): ``appraisal_result(protection, computed,
keyring, signature=SignatureCheck..., verity=...) -> Verdict(state, reason, message, ...)``
and ``verify_protection(...)`` (raises the error, which carries its ``Reason``); ``computed``
is the built tree's ``Descriptor``, the whole-file hash for CLASSIC, or None (declaration
only: PENDING). ``VerdictState`` is the daemon's ``State`` by name (READY, PENDING, MISMATCH,
INVALID, CLASSIC, NONE). ``compute(fd, protection)`` hashes a file as its protection says.
End to end (:mod:`.check`): ``appraise_file(path, keyring)`` / ``verify_file``.

Writing (:mod:`.sign`): ``sign_file`` (descriptor first, signature last, one ``setxattr``
each), ``enable_file`` (descriptor only), ``imasign_file`` (classic 0x03 v2).
"""

import importlib
from typing import TYPE_CHECKING, Any

from pyverity.errors import Reason

#: The submodules whose names (each one's ``__all__``) this package re-exports, lightest
#: first: a name is looked up in them in this order, each imported on first use, so that a
#: name from ``attrs`` or ``gate`` loads neither ``sign`` nor ``check``, and ``enable`` never
#: imports ``cryptography``.
_SUBMODULES = ("attrs", "gate", "check", "sign")

if TYPE_CHECKING:
    from pyverity.protect.attrs import (
        InvalidProtectionError,
        Protection,
        ProtectionKind,
        fingerprint,
        parse_protection,
        read_protection,
    )
    from pyverity.protect.check import appraise_file, verify_file
    from pyverity.protect.gate import (
        AppraisalResult,
        AppraisalState,
        Computed,
        ContentMismatchError,
        MissingKeyringError,
        NotProtectedError,
        NotVerityError,
        SignatureCheck,
        SignatureRequiredError,
        Verdict,
        VerdictState,
        appraisal_result,
        builtin_signature_result,
        classic_hash_algo,
        compute,
        failure_result,
        verify_declared_signature,
        verify_protection,
    )
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
    "Computed",
    "ContentMismatchError",
    "HashedFile",
    "InvalidProtectionError",
    "MissingKeyringError",
    "NotProtectedError",
    "NotVerityError",
    "Protection",
    "ProtectionKind",
    "Reason",
    "SignatureCheck",
    "SignatureRequiredError",
    "SignedFile",
    "Verdict",
    "VerdictState",
    "appraisal_result",
    "appraise_file",
    "builtin_signature_result",
    "classic_hash_algo",
    "compute",
    "enable_file",
    "failure_result",
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
    if name in __all__:
        for submodule in _SUBMODULES:
            module = importlib.import_module(f"pyverity.protect.{submodule}")
            if name in module.__all__:
                return getattr(module, name)
    raise AttributeError(f"module 'pyverity.protect' has no attribute '{name}'")
