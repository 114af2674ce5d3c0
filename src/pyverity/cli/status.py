"""``pyverity status [PATH...]``: per-file states, progress bars and totals.

Reads the daemon's state database directly (read-only; it is committed a few times a second,
so progress is live enough) when it can; otherwise asks the running daemon over its socket
(which only answers about files the caller could open itself). Read directly, the database
may have been left by a daemon that is gone: whether one runs is told by its lock
(``daemon.lock``, held while it lives), and with none a BUILDING file is shown as PENDING
("daemon not running"), as that is what it is until a daemon starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyverity.cli._common import ArgumentParser
from pyverity.errors import StorageError

__all__ = ["main"]

_BAR = 20


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


def _line(f: dict[str, Any]) -> str:
    frac = float(f.get("progress", 0.0))
    filled = round(frac * _BAR)
    bar = "#" * filled + "." * (_BAR - filled)
    err = f"  ({f['error']})" if f.get("error") else ""
    size = _human(int(f.get("size", 0)))
    return f"{f['state']:<9} [{bar}] {frac * 100:3.0f}% {size:>7}  {f['path']}{err}"


_NOT_RUNNING = "daemon not running: the build continues when it starts"


def daemon_alive(state_dir: Path) -> bool:
    """Whether a daemon holds the state directory's lock (it does while it runs)."""
    try:
        fd = os.open(state_dir / "daemon.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing also releases a lock just taken
    return False


def _not_building(files: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    """No daemon: what the database says is BUILDING is not being built."""
    for f in files:
        if f.get("state") == "BUILDING":
            f["state"] = "PENDING"
            f["error"] = _NOT_RUNNING
    building = totals.pop("BUILDING", None)
    if building is not None:
        pending = totals.setdefault("PENDING", {"count": 0, "size": 0, "progress": 0})
        for k in ("count", "size", "progress"):
            pending[k] = pending.get(k, 0) + building.get(k, 0)


def _from_db(
    db_path: Path, paths: list[str], totals_only: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from pyverity.daemon.control import record_json
    from pyverity.store.statedb import StateDB

    with StateDB(db_path, readonly=True) as db:
        files: list[dict[str, Any]] = []
        if paths:
            for p in paths:
                rec = db.get(p)
                files.append(
                    record_json(rec)
                    if rec
                    else {"path": p, "state": "NONE", "progress": 0.0, "error": ""}
                )
        elif not totals_only:
            files = [record_json(r) for r in db.records()]
        totals = {str(s): vars(t) for s, t in db.totals().items()}
    return files, totals


def _from_daemon(state_dir: Path, paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from pyverity.daemon.client import request

    files = []
    for p in paths:
        reply = request({"op": "status", "path": p}, state_dir=state_dir, proof_path=p)
        if not reply.get("ok"):
            files.append(
                {"path": p, "state": "?", "progress": 0.0, "error": reply.get("error", "")}
            )
        else:
            files.extend(reply["files"])
    reply = request({"op": "status"}, state_dir=state_dir)
    if not paths:
        files = reply.get("building", [])
    return files, reply.get("totals", {})


def _print_totals(totals: dict[str, Any], out: Any) -> None:
    count = sum(t["count"] for t in totals.values())
    size = sum(t["size"] for t in totals.values())
    parts = ", ".join(f"{s} {t['count']}" for s, t in sorted(totals.items()))
    out.write(f"total: {count} files, {_human(size)}" + (f" ({parts})" if parts else "") + "\n")


def _show(args: Any, paths: list[str]) -> int:
    from pyverity.daemon.client import default_state_dir

    state_dir = args.state_dir or default_state_dir()
    db_path = state_dir / "state.db"
    running = True
    if os.access(db_path, os.R_OK):
        files, totals = _from_db(db_path, paths, args.totals)
        running = daemon_alive(state_dir)
        if not running:
            _not_building(files, totals)
    else:
        from pyverity.daemon.client import DaemonDeniedError

        try:
            files, totals = _from_daemon(state_dir, paths)
        except DaemonDeniedError:
            raise  # "permission denied", not "not running"
        except StorageError as e:
            raise StorageError(
                f"no state database readable at {db_path} and no daemon answering",
                remedy="pass --state-dir, or run as the daemon's user",
            ) from e
    out = sys.stdout
    if args.json:
        out.writelines(json.dumps(f) + "\n" for f in files)
        if args.totals or not paths:
            daemon = "running" if running else "not running"
            out.write(json.dumps({"totals": totals, "daemon": daemon}) + "\n")
    else:
        out.writelines(_line(f) + "\n" for f in files)
        if not paths or args.totals:
            _print_totals(totals, out)
        if not running:
            out.write("daemon: not running\n")
    out.flush()
    return 1 if paths and any(f["state"] in ("NONE", "?") for f in files) else 0


def _canon(paths: Iterable[Path]) -> list[str]:
    from pyverity.daemon.client import canonical_path

    return [canonical_path(p) for p in paths]


def main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="pyverity status",
        description="Show the daemon's per-file states (PENDING, BUILDING, READY, STALE, MISMATCH,"
        " INVALID, CLASSIC), build progress, errors and totals.",
    )
    p.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="files to show (default: all)"
    )
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="the daemon's state directory")
    p.add_argument("--json", action="store_true", help="one JSON object per file (and totals)")
    p.add_argument("--totals", action="store_true", help="only the totals (with no PATH)")
    p.add_argument("--watch", action="store_true", help="refresh every second until interrupted")
    args = p.parse_args(argv)
    paths = _canon(args.paths)
    if not args.watch:
        return _show(args, paths)
    while True:
        sys.stdout.write("\x1b[H\x1b[2J")
        _show(args, paths)
        time.sleep(1)
