"""The fast tree builder (DESIGN.md §5): level 0 hashed by forked workers, folded in order.

The file is cut into chunks of whole blocks. With ``W`` processes (the caller plus ``W - 1``
forked workers), chunk ``k`` is hashed by process ``k mod W``: each worker hashes its
contiguous chunks and writes their level-0 digests into its own pipe; the caller hashes its
own share inline and, chunk by chunk and in file order, hands the digests (its own or read
from a worker's pipe) to a :class:`~pyverity.hashing.folder.TreeFolder`, which folds the
upper levels at once. Nothing grows with the file: each process holds one chunk buffer, a
pipe holds at most a few chunks of digests, the folder one pending block per level (plus the
tree itself when it is kept).

The caller never maps the file: where it hashes, it reads with ``pread`` into its own buffer,
so a file truncated under it gives a short read (then
:class:`~pyverity.errors.FileChangedError`), not a ``SIGBUS``. Forked workers hash the page
cache in place through ``mmap`` (``FastOptions.map_workers``; copying the data out costs
about half as much CPU as hashing it with the accelerator), each chunk mapped, hashed and
unmapped in turn; a truncation then kills the worker with ``SIGBUS``, which the caller reports
as ``FileChangedError``. Chunks that the file's extent map (``SEEK_DATA``/``SEEK_HOLE``, read
by the caller before forking) does not show as data are read with ``pread`` instead, so that
the holes of a sparse tmpfs file are read from the zero page, never allocated by a fault.
With mapping workers the caller hashes nothing itself and only folds. The file's identity
(device, inode, size, mtime) is compared before and after; any difference is a
``FileChangedError`` too. A worker that dies for any reason becomes an error in the caller;
workers are always reaped, and killed when the build stops early.

Workers are forked (not spawned: no interpreter start-up, no re-import) and only for files
of at least :attr:`FastOptions.parallel_min_size`; smaller files are hashed inline. Where
other Python threads run, forking is unsafe: the same work then goes to threads if the compiled
accelerator (which releases the GIL per chunk) is in use, else it is all done inline.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import mmap
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.errors import FileChangedError, InputError, UsageError
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.fs.readexact import pread_blocks
from pyverity.hashing.folder import TreeFolder
from pyverity.hashing.progress import CancelCheck, ProgressFn, check_cancel
from pyverity.hashing.runhash import RunHasher, run_hasher, uses_accelerator

if TYPE_CHECKING:
    from queue import Queue

    from pyverity.hashing.spool import SpoolingFolder

__all__ = ["DEFAULT_OPTIONS", "SPOOL_MIN_TREE", "FastOptions", "build_fast", "default_jobs"]

#: Kept trees at least this large are spooled through a temporary file (``hashing.spool``):
#: twice a smaller tree is still within the budget of the tree plus 64 MiB.
SPOOL_MIN_TREE = 32 << 20

# Exit statuses of a worker (anything else, or a signal, is an unexpected failure).
_EXIT_OK = 0
_EXIT_SHRANK = 3
#: A worker's failed read exits with this plus the errno, re-raised as ``OSError`` by the caller.
_EXIT_OS_ERROR = 100
_MAX_PIPE = 1 << 20
#: At most this many data extents are looked up before forking; chunks past them are read.
_MAX_EXTENTS = 4096
#: Offsets and lengths as mapped: (start, end) data ranges of the file, sorted.
Extents = list[tuple[int, int]]


@dataclass(frozen=True)
class FastOptions:
    """Tuning of the fast builder; the defaults suit 4 KiB blocks on current x86 machines."""

    #: Bytes of data per chunk (rounded down to whole blocks, at least one block): the unit of
    #: work handed to a process, of progress reports and of cancellation checks.
    chunk_size: int = 2 << 20
    #: Files smaller than this are hashed inline: forking would cost more than it saves.
    parallel_min_size: int = 8 << 20
    #: ``None``: use the compiled accelerator when it applies; ``False``: pure Python only;
    #: ``True``: require it.
    accel: bool | None = None
    #: A kept tree at least this large is spooled through a temporary file (see ``spool``).
    spool_min_tree: int = SPOOL_MIN_TREE
    #: Forked workers hash data chunks through ``mmap`` (no copy) and the caller only folds;
    #: ``False``: workers ``pread`` like the caller, which hashes its share of the chunks.
    map_workers: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.parallel_min_size < 0:
            raise ValueError("chunk_size must be positive and parallel_min_size non-negative")


DEFAULT_OPTIONS = FastOptions()


def default_jobs() -> int:
    """The number of CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def build_fast(
    fd: int,
    params: TreeParams,
    *,
    keep_tree: bool = False,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelCheck | None = None,
    options: FastOptions = DEFAULT_OPTIONS,
) -> MerkleTree:
    """Build the tree of the regular file open as ``fd`` (read with ``pread``; not closed).

    ``jobs`` counts the processes that hash, the caller included (``None``: one per CPU,
    ``1``: no worker is forked). A file that changes raises :class:`FileChangedError`; a read
    error raises ``OSError`` with its errno, whichever process met it.
    """
    if jobs is not None and jobs < 1:
        raise UsageError(f"the number of jobs must be at least 1, not {jobs}")
    before = identity(os.fstat(fd))
    size = before.size
    bs = params.block_size
    chunk = max(bs, options.chunk_size - options.chunk_size % bs)
    nchunks = -(-size // chunk)
    procs = jobs if jobs is not None else default_jobs()
    if size < options.parallel_min_size:
        procs = 1
    procs = max(1, min(procs, nchunks))
    run = run_hasher(params, accel=options.accel)
    workers: _Workers | _ThreadWorkers = _Workers(fd, run, size=size, chunk=chunk, block_size=bs)
    if procs > 1 and _other_threads():
        # Forking is unsafe here. The accelerator releases the GIL for a whole chunk, so
        # threads share the work as well as processes would; hashlib does not: stay inline.
        if uses_accelerator(params, accel=options.accel):
            workers = _ThreadWorkers(fd, run, size=size, chunk=chunk, block_size=bs)
        else:
            procs = 1
    own_share = True
    if options.map_workers and isinstance(workers, _Workers) and procs > 1:
        own_share = False  # every chunk goes to a worker, which maps what it can
        workers.extents = _data_extents(fd, size)
    folder = TreeFolder(params, keep_tree=keep_tree)
    spool: SpoolingFolder | None = None
    if keep_tree and params.geometry(size).tree_size >= options.spool_min_tree:
        from pyverity.hashing.spool import SpoolingFolder  # imported only when needed

        folder = spool = SpoolingFolder(params, size)
    try:
        for w in range(0 if not own_share else 1, procs):
            workers.fork(first=w, step=procs, digests_per_chunk=chunk // bs * params.digest_size)
        _fold_chunks(
            fd,
            folder,
            workers,
            procs,
            own_share=own_share,
            run=run,
            digest_size=params.digest_size,
            progress=progress,
            cancel=cancel,
        )
        workers.join()
        if identity(os.fstat(fd)) != before:
            raise FileChangedError("file changed while it was being hashed")
        return folder.finish(size)
    except BaseException:
        workers.kill()
        if identity(os.fstat(fd)) != before:
            raise FileChangedError("file changed while it was being hashed") from None
        raise
    finally:
        if spool is not None:
            spool.close()


def _fold_chunks(
    fd: int,
    folder: TreeFolder,
    workers: _Workers | _ThreadWorkers,
    procs: int,
    *,
    own_share: bool,
    run: RunHasher,
    digest_size: int,
    progress: ProgressFn | None,
    cancel: CancelCheck | None,
) -> None:
    """Hash this process's chunks (with ``own_share``: chunk ``k`` where ``k mod procs == 0``),
    receive the others' from the workers, and fold all of them in file order."""
    size, chunk, bs = workers.size, workers.chunk, workers.block_size
    view = memoryview(bytearray(chunk)) if own_share else memoryview(b"")
    first_worker = 1 if own_share else 0
    for k in range(-(-size // chunk)):
        check_cancel(cancel)
        offset = k * chunk
        want = min(chunk, size - offset)
        if own_share and k % procs == 0:
            digests = _hash_chunk(fd, view, offset, want, run=run, block_size=bs)
        else:
            digests = workers.receive(k % procs - first_worker, -(-want // bs) * digest_size)
        folder.add(digests)
        if progress is not None:
            progress(offset + want)


def _other_threads() -> bool:
    """True when Python threads besides this one run: forking then is unsafe (a lock held by
    another thread stays held in the child; Python 3.12+ warns)."""
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def _hash_chunk(
    fd: int, view: memoryview, offset: int, want: int, *, run: RunHasher, block_size: int
) -> bytes:
    """Read ``want`` bytes at ``offset`` into ``view`` and return their blocks' digests."""
    return run(pread_blocks(fd, view, offset, want, block_size))


def _data_extents(fd: int, size: int) -> Extents:
    """The data ranges of the file (``SEEK_DATA``/``SEEK_HOLE``; at most ``_MAX_EXTENTS``,
    none where the file system cannot say), the descriptor's offset left where it was."""
    out: Extents = []
    try:
        saved = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return out
    try:
        pos = 0
        while pos < size and len(out) < _MAX_EXTENTS:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: nothing but a hole up to the end
                    out.clear()
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, min(end, size)))
            pos = end
    except OSError:
        out.clear()
    finally:
        os.lseek(fd, saved, os.SEEK_SET)
    return out


def _mappable(extents: Extents, offset: int, want: int, block_size: int) -> bool:
    """Whether the chunk can be mapped: page-aligned, whole blocks, all of it data."""
    if offset % mmap.ALLOCATIONGRANULARITY or want % block_size or not want:
        return False
    i = bisect.bisect_right(extents, (offset, 1 << 63)) - 1
    return i >= 0 and extents[i][0] <= offset and offset + want <= extents[i][1]


def _hash_mapped(fd: int, offset: int, want: int, *, run: RunHasher) -> bytes:
    """The digests of ``want`` bytes (whole blocks) at ``offset``, hashed in the page cache.

    A truncation under the mapping raises ``SIGBUS``: only forked workers call this.
    """
    m = mmap.mmap(
        fd, want, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=offset
    )
    try:
        with memoryview(m) as view:
            return run(view)
    finally:
        m.close()


class _Workers:
    """The forked hashing processes of one build: their pids and the read ends of their pipes."""

    def __init__(self, fd: int, run: RunHasher, *, size: int, chunk: int, block_size: int) -> None:
        self._fd = fd
        self._run = run
        self.size = size
        self.chunk = chunk
        self.block_size = block_size
        self._pids: list[int] = []
        self._pipes: list[int] = []
        #: With extents (set before forking), workers map the chunks that lie in them.
        self.extents: Extents | None = None

    def fork(self, *, first: int, step: int, digests_per_chunk: int) -> None:
        """Start a worker hashing chunks ``first``, ``first + step``, … into a new pipe."""
        rfd, wfd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, min(_MAX_PIPE, 4 * digests_per_chunk))
        try:
            pid = os.fork()
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            self._child(rfd, wfd, first, step)
        os.close(wfd)
        self._pids.append(pid)
        self._pipes.append(rfd)

    def _child(self, rfd: int, wfd: int, first: int, step: int) -> None:  # pragma: no cover
        from pyverity.fs.atomic import write_all  # here: pathlib is not on the start-up path

        status = 1
        try:
            os.close(rfd)
            for other in self._pipes:
                os.close(other)
            view: memoryview | None = None
            nchunks = -(-self.size // self.chunk)
            bs = self.block_size
            for k in range(first, nchunks, step):
                offset = k * self.chunk
                want = min(self.chunk, self.size - offset)
                if self.extents and _mappable(self.extents, offset, want, bs):
                    digests = _hash_mapped(self._fd, offset, want, run=self._run)
                else:
                    if view is None:
                        view = memoryview(bytearray(self.chunk))
                    digests = _hash_chunk(
                        self._fd, view, offset, want, run=self._run, block_size=bs
                    )
                write_all(wfd, digests)
            status = _EXIT_OK
        except FileChangedError:
            status = _EXIT_SHRANK
        except OSError as e:
            status = _EXIT_OS_ERROR + (e.errno if e.errno and e.errno < 156 else 0)
        except BaseException:  # noqa: BLE001 - the child must reach _exit whatever happens
            status = 1
        finally:
            os._exit(status)

    def receive(self, index: int, nbytes: int) -> bytes:
        """Read the next ``nbytes`` of digests from worker ``index``."""
        rfd = self._pipes[index]
        parts = []
        while nbytes:
            data = os.read(rfd, nbytes)
            if not data:
                self._failed(index)
            parts.append(data)
            nbytes -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _failed(self, index: int) -> None:
        """Worker ``index`` closed its pipe early: reap it and raise what its status means."""
        pid = self._pids[index]
        _, status = os.waitpid(pid, 0)
        self._pids[index] = 0
        code = os.waitstatus_to_exitcode(status)
        if code in (_EXIT_SHRANK, -signal.SIGBUS):
            raise FileChangedError("file shrank while it was being hashed")
        if code > _EXIT_OS_ERROR:
            err = code - _EXIT_OS_ERROR
            raise OSError(err, os.strerror(err))
        raise InputError(f"a hashing worker (pid {pid}) failed with status {code}")

    def join(self) -> None:
        """Wait for every worker to exit after delivering all its digests."""
        for i, pid in enumerate(self._pids):
            if pid:
                _, status = os.waitpid(pid, 0)
                self._pids[i] = 0
                if os.waitstatus_to_exitcode(status) != _EXIT_OK:
                    raise InputError(f"a hashing worker (pid {pid}) failed at exit")
        self._close()

    def kill(self) -> None:
        """Stop and reap every worker still running (the build ended early)."""
        for pid in self._pids:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for i, pid in enumerate(self._pids):
            if pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self._pids[i] = 0
        self._close()

    def _close(self) -> None:
        for rfd in self._pipes:
            with contextlib.suppress(OSError):
                os.close(rfd)
        self._pipes = []


class _ThreadWorkers:
    """Hashing threads with :class:`_Workers`' interface, for processes that must not fork.

    Used only with the accelerator (it releases the GIL while it hashes a chunk). Each thread
    hands its chunks' digests over a small queue; stopping is cooperative (an event checked
    per chunk, and queues drained so that no thread stays blocked on a full one).
    """

    def __init__(self, fd: int, run: RunHasher, *, size: int, chunk: int, block_size: int) -> None:
        import queue
        import threading

        self._queue_type = queue.Queue
        self._thread_type = threading.Thread
        self._stop = threading.Event()
        self._fd = fd
        self._run = run
        self.size = size
        self.chunk = chunk
        self.block_size = block_size
        self._queues: list[queue.Queue[bytes | BaseException]] = []
        self._threads: list[threading.Thread] = []

    def fork(self, *, first: int, step: int, digests_per_chunk: int) -> None:
        """Start a thread hashing chunks ``first``, ``first + step``, …"""
        del digests_per_chunk
        q: Queue[bytes | BaseException] = self._queue_type(maxsize=4)
        thread = self._thread_type(
            target=self._work, args=(q, first, step), name="pyverity-hash", daemon=True
        )
        self._queues.append(q)
        self._threads.append(thread)
        thread.start()

    def _work(self, q: Queue[bytes | BaseException], first: int, step: int) -> None:
        item: bytes | BaseException
        view = memoryview(bytearray(self.chunk))
        for k in range(first, -(-self.size // self.chunk), step):
            offset = k * self.chunk
            want = min(self.chunk, self.size - offset)
            try:
                item = _hash_chunk(
                    self._fd, view, offset, want, run=self._run, block_size=self.block_size
                )
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                item = e
            if self._stop.is_set():
                return
            q.put(item)
            if isinstance(item, BaseException):
                return

    def receive(self, index: int, nbytes: int) -> bytes:
        """The next chunk's digests from thread ``index`` (its error is raised here)."""
        item = self._queues[index].get()
        if isinstance(item, BaseException):
            raise item
        if len(item) != nbytes:  # pragma: no cover - a bug, not a file change
            raise InputError("a hashing thread returned digests of the wrong length")
        return item

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def kill(self) -> None:
        """Stop every thread (after its current chunk) and wait for it."""
        self._stop.set()
        for q, thread in zip(self._queues, self._threads, strict=True):
            while thread.is_alive():
                with contextlib.suppress(Exception):
                    while True:
                        q.get_nowait()
                thread.join(0.01)
