"""``pyverity log show|verify|pcrs``: read, verify and replay a measurement list.

The list is pyverity's (PCR values in ``LIST.pcrs``) or a kernel's
``binary_runtime_measurements`` (no PCR values without a TPM: template hashes and signatures
only, unless ``--pcr`` gives them). An ascii list (``ascii_runtime_measurements``) is read too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyverity.cli._common import ArgumentParser
from pyverity.errors import FormatError, IntegrityError, UsageError

if TYPE_CHECKING:
    from pyverity.format.measurelist import MeasurementRecord
    from pyverity.keys.keyring import Keyring
    from pyverity.measure.pcr import PcrValues
    from pyverity.measure.stream import ListReader
    from pyverity.measure.verify import ListVerifier

__all__ = ["main"]

DEFAULT_LIST = "/var/lib/pyverity/measurements"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="pyverity log",
        description="Show, verify and replay a measurement list (pyverity's, or a kernel's"
        " binary_runtime_measurements / ascii_runtime_measurements).",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="show|verify|pcrs")
    for name, text in (
        ("show", "print the list as the kernel's ascii_runtime_measurements (or --json)"),
        ("verify", "check template hashes, replay against the PCR values, check signatures"),
        ("pcrs", "print the stored PCR values (or the replayed ones with --replay)"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument(
            "list",
            nargs="?",
            default=os.environ.get("PYVERITY_LIST", DEFAULT_LIST),
            metavar="LIST",
            help=f"the binary or ascii list (default {DEFAULT_LIST})",
        )
        s.add_argument("--json", action="store_true", help="print JSON")
        s.add_argument(
            "--bank",
            metavar="BANK",
            help="the list's PCR bank when its name does not end in it (_sha256, _sm3, "
            "_tpm_alg_HEX …); default: from the first record (32 bytes: sha256)",
        )
        if name == "verify":
            s.add_argument(
                "--keyring",
                metavar="DIR",
                help="check ima-sig/ima-sigv2 signatures against these certificates",
            )
            s.add_argument(
                "--pcr",
                action="append",
                default=[],
                metavar="BANK:HEX",
                help="expected PCR 10 value (repeatable; any bank: sha1, sha256, sha384, "
                "sha512, sm3 …; PCR N as BANK:N:HEX); replaces the stored values",
            )
            from pyverity.cli.attest import add_allowlist_options

            add_allowlist_options(s)
        if name == "pcrs":
            s.add_argument(
                "--replay",
                action="store_true",
                help="replay the list instead of showing the stored values",
            )
            s.add_argument(
                "--evmctl",
                metavar="BANK",
                help="print BANK in evmctl's --pcrs file format (PCR-NN: hex)",
            )
    return p


def _records(reader: ListReader) -> Iterator[MeasurementRecord]:
    """The list's records one at a time; a bad one raises :class:`FormatError` naming the
    list, the offset and whether the list is no list at all or cut short."""
    from pyverity.format.measurelist import TruncatedRecordError

    n = 0
    try:
        for _offset, record in reader.records():
            n += 1
            yield record
    except TruncatedRecordError as exc:
        if n:
            raise FormatError(f"{reader.path}: truncated: {exc}") from None
        raise FormatError(f"{reader.path}: not a measurement list ({exc})") from None
    except FormatError as exc:
        if n:
            raise FormatError(f"{reader.path}: {exc}") from None
        raise FormatError(f"{reader.path}: not a measurement list ({exc})") from None
    if not n and reader.pcrs is None:
        raise FormatError(
            f"{reader.path}: empty, and no PCR values to compare: not a measurement list"
        )


def _parse_pcr_args(values: list[str], count: int) -> PcrValues:
    from pyverity.format.listbanks import normalize_bank
    from pyverity.measure.pcr import PcrValues

    banks: dict[str, dict[int, bytes]] = {}
    for item in values:
        parts = item.split(":")
        if len(parts) == 2:
            bank, index, hexval = parts[0], "10", parts[1]
        elif len(parts) == 3:
            bank, index, hexval = parts
        else:
            raise UsageError(f"--pcr {item!r}: expected BANK:HEX or BANK:N:HEX")
        try:
            bank = normalize_bank(bank)
        except FormatError as exc:
            raise UsageError(f"--pcr {item!r}: {exc}") from None
        try:
            banks.setdefault(bank, {})[int(index)] = bytes.fromhex(hexval)
        except ValueError:
            raise UsageError(f"--pcr {item!r}: not a PCR index and hex value") from None
    try:
        return PcrValues(banks, count=count)
    except FormatError as exc:
        raise UsageError(f"--pcr: {exc}") from None


def _show(args: argparse.Namespace, reader: ListReader) -> int:
    if not args.json:
        write = sys.stdout.write
        for r in _records(reader):
            write(r.ascii_line())
        return 0
    # one element at a time, laid out as json.dump(..., indent=1) lays out the whole array
    sys.stdout.write("[")
    first = True
    try:
        for i, r in enumerate(_records(reader), 1):
            item = {
                "index": i,
                "pcr": r.pcr,
                "template_hash": r.template_digest.hex(),
                "template": r.template_name,
                "bank": r.bank,
                "digest": str(r.digest) if r.digest else None,
                "name": r.file_name,
                "signature": r.signature.hex() if "sig" in r.field_ids else None,
                "violation": r.is_violation,
            }
            text = json.dumps(item, indent=1).replace("\n", "\n ")
            sys.stdout.write(("\n " if first else ",\n ") + text)
            first = False
    finally:
        sys.stdout.write("]\n" if first else "\n]\n")  # valid JSON even for a cut list
    return 0


def _read_through(
    args: argparse.Namespace, reader: ListReader, verifier: ListVerifier, keyring: Keyring | None
) -> tuple[int, str | None, dict[str, int] | None]:
    """Feed every record to ``verifier`` (and with ``--allowlist`` to its checker): the
    violations, the unreadable tail's message, and the allowlist's counts."""
    violations = 0
    tail: str | None = None
    with contextlib.ExitStack() as stack:
        checker = None
        if args.allowlist:
            from pyverity.attest.allowlist import AllowlistChecker
            from pyverity.cli.attest import open_allowlist

            checker = AllowlistChecker(stack.enter_context(open_allowlist(args, keyring)), keyring)
        try:
            for record in _records(reader):
                verifier.add(record)
                violations += record.is_violation
                if checker is not None and (p := checker.check(verifier.entries, record)):
                    verifier.problem(p)
        except FormatError as exc:
            if not verifier.entries:
                raise  # not a list at all: one line
            tail = str(exc).removeprefix(f"{reader.path}: ")
    return violations, tail, checker.counts.as_dict() if checker is not None else None


def _verify(args: argparse.Namespace, reader: ListReader) -> int:
    from pyverity.measure.verify import EntryProblem, ListVerifier

    path = reader.path
    keyring = None
    if args.keyring:
        from pyverity.keys.keyring import Keyring

        keyring = Keyring.from_directory(args.keyring)
    stored = reader.pcrs
    # --pcr values cover the whole list, whose length is known only at its end: replay all
    expected = _parse_pcr_args(args.pcr, sys.maxsize) if args.pcr else stored
    verifier = ListVerifier(
        expected=expected, keyring=keyring, chain=reader.chain, banks=_banks(reader)
    )
    violations, tail, allowed = _read_through(args, reader, verifier, keyring)
    if args.pcr:
        verifier.expected = expected = _parse_pcr_args(args.pcr, verifier.entries)
    report = verifier.finish()
    problems = list(report.problems)
    if tail is not None:  # first: it explains the others (entries dropped, PCRs differing)
        problems.insert(0, EntryProblem(report.entries + 1, "format", f"unreadable: {tail}"))
    if expected is None and not report.entries:
        raise FormatError(f"{path}: empty, and no PCR values to compare")
    if args.json:
        json.dump(
            {
                "list": path,
                "ok": not problems,
                "entries": report.entries,
                "pcrs_compared": expected is not None,
                "signatures_checked": report.signatures_checked if keyring else None,
                "violations": violations,
                "allowlist": allowed,
                "replayed": report.replayed.as_dict(),
                "problems": [
                    {"index": p.index, "kind": p.kind, "name": p.name, "reason": p.reason}
                    for p in problems
                ],
                "more_problems": report.more_problems,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        for p in problems:
            sys.stdout.write(f"FAIL {p}\n")
        if report.more_problems:
            sys.stdout.write(f"FAIL ... and {report.more_problems} more problems\n")
        if not problems:
            what = ["template hashes"]
            what.append("PCR replay" if expected is not None else "no PCR values to compare")
            if keyring is not None:
                what.append(f"{report.signatures_checked} signatures")
            if allowed is not None:
                what.append(
                    f"allowlist: {allowed['allowed']} allowed, {allowed['signed']} by signature,"
                    f" {allowed['excluded']} excluded"
                )
            if violations:
                what.append(
                    f"{violations} violation entries (open-writers/ToMToU), replayed as 0xFF"
                )
            sys.stdout.write(f"OK {path}: {report.entries} entries ({', '.join(what)})\n")
    if expected is None:
        sys.stderr.write(
            f"WARNING: {path}: no PCR values (neither {path}.pcrs nor --pcr): "
            "dropped or reordered entries cannot be detected\n"
        )
    if problems:
        count = len(problems) + report.more_problems
        raise IntegrityError(f"{path}: {count} problem(s); first: {problems[0]}")
    return 0


def _banks(reader: ListReader) -> tuple[str, ...]:
    """The banks a list is replayed into without expected values: sha1, sha256 and its own
    (an ascii list's is known only after its first line: then sha1 and sha256)."""
    own = reader.bank
    return ("sha1", "sha256") + ((own,) if own and own not in ("sha1", "sha256") else ())


def _pcrs(args: argparse.Namespace, reader: ListReader) -> int:
    from pyverity.measure.pcr import PcrReplay

    stored = reader.pcrs
    replay = PcrReplay(_banks(reader))
    for record in _records(reader):  # read through in any case: a cut list is an error
        if args.replay or stored is None:
            replay.extend(record)
    values = replay.values() if args.replay or stored is None else stored
    if stored is None and not args.replay:
        sys.stderr.write(f"NOTE: {args.list}: no stored PCR values; these are replayed\n")
    bank = args.evmctl
    if bank:
        try:
            sys.stdout.write(values.evmctl_text(bank))
        except FormatError as exc:
            raise UsageError(str(exc)) from None
        return 0
    if args.json:
        json.dump({"count": values.count, "banks": values.as_dict()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for b, pcrs in values.as_dict().items():
        for index, hexval in pcrs.items():
            sys.stdout.write(f"{b} PCR-{int(index):02d}: {hexval}\n")
    return 0


def main(argv: list[str]) -> int:
    from pyverity.measure.stream import open_list

    args = _parser().parse_args(argv)
    with open_list(args.list, bank=args.bank) as reader:
        if args.action == "show":
            return _show(args, reader)
        if args.action == "verify":
            return _verify(args, reader)
        return _pcrs(args, reader)
