"""Open files of the mount: a verified reader, or a pass-through descriptor, by handle number."""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass

from pyverity.fs.readexact import pread_exact_into
from pyverity.reader.file import VerifiedRawIO

__all__ = ["Handle", "HandleTable", "InodeKey"]

InodeKey = tuple[int, int]


@dataclass
class Handle:
    """One ``open`` through the mount.

    ``verified`` is set when the file was appraised: its reads are checked block by block and
    its descriptor is the one it was appraised with. Otherwise reads pass through ``fd`` (files
    that are not appraised, or appraisal failures in log mode), and so do writes on ``--rw``.
    """

    fd: int
    key: InodeKey
    path: str
    writable: bool
    verified: VerifiedRawIO | None = None

    def read(self, size: int, offset: int) -> bytes:
        if self.verified is not None:
            return self.verified.pread(size, offset)
        return os.pread(self.fd, size, offset)

    def read_into(self, buffer: memoryview, offset: int) -> int:
        """Like :meth:`read`, into ``buffer``; returns the number of bytes (verified ones)."""
        if self.verified is not None:
            return self.verified.pread_into(buffer, offset)
        return pread_exact_into(self.fd, buffer, offset)

    def close(self) -> None:
        if self.verified is not None:
            self.verified.close()  # does not own fd
        os.close(self.fd)


class HandleTable:
    """Thread-safe map from FUSE ``fh`` numbers to handles, with writer counts per inode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._handles: dict[int, Handle] = {}
        self._writers: dict[InodeKey, int] = {}

    def add(self, handle: Handle) -> int:
        with self._lock:
            fh = next(self._next)
            self._handles[fh] = handle
            if handle.writable:
                self._writers[handle.key] = self._writers.get(handle.key, 0) + 1
            return fh

    def get(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise OSError(9, "Bad file descriptor")
        return handle

    def remove(self, fh: int) -> Handle | None:
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is not None and handle.writable:
                left = self._writers.get(handle.key, 1) - 1
                if left:
                    self._writers[handle.key] = left
                else:
                    self._writers.pop(handle.key, None)
            return handle

    def writers(self, key: InodeKey) -> int:
        with self._lock:
            return self._writers.get(key, 0)

    def close_all(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._writers.clear()
        for handle in handles:
            handle.close()
