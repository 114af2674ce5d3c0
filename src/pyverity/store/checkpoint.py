"""Leaf-level hashes of partial builds, kept so that ``crash_policy = resume`` can continue.

A checkpoint is two things written in order: the level-0 digests hashed so far, appended to
``<state>/partial/<file id>.leaves`` and ``fsync``-ed, then the row in the state database
(offset, identity snapshot, attribute fingerprint, and the SHA-256 of the leaf hashes up to
that offset). The file may therefore run ahead of the row after a crash, never behind it;
:meth:`PartialStore.load` reads only what the row covers, and refuses it unless it hashes to
the row's checksum (a corrupted or truncated file: the build starts again from offset 0).
A checkpoint is never used for verification: it only saves hashing, and the finished tree is
checked against the declared root like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from pathlib import Path

from pyverity.errors import StorageError
from pyverity.fs.readexact import pread_exact

__all__ = ["PartialStore"]


class PartialStore:
    """The ``partial/`` directory of the state directory (0700, names from row ids only)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / "partial"
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {self.directory}: {e.strerror}") from e

    def _path(self, file_id: int) -> Path:
        return self.directory / f"{int(file_id)}.leaves"

    def append(self, file_id: int, leaves: bytes, at: int) -> None:
        """Write ``leaves`` at byte ``at`` (dropping anything after it) and ``fsync``."""
        try:
            fd = os.open(
                self._path(file_id),
                os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                os.ftruncate(fd, at)
                view = memoryview(leaves)
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot write a build checkpoint: {e.strerror}") from e

    def load(self, file_id: int, nbytes: int, sha256: bytes) -> bytes | None:
        """The first ``nbytes`` of saved leaf hashes, or None if fewer were saved or they do
        not hash to ``sha256`` (the checkpoint's own checksum)."""
        try:
            fd = os.open(self._path(file_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read a build checkpoint: {e.strerror}") from e
        try:
            data = pread_exact(fd, nbytes, 0) if nbytes else b""
        finally:
            os.close(fd)
        if len(data) != nbytes or not hmac.compare_digest(hashlib.sha256(data).digest(), sha256):
            return None
        return data

    def discard(self, file_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(file_id).unlink()

    def ids(self) -> set[int]:
        out = set()
        for entry in os.scandir(self.directory):
            stem = entry.name.removesuffix(".leaves")
            if stem.isdigit():
                out.add(int(stem))
        return out
