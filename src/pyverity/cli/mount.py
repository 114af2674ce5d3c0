"""``pyverity mount SOURCE MOUNTPOINT``: the verifying FUSE filesystem over a directory."""

from __future__ import annotations

import logging
from pathlib import Path

from pyverity.cli._common import ArgumentParser
from pyverity.errors import UsageError

__all__ = ["main"]

log = logging.getLogger(__name__)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="pyverity mount",
        description=(
            "Mount SOURCE on MOUNTPOINT through a FUSE filesystem with fs-verity's semantics:"
            " every file with a descriptor or a v3 signature is verified on every read, block"
            " by block, whatever the policy and the mode (EIO for a corrupt block, or at open"
            " for a descriptor that does not match); the policy adds appraisal (EACCES when an"
            " enforcing appraisal fails) and measurement. Protection holds for access through"
            " MOUNTPOINT only: keep SOURCE out of reach (see docs/mount.md)."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="directory to serve")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where to mount it")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="IMA-style policy (default: appraise every"
        " file that carries a descriptor or signature)",
    )
    p.add_argument("--keyring", metavar="DIR", help="directory of trusted certificates")
    p.add_argument(
        "--rw",
        action="store_true",
        help="pass writes through (protected files opened for writing become STALE)",
    )
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log", metavar="LIST", help="measurement list to append first opens to")
    p.add_argument(
        "--ima-hash",
        metavar="ALG",
        default="sha256",
        help="the kernel's ima_hash=: the whole-file hash measured for files whose security.ima"
        " names no algorithm (default sha256; sha1, sha384, sha512, ...)",
    )
    p.add_argument(
        "--mode",
        choices=("enforce", "log", "fix", "off"),
        default="enforce",
        help="enforce: deny failed appraisals (default); log: log them and serve; fix: as log,"
        " and write the missing descriptor of a file whose v3 signature verified over its"
        " content; off: no appraisal (measured as the policy says). In every mode files with a"
        " descriptor or a v3 signature are still verified on every read (as ima_appraise=off"
        " leaves fs-verity on)",
    )
    p.add_argument(
        "--xattr-ns",
        choices=("security", "user"),
        default="security",
        help="attribute namespace (default: security)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="tree cache directory (the daemon's; default: trees kept in memory only)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="ask the daemon with this state directory for first-use builds (needs --cache)",
    )
    p.add_argument(
        "--no-keep-cache",
        action="store_true",
        help="never keep verified pages in the page cache between opens",
    )
    p.add_argument(
        "--unsafe-no-verify",
        action="store_true",
        help="UNSAFE: turn fs-verity off too, serving every file without any verification,"
        " appraisal or measurement (the baseline of bench/read.py; logs a warning)",
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from pyverity.fuse.config import MountConfig
    from pyverity.reader.options import ReaderOptions

    if args.unsafe_no_verify:
        log.warning(
            "UNSAFE: fs-verity is off, every file is served without verification, appraisal or"
            " measurement (--unsafe-no-verify)"
        )
    policy = keyring = measurements = None
    if args.policy is not None:
        from pyverity.policy.engine import Policy

        policy = Policy.load(args.policy, mode=args.mode)
    elif args.mode == "off":
        from pyverity.policy.engine import Policy

        policy = Policy.parse("", source="--mode off", mode="off")  # appraises nothing
    if args.keyring is not None:
        from pyverity.keys.keyring import Keyring

        keyring = Keyring.from_directory(args.keyring)
    from pyverity.format.ima import algo_by_name

    try:
        ima_hash = algo_by_name(args.ima_hash).name
    except UsageError as e:
        raise UsageError(f"--ima-hash: {e}", remedy=e.remedy) from None
    if args.log is not None:
        from pyverity.measure.log import MeasurementLog

        if policy is None:
            log.warning("--log without --policy: nothing is measured (no measure rule)")

        measurements = MeasurementLog.open(args.log, ima_hash=ima_hash)
    from pyverity.fuse.ops import LockedStore
    from pyverity.store.cache import open_store

    store = LockedStore(open_store("cache" if args.cache else "none", args.cache))
    first_use_build = None
    if args.state_dir is not None:
        if args.cache is None:
            raise UsageError("--state-dir needs --cache (the daemon's tree cache)")
        from functools import partial

        from pyverity.daemon.client import build_now

        first_use_build = partial(build_now, state_dir=Path(args.state_dir), timeout=600)
    try:
        config = MountConfig(
            source=Path(args.source),
            mountpoint=Path(args.mountpoint),
            rw=args.rw,
            reader=ReaderOptions(
                xattr_ns=args.xattr_ns,
                policy=policy,
                keyring=keyring,
                enforce=args.mode == "enforce",
                measurements=measurements,
                ima_hash=ima_hash,
                store=store,
                # The mount's reads already run on several FUSE threads at once: splitting each
                # run across a pool only adds hand-offs (measured: +14 % server CPU, no gain).
                hash_pool=None,
                first_use_build=first_use_build,
            ),
            keep_cache=not args.no_keep_cache,
            unsafe_no_verify=args.unsafe_no_verify,
        )
        from pyverity.fuse.mount import run_mount

        run_mount(config, foreground=args.foreground)
    finally:
        if measurements is not None:
            measurements.close()
    return 0
