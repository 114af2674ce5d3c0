"""``pyverity dump-metadata merkle_tree|descriptor|signature FILE [--offset N --length N]``.

The bytes ``fsverity dump_metadata`` writes to standard output, with its options and rules:
``--offset`` and ``--length`` go together (one read of at most LENGTH bytes at OFFSET, fewer at
the end, none past it); without them, the whole item.

* A file with fs-verity enabled in the kernel: read with ``FS_IOC_READ_VERITY_METADATA``, as
  fsverity does (``signature`` is the built-in PKCS#7 signature given at enable time).
* A file protected by pyverity (a ``<ns>.verity`` descriptor): the descriptor is the attribute
  (parsed strictly first); the Merkle tree comes from pyverity's tree cache (``--cache-dir``,
  default the daemon's), checked in full against the descriptor's root, else it is computed
  from the file and must reproduce the descriptor. Such files have no built-in signature.

Layout of the tree: the kernel's (root level first), the same as ``--out-merkle-tree``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyverity.cli._common import ArgumentParser, OnceAction
from pyverity.cli.enable import add_namespace_options, namespace_of
from pyverity.errors import Error, InputError, IntegrityError, UsageError

if TYPE_CHECKING:
    from pyverity.format.descriptor import Descriptor

__all__ = ["TYPES", "main"]

TYPES = ("merkle_tree", "descriptor", "signature")
_CHUNK = 1 << 20
#: Largest --offset/--length (the kernel's are u64; Python slices need less).
_MAX_LENGTH = (1 << 63) - 1


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"invalid value '{text}': expected a non-negative decimal integer")
    value = int(text)
    if value > _MAX_LENGTH:
        raise UsageError(f"value '{text}' is too large")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity dump-metadata",
        description="Write a file's fs-verity metadata to stdout (as fsverity dump_metadata).",
    )
    parser.add_argument("type", metavar="TYPE", help="merkle_tree, descriptor or signature")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--offset", type=_number, action=OnceAction, metavar="N")
    parser.add_argument("--length", type=_number, action=OnceAction, metavar="N")
    parser.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="pyverity's tree cache (default: daemon's)"
    )
    add_namespace_options(parser)
    return parser


def _kernel_chunks(fd: int, kind: int, offset: int, length: int | None) -> Iterator[bytes]:
    from pyverity.fs import ioctl

    if length is not None:
        yield ioctl.read_verity_metadata(fd, kind, offset, length)
        return
    while True:
        part = ioctl.read_verity_metadata(fd, kind, offset, _CHUNK)
        if not part:
            return
        yield part
        offset += len(part)


def _descriptor_of(fd: int, path: str, ns: str) -> bytes:
    from pyverity.format.descriptor import Descriptor
    from pyverity.fs.xattr import VERITY_SUFFIX, attr_name, get_attr

    name = attr_name(ns, VERITY_SUFFIX)
    raw = get_attr(fd, name)
    if raw is None:
        raise InputError(
            f"'{path}' has neither fs-verity in the kernel nor a {name} descriptor",
            remedy="protect it first: pyverity enable / pyverity sign",
        )
    return Descriptor.from_bytes(raw).to_bytes()


def _tree_of(fd: int, path: str, descriptor_bytes: bytes, cache_dir: Path | None) -> bytes:
    from pyverity.format.descriptor import Descriptor
    from pyverity.hashing import build_tree

    descriptor = Descriptor.from_bytes(descriptor_bytes)
    cached = _cached_tree(descriptor, cache_dir)
    if cached is not None:
        return cached
    tree = build_tree(fd, descriptor.params, keep_tree=True)
    if not hmac.compare_digest(tree.descriptor.to_bytes(), descriptor_bytes):
        raise IntegrityError(
            f"'{path}' does not match its descriptor (changed since it was protected):"
            " its tree cannot be given"
        )
    return tree.tree or b""


def _cached_tree(descriptor: Descriptor, cache_dir: Path | None) -> bytes | None:
    """The verified tree from the cache, or None (no cache there, no entry, or unusable)."""
    from pyverity.store.cache import TreeCache

    if cache_dir is None:
        from pyverity.daemon.config import DEFAULT_CACHE_DIR

        cache_dir = DEFAULT_CACHE_DIR
    if not (cache_dir / "objects").is_dir():
        return None  # never create a cache just to look into it
    try:
        entry = TreeCache(cache_dir).get(descriptor.hash_alg.name, descriptor.digest())
        if entry is None:
            return None
        return entry.verified().tree
    except Error:
        return None


def _chunks(args: argparse.Namespace, ns: str) -> Iterator[bytes]:
    from pyverity.fs import ioctl
    from pyverity.fs.openfile import open_regular

    kind = {"merkle_tree": 1, "descriptor": 2, "signature": 3}[args.type]
    offset = args.offset or 0
    fd = open_regular(args.file)
    try:
        if ioctl.is_verity(fd):
            try:
                yield from _kernel_chunks(fd, kind, offset, args.length)
            except ioctl.NotVerityError as e:  # ENODATA: enabled without a built-in signature
                if kind != ioctl.METADATA_SIGNATURE:
                    raise
                raise ioctl.NotVerityError(
                    f"'{args.file}' has no built-in signature (fs-verity was enabled without one)"
                ) from e
            return
        if kind == ioctl.METADATA_SIGNATURE:
            raise ioctl.NotVerityError(
                f"'{args.file}' has no built-in signature: fs-verity is not enabled on it in"
                " the kernel (pyverity's own signatures are in its IMA attribute)"
            )
        data = _descriptor_of(fd, args.file, ns)
        if kind == ioctl.METADATA_MERKLE_TREE:
            data = _tree_of(fd, args.file, data, args.cache_dir)
        end = len(data) if args.length is None else min(len(data), offset + args.length)
        yield data[offset:end]
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.type not in TYPES:
        raise UsageError(
            f"unknown metadata type: {args.type}",
            remedy='Expected "merkle_tree", "descriptor", or "signature"',
        )
    if (args.offset is None) != (args.length is None):
        given = "--offset" if args.offset is not None else "--length"
        other = "--length" if given == "--offset" else "--offset"
        raise UsageError(f"{given} specified without {other}")
    ns = namespace_of(args)
    out = sys.stdout.buffer
    for chunk in _chunks(args, ns):
        out.write(chunk)
    out.flush()
    return 0
