"""Appraising a file end to end: open once, read the attributes, recompute, decide.

:func:`appraise_file` is what ``pyverity verify`` and the Python API use; the daemon and the
reader compose the same pieces (:func:`~pyverity.protect.attrs.read_protection`, a tree build
with ``protection.tree_params()``, :func:`~pyverity.protect.appraise.appraisal_result`)
themselves, so they can cache, queue and resume.
"""

from __future__ import annotations

import os

from pyverity.errors import FormatError, SignatureError
from pyverity.format.descriptor import Descriptor
from pyverity.hashing import build_tree
from pyverity.hashing.progress import CancelCheck, ProgressFn
from pyverity.keys.keyring import Keyring
from pyverity.protect.appraise import (
    AppraisalResult,
    AppraisalState,
    Reason,
    appraisal_result,
    classic_hash_algo,
    verify_declared_signature,
    verify_protection,
)
from pyverity.protect.attrs import (
    InvalidProtectionError,
    ProtectionKind,
    read_protection,
)
from pyverity.protect.sign import whole_file_hash

__all__ = ["appraise_file", "verify_file"]


def appraise_file(
    path: str | os.PathLike[str] | int,
    keyring: Keyring | None,
    *,
    namespace: str = "security",
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> AppraisalResult:
    """Appraise one file (a path, opened once, or an open descriptor); never raises for a
    file that fails — only for one that cannot be read (:class:`~pyverity.errors.InputError`,
    :class:`~pyverity.errors.StorageError`, :class:`~pyverity.errors.FileChangedError`)."""
    from pyverity.fs.openfile import open_regular

    fd = path if isinstance(path, int) else open_regular(path)
    try:
        try:
            protection = read_protection(fd, namespace)
        except InvalidProtectionError as e:
            return AppraisalResult(
                AppraisalState.INVALID, Reason.MALFORMED, str(e), ProtectionKind.NONE
            )
        if protection.kind is ProtectionKind.NONE:
            return appraisal_result(protection, None, keyring)
        computed: Descriptor | bytes
        if protection.kind is ProtectionKind.CLASSIC:
            try:
                alg = classic_hash_algo(protection)
                computed = whole_file_hash(fd, alg, progress)
            except FormatError as e:
                return AppraisalResult(
                    AppraisalState.INVALID, Reason.MALFORMED, str(e), protection.kind
                )
        else:
            try:  # reject a bad declared signature before hashing anything
                verify_declared_signature(protection, keyring)
            except SignatureError as e:
                sig = protection.signature
                return AppraisalResult(
                    AppraisalState.INVALID,
                    Reason(getattr(e, "reason", "bad signature")),
                    str(e),
                    protection.kind,
                    sig.keyid if sig else None,
                )
            tree = build_tree(
                fd,
                protection.tree_params(),
                keep_tree=False,
                jobs=jobs,
                progress=progress,
                cancel=cancel,
            )
            computed = tree.descriptor
        return appraisal_result(protection, computed, keyring)
    finally:
        if not isinstance(path, int):
            os.close(fd)


def verify_file(
    path: str | os.PathLike[str] | int,
    keyring: Keyring | None,
    *,
    namespace: str = "security",
    jobs: int | None = None,
) -> None:
    """Raise unless ``path`` appraises READY (see :func:`verify_protection` for the errors)."""
    from pyverity.fs.openfile import open_regular

    fd = path if isinstance(path, int) else open_regular(path)
    try:
        protection = read_protection(fd, namespace)
        computed: Descriptor | bytes | None = None
        if protection.kind is ProtectionKind.CLASSIC:
            computed = whole_file_hash(fd, classic_hash_algo(protection))
        elif protection.kind is not ProtectionKind.NONE:
            verify_declared_signature(protection, keyring)
            computed = build_tree(
                fd, protection.tree_params(), keep_tree=False, jobs=jobs
            ).descriptor
        verify_protection(protection, computed, keyring)
    finally:
        if not isinstance(path, int):
            os.close(fd)
