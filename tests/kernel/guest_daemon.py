"""Run inside the test VM (host's Python over 9p, chrooted): the daemon with ``--backend kernel``.

``python guest_daemon.py DIR KEYS STATE LOG``: signs the files of DIR (``user`` namespace) with the
key in KEYS, prepares them (see :data:`tests.kernel.cases.DAEMON_FILES`), runs
``pyverity daemon --backend kernel`` over DIR until every file is settled, then opens the files
with ``pyverity.open``. Prints one line per check, ``<check> <file> <result>``; the shell then
measures each file with ``vhelper`` as an independent witness.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyverity
from pyverity.cli import main as cli_main
from pyverity.daemon import client
from pyverity.format.digest import parse_digest
from pyverity.fs import ioctl
from pyverity.protect import read_protection
from pyverity.reader.options import ReaderOptions
from pyverity.store import kernel
from pyverity.store.cache import TreeCache
from pyverity.store.statedb import FileRecord, StateDB
from tests.support.polling import wait_until  # the checkout is on the guest's PYTHONPATH

FINAL = ("READY", "MISMATCH", "INVALID")


def sign(keys: Path, paths: list[Path], *options: str) -> None:
    argv = ["sign", "--key", str(keys / "ima.key"), "--cert", str(keys / "ima.der")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli_main([*argv, "--xattr-ns", "user", *options, *map(str, paths)])
    assert rc == 0, out.getvalue()


def prepare(d: Path, keys: Path) -> None:
    sign(keys, [d / "signed", d / "pre", d / "other", d / "plain"])
    sign(keys, [d / "small"], "--block-size", "1024")
    os.removexattr(d / "signed", "user.verity")  # a v3 signature alone: the digest is built
    fd = os.open(d / "pre", os.O_RDONLY)
    try:
        declared = read_protection(fd, "user").unverified_descriptor
    finally:
        os.close(fd)
    assert declared is not None
    kernel.enable(d / "pre", declared)  # fs-verity on before the daemon: READY, no build
    fd = os.open(d / "other", os.O_RDONLY)
    try:  # fs-verity with other parameters than declared: MISMATCH
        ioctl.enable_verity(fd, hash_algorithm=2, block_size=4096, salt=b"")
    finally:
        os.close(fd)


def settle(state: Path, names: list[str], d: Path, timeout: float = 90) -> dict[str, object]:
    """The rows of ``names`` once all are final; the last rows seen if not within ``timeout``
    (the host reports which file did not settle)."""
    recs: dict[str, FileRecord | None] = {}

    def all_final() -> bool:
        if not (state / "control.sock").exists():  # not listening yet: no database to read
            return False
        with StateDB(state / "state.db", readonly=True) as db:
            recs.update({n: db.get(str(d / n)) for n in names})
        return all(r is not None and str(r.state) in FINAL for r in recs.values())

    with contextlib.suppress(AssertionError):
        wait_until(all_final, timeout=timeout, interval=0.1, what="every file settled")
    return dict(recs)


def metrics(state: Path) -> dict[str, str]:
    text = client.request({"op": "metrics"}, state_dir=state)["text"]
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")


def read_back(d: Path, keys: Path, name: str) -> str:
    try:
        with pyverity.open(d / name, keyring=keys, options=ReaderOptions(xattr_ns="user")) as f:
            data = f.read()
            kind = type(f.raw.verifier).__name__  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - reported to the host
        return f"{type(e).__name__}: {e}"
    return f"{kind} {hashlib.sha256(data).hexdigest()}"


def main(directory: str, keys_dir: str, state_dir: str, log_path: str) -> None:
    d, keys, state = Path(directory), Path(keys_dir), Path(state_dir)
    prepare(d, keys)
    names = ["signed", "small", "pre", "other", "plain"]
    keyring = keys / "keyring"
    cmd = [
        sys.executable, "-m", "pyverity.cli", "daemon", "--root", str(d),
        "--state-dir", str(state), "--cache-dir", str(state / "cache"),
        "--backend", "kernel", "--keyring", str(keyring), "--xattr-ns", "user",
        "--workers", "1", "--nice", "0",
    ]  # fmt: skip
    with Path(log_path).open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            recs = settle(state, names, d)
            m = metrics(state)
            print("metrics builds_started", m.get("pyverity_builds_started_total", m))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print("daemon exit", proc.returncode)
    for n in names:
        r = recs.get(n)
        print("state", n, getattr(r, "state", None), getattr(r, "error", ""))
        print("digest", n, getattr(r, "digest", None))
        verity = kernel.kernel_digest(d / n)
        print("kernel", n, verity.digest if verity else None)
        digest = str(getattr(r, "digest", "") or "")
        cached = digest and TreeCache(state / "cache").path_for(*parse_digest(digest)).exists()
        print("cache", n, bool(cached))
    for n in ("signed", "small", "pre", "plain"):
        print("open", n, read_back(d, keyring, n))
    os.sync()


if __name__ == "__main__":
    main(*sys.argv[1:5])
