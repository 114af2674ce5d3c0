"""The control socket: a Unix stream socket speaking JSON lines (one request, one reply).

Requests are objects with ``op`` (``status``, ``wait``, ``build-now``, ``rebuild``, ``rescan``,
``metrics``) and an optional ``id`` echoed in the reply. A request may carry an open
descriptor of the file it names (``SCM_RIGHTS``); without one, the caller's credentials
(``SO_PEERCRED``) must allow it to open the file itself. The socket lives in the daemon's 0700
state directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyverity.errors import ConfigurationError

__all__ = ["Client", "Peer", "Server", "denial", "may_open"]

log = logging.getLogger(__name__)

_MAX_LINE = 1 << 16
_MAX_FDS = 4
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def groups(self) -> set[int]:
        """The peer's supplementary groups, from ``/proc`` (empty if unavailable)."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return set()
        for line in text.splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
        return set()


def _permitted(peer: Peer, st: os.stat_result, user: int, group: int, other: int) -> bool:
    """Whether the mode bit that applies to ``peer`` (owner, group or other) is set."""
    if peer.uid == st.st_uid:
        return bool(st.st_mode & user)
    if peer.gid == st.st_gid or st.st_gid in peer.groups():
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def may_open(peer: Peer, path: str, fd: int | None) -> bool:
    """Could ``peer`` open ``path`` for reading? An fd it sent for that same inode proves it."""
    try:
        st = Path(path).lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # symlinks, devices, FIFOs: never tracked, never answered about
    if fd is not None:
        fst = os.fstat(fd)
        return (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino) and stat.S_ISREG(fst.st_mode)
    if peer.uid == 0:
        return True
    if not _permitted(peer, st, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return False
    # Every directory on the way must be searchable by the peer too.
    parent = Path(path).parent
    while True:
        try:
            dst = parent.stat()
        except OSError:
            return False
        if not _permitted(peer, dst, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
        if parent == parent.parent:
            return True
        parent = parent.parent


def _searchable(peer: Peer, directory: Path) -> bool:
    """Could ``peer`` search every directory from ``/`` down to ``directory``?"""
    if peer.uid == 0:
        return True
    for d in (directory, *directory.parents):
        try:
            st = d.stat()
        except OSError:
            return False
        if not _permitted(peer, st, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
    return True


def denial(peer: Peer, path: str, fd: int | None) -> str:
    """Why ``peer`` gets no answer about ``path`` ("" if it may ask): "no such file or
    directory" when it does not exist and the peer could have seen that for itself (it may
    search the directories on the way), "permission denied" otherwise."""
    if may_open(peer, path, fd):
        return ""
    try:
        Path(path).lstat()
    except FileNotFoundError:
        if fd is None and _searchable(peer, Path(path).parent):
            return "no such file or directory"
    except OSError:
        pass
    return "permission denied"


@dataclass(eq=False)
class Client:
    sock: socket.socket
    peer: Peer
    buf: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    closed: bool = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def reply(self, obj: dict[str, Any]) -> None:
        if self.closed:
            return
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5)
            self.sock.sendall(data)
        except OSError:
            self.close()
        finally:
            if not self.closed:
                self.sock.setblocking(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds.clear()
            self.sock.close()


Handler = Callable[[Client, dict[str, Any], int | None], None]


class Server:
    """The listening socket; :meth:`read` feeds complete requests to ``handler``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.sock.bind(str(path))
        except OSError as e:
            self.sock.close()
            raise ConfigurationError(
                f"cannot create the control socket {path}: {e.strerror or e}",
                remedy="choose a shorter --state-dir (socket paths are limited to 107 bytes)",
            ) from e
        finally:
            os.umask(old)
        self.sock.listen(64)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Client | None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.setblocking(False)
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        return Client(conn, Peer(*_UCRED.unpack(cred)))

    def read(self, client: Client, handler: Handler) -> None:
        """Read what ``client`` sent; call ``handler`` per complete line; close on EOF/abuse."""
        try:
            data, fds, _, _ = socket.recv_fds(client.sock, 1 << 16, _MAX_FDS)
        except BlockingIOError:
            return
        except OSError:
            client.close()
            return
        client.fds.extend(fds)
        if not data:
            client.close()
            return
        client.buf += data
        while b"\n" in client.buf:
            line, _, rest = bytes(client.buf).partition(b"\n")
            client.buf = bytearray(rest)
            fd = client.fds.pop(0) if client.fds else None
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")  # noqa: TRY004
            except ValueError as e:
                client.reply({"ok": False, "error": f"bad request: {e}"})
            else:
                try:
                    handler(client, request, fd)
                except Exception as e:  # one bad request must not stop the daemon
                    log.exception("control request failed")
                    client.reply({"ok": False, "error": f"internal error: {e}"})
            finally:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if len(client.buf) > _MAX_LINE:
            client.reply({"ok": False, "error": "request too long"})
            client.close()

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
