"""Appraising a file end to end: open once, read the attributes, recompute, ask the gate.

:func:`appraise_file` is what the Python API uses; :func:`verify_file` is the same appraisal,
raising its failure. The daemon, the batch verifier and the reader compose the same pieces
(:func:`~pyverity.protect.attrs.read_protection`, :func:`~pyverity.protect.gate.compute` or
their own build, :func:`~pyverity.protect.gate.appraisal_result`) so they can cache, queue and
resume.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyverity.errors import FormatError
from pyverity.protect.attrs import InvalidProtectionError, read_protection
from pyverity.protect.gate import Verdict, appraisal_result, compute, failure_result

if TYPE_CHECKING:
    from pyverity.hashing.progress import CancelCheck, ProgressFn
    from pyverity.keys.keyring import Keyring

__all__ = ["appraise_file", "verify_file"]


def appraise_file(
    path: str | os.PathLike[str] | int,
    keyring: Keyring | None,
    *,
    namespace: str = "security",
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
) -> Verdict:
    """Appraise one file (a path, opened once, or an open descriptor); never raises for a
    file that fails — only for one that cannot be read (:class:`~pyverity.errors.InputError`,
    :class:`~pyverity.errors.StorageError`, :class:`~pyverity.errors.FileChangedError`)."""
    from pyverity.fs.openfile import open_regular

    fd = path if isinstance(path, int) else open_regular(path)
    try:
        try:
            protection = read_protection(fd, namespace)
        except InvalidProtectionError as e:
            return failure_result(e)
        # The declaration first: a bad signature over a declared descriptor, or no attribute
        # at all, is decided before anything is hashed.
        declared = appraisal_result(protection, None, keyring)
        if declared.failed:
            return declared
        try:
            computed = compute(fd, protection, jobs=jobs, progress=progress, cancel=cancel)
        except FormatError as e:  # e.g. a classic value with an algorithm hashlib lacks
            return failure_result(e, protection)
        return appraisal_result(protection, computed.value, keyring)
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
    """Raise unless ``path`` appraises READY (the error of its :class:`Verdict`)."""
    appraise_file(path, keyring, namespace=namespace, jobs=jobs).raise_if_failed()
