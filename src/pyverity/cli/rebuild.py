"""``pyverity rebuild PATH...``: ask the daemon to build a file's tree again (leaves STALE)."""

from __future__ import annotations

import json
from pathlib import Path

from pyverity.cli._common import ArgumentParser

__all__ = ["main"]


def main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="pyverity rebuild",
        description="Rebuild the Merkle tree of files against their current attributes"
        " (how a STALE file becomes READY again without writing a new attribute).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--state-dir", type=Path, metavar="DIR")
    p.add_argument("--wait", action="store_true", help="wait until each build has finished")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the replies as JSON lines")
    args = p.parse_args(argv)
    from pyverity.daemon.client import rebuild

    rc = 0
    for path in args.paths:
        reply = rebuild(path, state_dir=args.state_dir, wait_done=args.wait, timeout=args.timeout)
        if args.json:
            print(json.dumps(reply))
        elif not reply.get("ok"):
            print(f"{path}: {reply.get('error', 'failed')}")
        else:
            error = f" ({reply['error']})" if reply.get("error") else ""
            print(f"{path}: {reply.get('state')}{error}")
        if not reply.get("ok") or (args.wait and reply.get("state") != "READY"):
            rc = 1
    return rc
