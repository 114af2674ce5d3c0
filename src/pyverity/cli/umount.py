"""``pyverity umount MOUNTPOINT``: unmount a pyverity FUSE mount."""

from __future__ import annotations

from pyverity.cli._common import ArgumentParser

__all__ = ["main"]


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pyverity umount", description="Unmount a pyverity FUSE mount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--lazy", "-z", action="store_true", help="detach now, clean up when unused")
    args = p.parse_args(argv)
    from pyverity.fuse.mount import umount

    umount(args.mountpoint, lazy=args.lazy)
    return 0
