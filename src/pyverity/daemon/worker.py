"""A build worker process: ``python -m pyverity.daemon.worker SOCKFD PARENT LOCK NICE``.

It dies with the daemon (``PR_SET_PDEATHSIG``, and a check that its parent is still the one
that started it), holds a shared lock on the state directory's ``workers.lock`` (a new daemon
waits for old workers to be gone), and never writes the state or the cache: it receives a job
and the file's descriptor over its socket (``SCM_RIGHTS``), and sends back progress,
checkpoints and the finished tree; the daemon commits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import platform
import signal
import sys
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import Any

from pyverity.daemon.build import Stopped, build_from_offset
from pyverity.errors import Error
from pyverity.format.hashalg import by_number
from pyverity.format.params import TreeParams
from pyverity.fs.libc import libc

__all__ = ["main", "set_death_signal", "set_io_idle"]

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
        self.backlog: list[Any] = []

    def poll(self) -> str | None:
        while self.conn.poll():
            msg = self.conn.recv()
            if msg[0] in ("cancel", "yield") and msg[1] == self.job_id:
                return str(msg[0])
            if msg[0] == "exit":
                return "cancel"
        return None

    def progress(self, offset: int) -> None:
        self.conn.send(("progress", self.job_id, offset))

    def checkpoint(self, offset: int, leaves: bytes) -> None:
        self.conn.send(("checkpoint", self.job_id, offset, leaves))


def _run(conn: Connection, spec: dict[str, Any], fd: int) -> None:
    job = _Job(conn, spec["job_id"])
    try:
        params = TreeParams(by_number(spec["alg"]), spec["block_size"], spec["salt"])
        tree = build_from_offset(
            fd,
            params,
            tuple(spec["snapshot"]),
            offset=spec["offset"],
            leaves=spec["leaves"],
            checkpoint_seconds=spec["checkpoint_seconds"],
            threads=spec.get("threads", 1),
            on_progress=job.progress,
            on_checkpoint=job.checkpoint,
            poll=job.poll,
        )
    except Stopped as e:
        conn.send(("stopped", job.job_id, e.why, e.offset))
    except Error as e:
        conn.send(("failed", job.job_id, type(e).__name__, str(e)))
    except OSError as e:
        conn.send(("failed", job.job_id, "OSError", e.strerror or str(e)))
    else:
        conn.send(("done", job.job_id, tree.descriptor.to_bytes(), tree.tree))
    finally:
        os.close(fd)


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
        conn.send(("hello", os.getpid()))
        while True:
            msg = conn.recv()
            if msg[0] == "exit":
                return 0
            if msg[0] == "build":
                fd = recv_handle(conn)
                _run(conn, msg[1], fd)
    except (EOFError, OSError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
