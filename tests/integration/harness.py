"""Start the real daemon in a subprocess and look at what it did (database, cache, socket)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyverity.daemon import client
from pyverity.errors import StorageError
from pyverity.format.digest import parse_digest
from pyverity.store.cache import TreeCache
from pyverity.store.statedb import FileRecord, StateDB
from tests.support.polling import wait_until
from tests.support.procs import stop
from tests.support.protect import TOOL_TIMEOUT, fsverity_digest, protect, setfattr

__all__ = [
    "TOOL_TIMEOUT",
    "Daemon",
    "fsverity_digest",
    "protect",
    "pyverity",
    "setfattr",
    "wait_until",
    "write_file",
]


class Daemon:
    """A ``pyverity daemon`` subprocess over ``root`` with its state and cache under ``base``."""

    def __init__(self, base: Path, *args: str, ns: str = "user") -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.cache = base / "cache"
        self.root.mkdir(exist_ok=True)
        self.args = [
            "--root",
            str(self.root),
            "--state-dir",
            str(self.state),
            "--cache-dir",
            str(self.cache),
            "--xattr-ns",
            ns,
            "--checkpoint-interval",
            "0.1",
            *args,
        ]
        self.ns = ns
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"
        #: How many build starts of the log a test has looked at.
        self.seen_starts = 0

    def start(self, *extra: str, timeout: float = 20) -> Daemon:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyverity.cli", "daemon", *self.args, *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()}")
            try:
                client.request({"op": "metrics"}, state_dir=self.state, timeout=2)
            except StorageError:
                return False
            return True

        wait_until(answers, timeout=timeout, interval=0.05, what=f"daemon start\n{self.log}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=20)
        self.proc = None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def workers(self) -> list[int]:
        """Pids of live worker processes started by this daemon's tests (by command line)."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                st = (d / "stat").read_text()
            except OSError:
                continue
            mine = b"pyverity.daemon.worker" in cmd and str(self.state).encode() in b" ".join(cmd)
            if mine and st.rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(d.name))
        return out

    def request(self, req: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return client.request(req, state_dir=self.state, **kw)

    def sync(self) -> int:
        """Wait until the daemon has handled every event queued before now and committed;
        how many builds it has queued (not started)."""
        reply = self.request({"op": "sync"})
        assert reply["ok"], reply
        return int(reply["queued"])

    def wait_log(self, text: str, *, timeout: float = 10) -> str:
        """Wait until the daemon's log contains ``text``; the log."""
        return str(
            self.wait_for(
                lambda: text in self.log.read_text() and self.log.read_text(),
                timeout=timeout,
                what=f"{text!r} in the log",
            )
        )

    def wait_progress(self, path: Path, above: int = 0, *, timeout: float = 60) -> FileRecord:
        """Wait until ``path`` is BUILDING with more than ``above`` bytes hashed (or READY)."""

        def moved() -> FileRecord | None:
            rec = self.record(path)
            if rec is None:
                return None
            if str(rec.state) == "READY" or (str(rec.state) == "BUILDING" and rec.progress > above):
                return rec
            return None

        rec: FileRecord = self.wait_for(moved, timeout=timeout, what=f"{path} hashing past {above}")
        return rec

    def metrics(self) -> dict[str, float]:
        text = self.request({"op": "metrics"})["text"]
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def record(self, path: Path) -> FileRecord | None:
        with StateDB(self.state / "state.db", readonly=True) as db:
            return db.get(client.canonical_path(path))

    def wait_state(self, path: Path, *states: str, timeout: float = 60) -> FileRecord:
        def reached() -> FileRecord | None:
            rec = self.record(path)
            return rec if rec is not None and str(rec.state) in states else None

        try:
            return wait_until(reached, timeout=timeout)
        except AssertionError:
            got = self.record(path)
            raise AssertionError(
                f"{path} never reached {states}: {got}\n{self.log.read_text()}"
            ) from None

    def ready(self, name: str, size: int, out: Path) -> tuple[Path, FileRecord]:
        """Write ``size`` random bytes to ``root/name``, protect it (``fsverity``'s digest in
        this daemon's namespace) and wait until the daemon has it READY."""
        path = self.root / name
        write_file(path, size)
        protect(path, out, ns=self.ns)
        return path, self.wait_state(path, "READY")

    def wait_gone(self, path: Path, timeout: float = 5) -> None:
        wait_until(lambda: self.record(path) is None, timeout=timeout, what=f"{path} forgotten")

    def wait_for(self, probe: Callable[[], Any], *, timeout: float = 30, what: str = "") -> Any:
        """:func:`wait_until` with the daemon's log in the message."""
        try:
            return wait_until(probe, timeout=timeout, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log.read_text()}") from None

    def cache_entry(self, digest: str) -> Path:
        return TreeCache(self.cache).path_for(*parse_digest(digest))


def write_file(path: Path, size: int, *, sparse: bool = False) -> None:
    with path.open("wb") as f:
        if sparse:
            f.truncate(size)
            f.seek(size // 2)
            f.write(os.urandom(4096))
            return
        chunk = os.urandom(1 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        f.write(b"")
    # distinct content per file
    with path.open("r+b") as f:
        f.write(os.urandom(64))


def pyverity(
    *args: str, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``pyverity`` command of this interpreter's installation."""
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )
