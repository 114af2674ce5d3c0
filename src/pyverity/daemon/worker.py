"""A build worker process: ``python -m pyverity.daemon.worker SOCKFD PARENT LOCK NICE``.

It dies with the daemon (``PR_SET_PDEATHSIG``, and a check that its parent is still the one
that started it), holds a shared lock on the state directory's ``workers.lock`` (a new daemon
waits for old workers to be gone), and never writes the state: it receives a
:class:`~.protocol.BuildSpec` and the file's descriptor over its socket (``SCM_RIGHTS``), and
sends back progress, checkpoints and the finished tree (:mod:`.protocol`); the daemon commits.
A batch of small files (:class:`~.protocol.SmallBatch`: paths, opened here beneath the roots)
is built and appraised here by the same gate the daemon uses, with the daemon's keys, each
tree that appraised published in the cache unsynced (the daemon makes it durable before it
commits READY), and answered in one message: the daemon keeps the events, the rows and the
commit (ADR 0006).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import importlib
import os
import platform
import signal
import sys
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import TYPE_CHECKING

from pyverity.daemon import protocol as msg
from pyverity.daemon.protection import appraise, keyring_from_certificates
from pyverity.daemon.watcher import open_beneath, open_root
from pyverity.errors import Error, FileChangedError, StorageError
from pyverity.format.hashalg import by_number
from pyverity.format.params import TreeParams
from pyverity.fs.libc import libc
from pyverity.hashing.resumable import Stopped, build_from_offset
from pyverity.hashing.small import build_small
from pyverity.protect import InvalidProtectionError, read_protection
from pyverity.store.cache import TreeCache

if TYPE_CHECKING:
    from pyverity.keys import Keyring

__all__ = ["main", "run_batch", "set_death_signal", "set_io_idle"]

_PR_SET_PDEATHSIG = 1
#: ioprio_set syscall numbers; IOPRIO_CLASS_IDLE = 3, IOPRIO_WHO_PROCESS = 1.
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}


def set_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    if libc().prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def set_io_idle() -> bool:
    """Put this process in the idle I/O class (best effort); returns whether it worked."""
    nr = _IOPRIO_SET.get(platform.machine())
    if nr is None:
        return False
    return bool(libc().syscall(nr, 1, 0, (3 << 13) | 0) == 0)


class _Job:
    def __init__(self, conn: Connection, job_id: int) -> None:
        self.conn = conn
        self.job_id = job_id

    def poll(self) -> str | None:
        while self.conn.poll():
            m = self.conn.recv()
            if isinstance(m, msg.Cancel | msg.Yield) and m.job_id == self.job_id:
                return msg.StopReason.CANCEL if isinstance(m, msg.Cancel) else msg.StopReason.YIELD
            if isinstance(m, msg.Exit):
                return msg.StopReason.CANCEL
        return None

    def progress(self, offset: int) -> None:
        self.conn.send(msg.Progress(self.job_id, offset))

    def checkpoint(self, offset: int, leaves: bytes) -> None:
        self.conn.send(msg.Checkpoint(self.job_id, offset, leaves))


def _failure(e: Error) -> msg.FailureKind:
    if isinstance(e, FileChangedError):
        return msg.FailureKind.FILE_CHANGED
    if isinstance(e, StorageError):
        return msg.FailureKind.STORAGE
    return msg.FailureKind.ERROR


def run_build(conn: Connection, spec: msg.BuildSpec, fd: int) -> None:
    """Build ``spec`` over ``fd`` (closed at the end), reporting on ``conn``."""
    job = _Job(conn, spec.job_id)
    try:
        params = TreeParams(by_number(spec.alg), spec.block_size, spec.salt)
        tree = build_from_offset(
            fd,
            params,
            spec.snapshot,
            offset=spec.offset,
            leaves=spec.leaves,
            checkpoint_seconds=spec.checkpoint_seconds,
            threads=spec.threads,
            on_progress=job.progress,
            on_checkpoint=job.checkpoint,
            poll=job.poll,
        )
    except Stopped as e:
        conn.send(msg.Stopped(job.job_id, msg.StopReason(e.why), e.offset))
    except Error as e:
        conn.send(msg.Failed(job.job_id, _failure(e), str(e)))
    except OSError as e:
        conn.send(msg.Failed(job.job_id, msg.FailureKind.OS, e.strerror or str(e)))
    else:
        conn.send(msg.Done(job.job_id, tree.descriptor.to_bytes(), tree.tree or b""))
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4)
def _cache(directory: str) -> TreeCache:
    return TreeCache(directory, batch_dir_sync=True)


@functools.lru_cache(maxsize=4)
def _keyring(certs: msg.KeyringCertificates | None) -> Keyring | None:
    return keyring_from_certificates(certs)


def _small(
    item: msg.SmallItem, batch: msg.SmallBatch, keyring: Keyring | None, roots: dict[str, int]
) -> msg.SmallResult:
    """Build and appraise one file of a batch, opened beneath its root (``roots``: the roots
    open), its attributes read again from the open file."""
    fail = functools.partial(msg.SmallResult, item.job_id)
    try:
        fd = open_beneath(batch.roots, item.path, roots)
    except OSError as e:  # gone, or not what it was: the daemon looks at it again
        return fail(msg.FailureKind.FILE_CHANGED, f"cannot open it again: {e.strerror}")
    try:
        return _small_open(item, fd, batch, keyring)
    finally:
        os.close(fd)


def _small_open(
    item: msg.SmallItem, fd: int, batch: msg.SmallBatch, keyring: Keyring | None
) -> msg.SmallResult:
    fail = functools.partial(msg.SmallResult, item.job_id)
    try:
        prot = read_protection(fd, batch.namespace)
        if prot.fingerprint != item.attr_fp:
            return fail(msg.FailureKind.FILE_CHANGED, "attributes changed since it was queued")
        built = build_small(fd, prot.tree_params(), item.snapshot)
        verdict = appraise(prot, built, keyring)
    except InvalidProtectionError as e:  # changed into something unusable: looked at again
        return fail(msg.FailureKind.FILE_CHANGED, f"attributes changed since it was queued: {e}")
    except Error as e:
        return fail(_failure(e), str(e))
    except OSError as e:
        return fail(msg.FailureKind.OS, e.strerror or str(e))
    tree, published = built.tree or b"", False
    if verdict.ok and batch.cache_dir is not None:
        try:
            _cache(batch.cache_dir).put_unsynced(built)
        except StorageError:
            pass  # the tree travels, and the daemon writes the entry
        else:  # the daemon makes it durable before it commits READY
            tree, published = b"", True
    return msg.SmallResult.of(
        item.job_id, verdict, built.descriptor.to_bytes(), tree, published=published
    )


def run_batch(conn: Connection, batch: msg.SmallBatch) -> None:
    """Build and appraise every file of ``batch``; answer with one :class:`~.protocol.BatchDone`."""
    keyring = _keyring(batch.keyring)
    roots: dict[str, int] = {}
    try:
        for r in batch.roots:
            with contextlib.suppress(OSError):  # gone: its files fail to open, one by one
                roots[r] = open_root(r)
        results = tuple(_small(item, batch, keyring, roots) for item in batch.items)
    finally:
        for fd in roots.values():
            os.close(fd)
    conn.send(msg.BatchDone(results))


def main(argv: list[str]) -> int:
    sock_fd, parent, lock_path, nice = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    set_death_signal()
    if os.getppid() != parent:
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
        set_io_idle()
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)
    conn = Connection(sock_fd)
    try:
        conn.send(msg.Hello(os.getpid()))
        importlib.import_module("pyverity.keys.keyring")  # before the first batch's keyring
        while True:
            m = conn.recv()
            if isinstance(m, msg.Exit):
                return 0
            if isinstance(m, msg.BuildSpec):
                fd = recv_handle(conn)
                run_build(conn, m, fd)
            elif isinstance(m, msg.SmallBatch):
                run_batch(conn, m)
    except (EOFError, OSError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
