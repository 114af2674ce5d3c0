"""``pyverity measure FILE... [--xattr-ns security|user]``: the digest recorded for files.

For each FILE, in order, the digest comes from:

1. the kernel (``FS_IOC_MEASURE_VERITY``), when fs-verity is enabled on the file;
2. else the ``<ns>.verity`` descriptor attribute (DESIGN.md §2), parsed strictly with its
   bounds checked and its ``data_size`` equal to the file's size — the digest is its hash;
3. else an error saying what the file does carry (a v3 signature alone names no digest: the
   file must be hashed, e.g. by ``pyverity verify``).

Output lines are those of ``fsverity measure`` (``sha256:<hex> FILE``). Like it, processing
stops at the first file that fails (exit 1). Nothing is hashed: this is constant-time.
"""

from __future__ import annotations

import os
import sys

from pyverity.cli._common import ArgumentParser
from pyverity.cli.enable import add_namespace_options, namespace_of
from pyverity.errors import FormatError, InputError
from pyverity.format.digest import format_digest

__all__ = ["main", "measure_file"]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity measure",
        description="Show the fs-verity digest recorded for each FILE: from the kernel where"
        " fs-verity is enabled on it, else from its <ns>.verity descriptor attribute.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    add_namespace_options(parser)
    return parser


def measure_file(path: str, namespace: str = "security") -> str:
    """``alg:hex`` of the digest recorded for ``path`` (kernel first, then the attribute)."""
    from pyverity.fs import ioctl
    from pyverity.fs.openfile import open_regular

    fd = open_regular(path)
    try:
        try:
            return str(ioctl.measure_verity(fd))
        except (ioctl.NotVerityError, ioctl.VerityUnsupportedError):
            pass
        return _from_attributes(fd, path, namespace)
    finally:
        os.close(fd)


def _from_attributes(fd: int, path: str, namespace: str) -> str:
    from pyverity.protect.attrs import ProtectionKind, read_protection

    verity = f"{namespace}.verity"
    ima = f"{namespace}.ima"
    try:
        prot = read_protection(fd, namespace)
    except FormatError as e:
        raise FormatError(
            f"'{path}': its {verity}/{ima} attributes are invalid: {e}",
            remedy=e.remedy
            or f"write the attribute again (pyverity enable/sign --xattr-ns {namespace})",
        ) from e
    desc = prot.unverified_descriptor
    if desc is not None:
        return format_digest(desc.hash_alg.name, desc.digest())
    if prot.kind is ProtectionKind.VERITY_SIGNED:
        raise InputError(
            f"'{path}' has a v3 signature in {ima} but no {verity} descriptor: a v3 signature"
            " does not carry the fs-verity digest, so the file must be hashed",
            remedy=f"run `pyverity verify --keyring DIR --xattr-ns {namespace} {path}` (it hashes"
            " the file and checks the signature), or `pyverity digest` for the digest alone",
        )
    if prot.kind is ProtectionKind.CLASSIC:
        raise InputError(
            f"'{path}' has only a classic IMA value in {ima} (a whole-file hash or v2"
            " signature), not an fs-verity digest",
            remedy=f"run `pyverity digest {path}` to compute its fs-verity digest",
        )
    raise InputError(
        f"'{path}' has no fs-verity digest: fs-verity is not enabled on it and it has no"
        f" {verity} attribute",
        remedy=f"run `pyverity digest {path}` to compute one, or protect it with"
        f" `pyverity enable --xattr-ns {namespace}`",
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for path in args.files:
        line = measure_file(path, namespace_of(args))
        sys.stdout.write(f"{line} {path}\n")
        sys.stdout.flush()
    return 0
