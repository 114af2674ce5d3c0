"""Talking to a running daemon: one JSON request and its reply over the control socket.

Path requests send the file's descriptor along (``SCM_RIGHTS``) when the caller can open it,
which is the daemon's proof that the caller may ask about that file. ``wait`` and
``build_now`` are what ``pyverity sign/enable --wait`` and the reader use.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pyverity.daemon.config import DEFAULT_STATE_DIR, socket_path
from pyverity.errors import StorageError

__all__ = [
    "DaemonDeniedError",
    "build_now",
    "canonical_path",
    "daemon_running",
    "default_state_dir",
    "rebuild",
    "request",
    "wait",
]

_MAX_REPLY = 1 << 26


class DaemonDeniedError(StorageError):
    """The daemon's control socket exists but this caller may not connect to it."""


def default_state_dir() -> Path:
    return Path(os.environ.get("PYVERITY_STATE_DIR", str(DEFAULT_STATE_DIR)))


def canonical_path(path: str | os.PathLike[str]) -> str:
    """Absolute, with the directories resolved but the last component not followed."""
    p = Path(os.path.abspath(path))  # noqa: PTH100 (no resolution of the last component)
    return str(Path(os.path.realpath(p.parent)) / p.name)


def daemon_running(state_dir: Path | None = None) -> bool:
    """Whether a daemon answers; a caller it denies gets :class:`DaemonDeniedError`."""
    try:
        request({"op": "metrics"}, state_dir=state_dir, timeout=2)
    except DaemonDeniedError:
        raise
    except StorageError:
        return False
    return True


def _open_for_proof(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def request(
    req: dict[str, Any],
    *,
    state_dir: Path | None = None,
    timeout: float | None = 30,
    proof_path: str | None = None,
) -> dict[str, Any]:
    """Send ``req`` and return the reply; :class:`StorageError` if no daemon answers."""
    sock_path = socket_path(state_dir or default_state_dir())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = _open_for_proof(proof_path) if proof_path else None
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise DaemonDeniedError(
                    f"permission denied: uid {os.geteuid()} may not use the pyverity daemon's"
                    f" control socket {sock_path}",
                    remedy="run as the daemon's user, or ask its administrator",
                ) from e
            raise StorageError(
                f"the pyverity daemon is not running ({sock_path}: {e.strerror})",
                remedy="start it with `pyverity daemon` (or pass --state-dir)",
            ) from e
        data = (json.dumps(req) + "\n").encode()
        if fd is not None:
            socket.send_fds(sock, [data], [fd])
        else:
            sock.sendall(data)
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError as e:
                raise StorageError("the pyverity daemon did not answer in time") from e
            if not chunk:
                raise StorageError("the pyverity daemon closed the connection")
            buf += chunk
            if len(buf) > _MAX_REPLY:
                raise StorageError("reply from the daemon is too large")
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        sock.close()
    reply: dict[str, Any] = json.loads(buf)
    return reply


def _path_request(
    op: str, path: str | os.PathLike[str], state_dir: Path | None, timeout: float, **extra: Any
) -> dict[str, Any]:
    p = canonical_path(path)
    deadline = time.monotonic() + timeout
    req = {"op": op, "path": p, "timeout": timeout, **extra}
    return request(
        req, state_dir=state_dir, timeout=max(1.0, deadline - time.monotonic() + 5), proof_path=p
    )


def wait(
    path: str | os.PathLike[str], *, state_dir: Path | None = None, timeout: float = 3600
) -> dict[str, Any]:
    """Block until ``path`` leaves PENDING/BUILDING (or ``timeout``); the reply has ``state``."""
    return _path_request("wait", path, state_dir, timeout)


def build_now(
    path: str | os.PathLike[str], *, state_dir: Path | None = None, timeout: float = 3600
) -> dict[str, Any]:
    """A first-use request: the build of ``path`` jumps the queue; returns when it is done."""
    return _path_request("build-now", path, state_dir, timeout)


def rebuild(
    path: str | os.PathLike[str],
    *,
    state_dir: Path | None = None,
    wait_done: bool = False,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Ask for a new build of ``path`` (how a STALE file leaves STALE without a new attribute)."""
    return _path_request("rebuild", path, state_dir, timeout, wait=wait_done)


def wait_and_report(
    paths: list[str], *, state_dir: Path | None = None, timeout: float = 3600
) -> int:
    """``--wait`` of ``sign``/``enable``: wait for each file, print one line each, exit code.

    0 when every file is READY; 1 otherwise (the line says the state and why).
    """
    import sys

    worst = 0
    deadline = time.monotonic() + timeout
    for path in paths:
        left = max(0.1, deadline - time.monotonic())
        reply = wait(path, state_dir=state_dir, timeout=left)
        state = reply.get("state", "?")
        if reply.get("ok") and state == "READY":
            print(f"'{path}': READY")
            continue
        why = reply.get("error") or ("not protected" if state == "NONE" else "")
        sys.stderr.write(f"'{path}': {state}" + (f" ({why})" if why else "") + "\n")
        worst = 1
    return worst
