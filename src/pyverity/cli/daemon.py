"""``pyverity daemon``: run the background tree builder over the configured roots."""

from __future__ import annotations

import logging
from pathlib import Path

from pyverity.cli._common import ArgumentParser

__all__ = ["main"]


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="pyverity daemon",
        description="Watch directories; build, cache and track the Merkle trees of files"
        " whose <ns>.ima or <ns>.verity attribute is written.",
    )
    p.add_argument("--config", type=Path, help="TOML file with the same keys as the options")
    p.add_argument(
        "--root",
        dest="roots",
        action="append",
        type=Path,
        metavar="DIR",
        help="directory tree to watch (repeatable)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="state database, checkpoints and control socket (0700; default /var/lib/pyverity)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="content-addressed tree cache (0700; default /var/cache/pyverity)",
    )
    p.add_argument(
        "--backend",
        choices=("cache", "none", "kernel"),
        help="where trees live: cache (default), none (memory, rebuilt on first use), or kernel"
        " (enable fs-verity where the filesystem supports it; irreversible)",
    )
    p.add_argument(
        "--keyring",
        type=Path,
        metavar="DIR",
        help="trusted certificates; without one, signed files cannot become READY",
    )
    p.add_argument(
        "--xattr-ns",
        choices=("security", "user"),
        help="attribute namespace (default security; user protects against accidents only)",
    )
    p.add_argument("--workers", type=int, metavar="N", help="build processes (default 2)")
    p.add_argument(
        "--crash-policy",
        choices=("resume", "restart"),
        help="after a crash, continue interrupted builds from their checkpoint (resume, default)"
        " or start them over",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        metavar="SECONDS",
        help="how often a build saves its progress (default 1.0)",
    )
    p.add_argument("--nice", type=int, metavar="N", help="CPU niceness of workers (0-19)")
    p.add_argument(
        "--watcher",
        choices=("auto", "fanotify", "inotify"),
        help="how changes are seen: fanotify (one mark per filesystem; root, Linux 5.9+),"
        " inotify (a watch per directory), or auto (default: fanotify where it can be used,"
        " else inotify, saying why)",
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from pyverity.daemon.config import DaemonConfig, load_config
    from pyverity.daemon.core import Daemon

    config = load_config(args.config) if args.config else DaemonConfig()
    roots = tuple(args.roots) if args.roots else None
    config = config.with_options(
        roots=roots,
        state_dir=args.state_dir,
        cache_dir=args.cache_dir,
        backend=args.backend,
        keyring=args.keyring,
        xattr_ns=args.xattr_ns,
        workers=args.workers,
        crash_policy=args.crash_policy,
        checkpoint_interval=args.checkpoint_interval,
        nice=args.nice,
        watcher=args.watcher,
    )
    logging.getLogger("pyverity").setLevel(logging.INFO)
    Daemon(config).run()
    return 0
