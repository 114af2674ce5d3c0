"""``pyverity enable PATH...``: protect files unsigned — write only the ``<ns>.verity`` descriptor.

The descriptor (kernel layout, 256 bytes) carries the root hash and the tree parameters; the
file digest is its hash (DESIGN.md §2). A stale 0x06 signature is removed after it, since it
could no longer match. Without a signature, ``user.verity`` protects against accidents only.

This module also holds the option helpers ``sign`` and ``verify`` share (tree options,
attribute namespace, recursion, progress); it imports no ``cryptography``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyverity.cli._common import ArgumentParser
from pyverity.errors import Error, UsageError
from pyverity.format.digest import format_digest

if TYPE_CHECKING:
    import argparse

    from pyverity.format.params import TreeParams
    from pyverity.protect.batch import Outcome
    from pyverity.protect.sign import HashedFile

__all__ = [
    "Progress",
    "add_namespace_options",
    "add_tree_options",
    "main",
    "namespace_of",
    "print_failure",
    "tree_params_of",
]


def add_tree_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hash-alg", default="sha256", metavar="ALG", help="sha256 (default) or sha512"
    )
    parser.add_argument(
        "--block-size", type=int, default=4096, metavar="N", help="1024..65536 (default 4096)"
    )
    parser.add_argument("--salt", default="", metavar="HEX", help="salt, up to 32 bytes in hex")


def tree_params_of(args: argparse.Namespace) -> TreeParams:
    """Tree parameters from the options, within the bounds readers accept (1–64 KiB blocks)."""
    from pyverity.errors import FormatError
    from pyverity.format import hashalg
    from pyverity.format.params import TreeParams

    try:
        salt = bytes.fromhex(args.salt)
    except ValueError:
        raise UsageError(f"invalid salt '{args.salt}': expected hex digits") from None
    try:
        params = TreeParams(hashalg.by_name(args.hash_alg), args.block_size, salt)
        params.check_bounded()
    except FormatError as e:
        raise UsageError(str(e)) from None
    return params


def add_namespace_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--xattr-ns",
        choices=("security", "user"),
        default=None,
        help="attribute namespace (default: security)",
    )
    group.add_argument(
        "--xattr-user", action="store_true", help="same as --xattr-ns user (as evmctl)"
    )


def namespace_of(args: argparse.Namespace) -> str:
    if args.xattr_user:
        return "user"
    return str(args.xattr_ns or "security")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="process directories recursively"
    )
    parser.add_argument(
        "--jobs", type=_positive, default=None, metavar="N", help="worker processes (default: CPUs)"
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"invalid --jobs '{text}': expected a positive integer")
    return value


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, verb: str, *, enabled: bool) -> None:
        self.total = total
        self.verb = verb
        self.done = 0
        self.failed = 0
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, outcome: Outcome[Any]) -> None:
        self.done += 1
        if outcome.failure is not None:
            self.failed += 1
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            failed = f", {self.failed} failed" if self.failed else ""
            sys.stderr.write(f"\r{self.verb} [{bar}] {self.done}/{self.total}{failed}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def summary(self) -> None:
        failed = f", {self.failed} failed" if self.failed else ""
        noun = "file" if self.done == 1 else "files"
        sys.stderr.write(f"{self.verb}: {self.done - self.failed} {noun} done{failed}\n")


def print_failure(path: str, message: str, remedy: str | None = None) -> None:
    sys.stderr.write(f"ERROR: {path}: {message}\n")
    if remedy:
        sys.stderr.write(f"{remedy}\n")


def report_failed(out: Outcome[Any]) -> int:
    """Print the failure of an outcome that has no value; its exit code."""
    failure = out.failure
    assert failure is not None  # noqa: S101 - an outcome holds a value or a failure
    print_failure(out.path, failure.message, failure.remedy)
    return failure.exit_code


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity enable",
        description="Protect files unsigned: write the fs-verity descriptor to <ns>.verity.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    add_tree_options(parser)
    add_namespace_options(parser)
    add_wait_options(parser)
    add_batch_options(parser)
    parser.add_argument(
        "--kernel",
        action="store_true",
        help="then enable the kernel's fs-verity with the descriptor's parameters (ext4 -O"
        " verity, f2fs, btrfs): the kernel keeps and checks the tree, and the file becomes"
        " read-only for good",
    )
    parser.add_argument(
        "--signature",
        metavar="SIG",
        help="with --kernel and one FILE: the built-in signature (fsverity sign / pyverity sign"
        " --builtin-sig) the kernel checks against its .fs-verity keyring",
    )
    return parser


def _kernel_enable(hashed: HashedFile, *, quiet: bool, signature: bytes = b"") -> int:
    """``--kernel``: FS_IOC_ENABLE_VERITY with the descriptor just written (store.kernel).

    Returns the exit code (0, or the error's after printing it).
    """
    from pyverity.store.kernel import enable_fd

    try:
        fd = hashed.open()  # as it was hashed: beneath its walk root for -r
        try:
            verity = enable_fd(
                fd,
                hashed.descriptor,
                label=hashed.path,
                unchanged_since=hashed.identity,
                signature=signature,
            )
        finally:
            os.close(fd)
    except Error as e:
        print_failure(hashed.path, e.message, e.remedy)
        return e.exit_code
    if not quiet:
        print(f"Enabled fs-verity on '{hashed.path}' ({verity.digest}) in the kernel")
    return 0


def add_wait_options(parser: ArgumentParser) -> None:
    """``--wait``: block until the daemon has built the trees (READY), or say why not."""
    parser.add_argument(
        "--wait", action="store_true", help="wait until the daemon has built each file's tree"
    )
    parser.add_argument("--wait-timeout", type=float, default=3600, metavar="SECONDS")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="the daemon's state dir")


def wait_for_daemon(args: argparse.Namespace, paths: list[str]) -> int:
    from pyverity.daemon.client import wait_and_report

    return wait_and_report(paths, state_dir=args.state_dir, timeout=args.wait_timeout)


def _read_signature(args: argparse.Namespace) -> bytes:
    """``--signature SIG``: the built-in signature's bytes, parsed strictly before the
    irreversible enable (the kernel checks it; a malformed one is refused here first)."""
    if args.signature is None:
        return b""
    if not args.kernel:
        raise UsageError("--signature needs --kernel (the kernel checks built-in signatures)")
    if len(args.paths) != 1 or args.recursive:
        raise UsageError("--signature enables exactly one FILE (a signature names one digest)")
    from pyverity.fs.inputs import read_input
    from pyverity.keys.pkcs7 import MAX_BUILTIN_SIG_SIZE, parse_builtin_signature

    data = read_input(args.signature, "signature file", MAX_BUILTIN_SIG_SIZE)
    parse_builtin_signature(data)
    return data


def main(argv: list[str]) -> int:
    from pyverity.protect.batch import expand_paths, map_files
    from pyverity.protect.sign import hash_file, write_hashed

    args = build_parser().parse_args(argv)
    params = tree_params_of(args)
    ns = namespace_of(args)
    signature = _read_signature(args)
    files = expand_paths(args.paths, recursive=args.recursive)
    progress = Progress(len(files), "enable", enabled=args.recursive)
    worst = 0
    written: list[str] = []
    fn = functools.partial(hash_file, params=params, jobs=1 if len(files) > 1 else args.jobs)
    for out in map_files(fn, files, jobs=args.jobs, on_done=progress):
        if out.value is not None:
            try:
                done = write_hashed(out.value, None, namespace=ns)
            except Error as e:
                print_failure(out.path, e.message, e.remedy)
                worst = max(worst, e.exit_code)
                continue
            written.append(out.path)
            if not args.recursive:
                assert done.descriptor is not None  # noqa: S101
                desc = done.descriptor
                text = format_digest(desc.hash_alg.name, desc.digest())
                print(f"Protected file '{out.path}' ({text}) in {ns}.verity")
            if args.kernel:
                worst = max(
                    worst, _kernel_enable(out.value, quiet=args.recursive, signature=signature)
                )
        else:
            worst = max(worst, report_failed(out))
    if args.recursive and not progress.enabled:
        progress.summary()
    if args.wait and written:
        worst = max(worst, wait_for_daemon(args, written))
    return worst


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
