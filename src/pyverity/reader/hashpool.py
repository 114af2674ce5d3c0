"""Hashing one long run of data blocks on several threads at once, when threads are idle.

The run hashers (the compiled accelerator, and hashlib for blocks over 2 KiB) release the GIL
while they hash, so a 1 MiB read cut into two halves is hashed on two cores: the caller hashes
the first part itself while idle worker threads hash the others. Short runs are hashed inline.

A part is handed to a worker only if one is idle at that moment; otherwise the caller hashes
it itself. Callers that are themselves concurrent (the FUSE mount serves several reads at once
on its own threads) thus never queue behind each other's parts: with every core busy, a
hand-off only adds latency.
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
        #: One token per idle worker thread.
        self._idle = threading.Semaphore(self.threads - 1)

    def hash(self, hash_run: RunHasher, data: Buffer, block_size: int) -> bytes:
        count = len(data) // block_size
        wanted = min(self.threads, count // MIN_PART_BLOCKS) - 1
        helpers = 0
        while helpers < wanted and self._idle.acquire(blocking=False):
            helpers += 1
        if helpers == 0:
            return hash_run(data)
        parts = helpers + 1
        view = memoryview(data)
        per = -(-count // parts) * block_size
        pieces = [view[i : i + per] for i in range(0, len(view), per)]
        executor = self._pool()
        futures: list[Future[bytes]] = []
        for piece in pieces[1:]:
            futures.append(executor.submit(self._work, hash_run, piece))
        for _ in range(helpers - len(futures)):  # fewer pieces than helpers taken
            self._idle.release()
        first = hash_run(pieces[0])
        return first + b"".join(f.result() for f in futures)

    def _work(self, hash_run: RunHasher, piece: memoryview) -> bytes:
        try:
            return hash_run(piece)
        finally:
            self._idle.release()

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
