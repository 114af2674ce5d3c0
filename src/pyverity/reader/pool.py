"""Hashing one long run of data blocks on several threads at once.

The run hashers (the compiled accelerator, and hashlib for blocks over 2 KiB) release the GIL
while they hash, so a 1 MiB read cut into two halves is hashed on two cores: the caller hashes
the first part itself while worker threads hash the others. Short runs are hashed inline.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from pyverity.hashing.runhash import RunHasher

__all__ = ["HashPool"]

#: Runs shorter than this many blocks per part are not worth a thread hand-off.
MIN_PART_BLOCKS = 32

Buffer = bytes | bytearray | memoryview


class HashPool:
    """Up to ``threads`` threads (the caller's included) per run; workers start on first use."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = max(1, threads)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def hash(self, hash_run: RunHasher, data: Buffer, block_size: int) -> bytes:
        count = len(data) // block_size
        parts = min(self.threads, count // MIN_PART_BLOCKS)
        if parts < 2:
            return hash_run(data)
        view = memoryview(data)
        per = -(-count // parts) * block_size
        pieces = [view[i : i + per] for i in range(0, len(view), per)]
        executor = self._pool()
        futures: list[Future[bytes]] = [executor.submit(hash_run, p) for p in pieces[1:]]
        first = hash_run(pieces[0])
        return first + b"".join(f.result() for f in futures)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.threads - 1, thread_name_prefix="pyverity-hash"
                )
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
