"""The attestation parts of ``pyverity manifest export`` and ``pyverity log verify --allowlist``
(:mod:`pyverity.attest`; docs/attestation.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pyverity.errors import FormatError

if TYPE_CHECKING:
    from pyverity.attest.allowlist import Allowlist
    from pyverity.attest.regex import Matcher
    from pyverity.keys import Keyring

__all__ = ["add_allowlist_options", "boot_aggregate_of", "export_keylime", "open_allowlist"]


def boot_aggregate_of(path: str) -> str:
    """The hex digest of the ``boot_aggregate`` entry that starts the list at ``path``."""
    from pyverity.measure.stream import open_list

    with open_list(path, pcrs=False) as reader:
        for _offset, record in reader.records():
            digest = record.digest
            if record.file_name != "boot_aggregate" or digest is None:
                break
            return digest.digest.hex()
    raise FormatError(f"{path}: the list does not start with a boot_aggregate entry")


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """Standard output, or a temporary file beside ``path`` renamed into place at the end."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def export_keylime(args: argparse.Namespace) -> int:
    from pyverity.attest.keylime import ExportOptions, export_policy
    from pyverity.attest.regex import compile_excludes
    from pyverity.keys import Keyring
    from pyverity.manifest import Expectations, open_manifest

    keyring = Keyring.from_directory(args.keyring)
    boot = (boot_aggregate_of(args.boot_aggregate),) if args.boot_aggregate else ()
    options = ExportOptions(
        prefix=args.prefix,
        log_hash_alg=args.log_hash_alg,
        boot_aggregate=boot,
        excludes=tuple(args.exclude),
    )
    _warn_if_everything(compile_excludes(options.excludes), "--exclude")
    expect = Expectations(args.name, args.min_serial)
    with open_manifest(args.manifest, keyring, expect) as m, _output(args.output) as out:
        report = export_policy(m, out, keyring, options)
    for name in report.not_utf8:
        sys.stderr.write(f"WARNING: left out (not UTF-8, a JSON policy cannot name it): {name}\n")
    summary = {
        "files": report.files,
        "symlinks_left_out": report.symlinks,
        "not_utf8_left_out": len(report.not_utf8),
        "names_merged": report.merged,
        "keys": len(keyring),
    }
    if args.json:
        json.dump(summary, sys.stderr, sort_keys=True)
        sys.stderr.write("\n")
    elif args.output is not None:
        print(
            f"Wrote runtime policy '{args.output}': {report.files} files,"
            f" {len(keyring)} verification keys"
        )
    return 0


def add_allowlist_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--allowlist",
        metavar="P",
        help="every measured file must carry an allowed digest: P is a Keylime runtime policy"
        " or a pyverity manifest (verified first, with --allowlist-keyring or --keyring)",
    )
    s.add_argument(
        "--allowlist-keyring",
        metavar="DIR",
        help="the certificates that verify a manifest allowlist (default: --keyring, which"
        " also checks the list's signatures)",
    )
    s.add_argument(
        "--prefix",
        default="/",
        metavar="PATH",
        help="with a manifest allowlist: where its tree lives (default /)",
    )
    s.add_argument(
        "--exclude", action="append", default=[], metavar="REGEX", help="also allow these names"
    )
    s.add_argument(
        "--boot-aggregate",
        action="append",
        default=[],
        metavar="HEX",
        help="an allowed digest of the boot_aggregate entry (repeatable)",
    )


def open_allowlist(args: argparse.Namespace, keyring: Keyring | None) -> Allowlist:
    """The ``--allowlist``; a manifest is verified by ``--allowlist-keyring``, else by
    ``keyring`` (``--keyring``)."""
    from pyverity.attest.allowlist import load_allowlist

    if args.allowlist_keyring:
        from pyverity.keys import Keyring

        keyring = Keyring.from_directory(args.allowlist_keyring)
    allowlist = load_allowlist(
        args.allowlist,
        keyring=keyring,
        prefix=args.prefix,
        excludes=tuple(args.exclude),
        boot_aggregate=tuple(args.boot_aggregate),
    )
    _warn_if_everything(allowlist.excludes, "the excludes")
    return allowlist


def _warn_if_everything(excludes: Matcher, what: str) -> None:
    if excludes.matches_everything:
        sys.stderr.write(
            f"WARNING: {what} match every name (a regex that matches the empty string, as ''"
            " or '.*'): no file is checked\n"
        )
