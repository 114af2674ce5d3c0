"""``pyverity log show|verify|pcrs``: read, verify and replay a measurement list.

The list is pyverity's (PCR values in ``LIST.pcrs``) or a kernel's
``binary_runtime_measurements`` (no PCR values without a TPM: template hashes and signatures
only, unless ``--pcr`` gives them). An ascii list (``ascii_runtime_measurements``) is read too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pyverity.cli._common import ArgumentParser
from pyverity.errors import FormatError, IntegrityError, UsageError

if TYPE_CHECKING:
    from pyverity.format.measurelist import MeasurementRecord
    from pyverity.measure.pcr import PcrValues

__all__ = ["main"]

DEFAULT_LIST = "/var/lib/pyverity/measurements"
_MAX_ASCII = 1 << 30


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
                help="expected PCR 10 value (repeatable; sha1 or sha256; "
                "PCR N as BANK:N:HEX); replaces the stored values",
            )
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


def _load(
    path: str, *, pcrs: bool = True
) -> tuple[list[MeasurementRecord], PcrValues | None, str | None]:
    """(records, stored PcrValues or None, tail problem)."""
    from pyverity.format.measurelist import parse_ascii_line
    from pyverity.measure.log import read_list

    if _looks_ascii(path):
        try:
            with Path(path).open(encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(_MAX_ASCII)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        records = []
        for n, line in enumerate(text.splitlines(keepends=True), 1):
            try:
                records.append(parse_ascii_line(line))
            except FormatError as exc:
                raise FormatError(f"{path}:{n}: {exc}") from None
        return records, None, None
    snap = read_list(path, pcrs=pcrs)
    return list(snap.records), snap.pcrs, snap.tail_problem


def _looks_ascii(path: str) -> bool:
    try:
        with Path(path).open("rb") as f:
            head = f.read(3)
    except OSError:
        return False
    return len(head) == 3 and head[:2].strip().isdigit() and head[2:3] == b" "


def _parse_pcr_args(values: list[str], count: int) -> PcrValues:
    from pyverity.measure.pcr import BANKS, PcrValues

    banks: dict[str, dict[int, bytes]] = {}
    for item in values:
        parts = item.split(":")
        if len(parts) == 2:
            bank, index, hexval = parts[0], "10", parts[1]
        elif len(parts) == 3:
            bank, index, hexval = parts
        else:
            raise UsageError(f"--pcr {item!r}: expected BANK:HEX or BANK:N:HEX")
        if bank not in BANKS:
            raise UsageError(f"--pcr {item!r}: bank must be one of {', '.join(BANKS)}")
        try:
            banks.setdefault(bank, {})[int(index)] = bytes.fromhex(hexval)
        except ValueError:
            raise UsageError(f"--pcr {item!r}: not a PCR index and hex value") from None
    try:
        return PcrValues(banks, count=count)
    except FormatError as exc:
        raise UsageError(f"--pcr: {exc}") from None


def _show(args: argparse.Namespace, recs: list[MeasurementRecord]) -> int:
    if args.json:
        out = [
            {
                "index": i,
                "pcr": r.pcr,
                "template_hash": r.template_digest.hex(),
                "template": r.template_name,
                "digest": str(r.digest) if r.digest else None,
                "name": r.file_name,
                "signature": r.signature.hex() if "sig" in r.field_ids else None,
                "violation": r.is_violation,
            }
            for i, r in enumerate(recs, 1)
        ]
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(r.ascii_line() for r in recs))
    return 0


def _verify(
    args: argparse.Namespace,
    path: str,
    recs: list[MeasurementRecord],
    stored: PcrValues | None,
    tail: str | None,
) -> int:
    from pyverity.measure.verify import EntryProblem, verify_result

    keyring = None
    if args.keyring:
        from pyverity.keys.keyring import Keyring

        keyring = Keyring.from_directory(args.keyring)
    expected = _parse_pcr_args(args.pcr, len(recs)) if args.pcr else stored
    from pyverity.measure.files import chain_path, load_chain

    chain = None if _looks_ascii(path) else load_chain(chain_path(path))
    report = verify_result(recs, expected=expected, keyring=keyring, chain=chain)
    violations = sum(1 for r in recs if r.is_violation)
    problems = list(report.problems)
    if tail is not None:
        problems.append(EntryProblem(len(recs) + 1, "format", f"unreadable: {tail}"))
    if args.json:
        json.dump(
            {
                "list": path,
                "ok": not problems,
                "entries": report.entries,
                "pcrs_compared": expected is not None,
                "signatures_checked": report.signatures_checked if keyring else None,
                "violations": violations,
                "replayed": report.replayed.as_dict(),
                "problems": [
                    {"index": p.index, "kind": p.kind, "name": p.name, "reason": p.reason}
                    for p in problems
                ],
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        for p in problems:
            sys.stdout.write(f"FAIL {p}\n")
        if not problems:
            what = ["template hashes"]
            what.append("PCR replay" if expected is not None else "no PCR values to compare")
            if keyring is not None:
                what.append(f"{report.signatures_checked} signatures")
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
        raise IntegrityError(f"{path}: {len(problems)} problem(s); first: {problems[0]}")
    return 0


def _pcrs(args: argparse.Namespace, recs: list[MeasurementRecord], stored: PcrValues | None) -> int:
    from pyverity.measure.pcr import PcrValues

    values = PcrValues.replay(recs) if args.replay or stored is None else stored
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
    args = _parser().parse_args(argv)
    path: str = args.list
    records, stored, tail = _load(path, pcrs=args.action != "show")
    if args.action == "show":
        rc = _show(args, records)
        if tail is not None:
            sys.stderr.write(f"WARNING: {path}: {tail}\n")
        return rc
    if args.action == "verify":
        return _verify(args, path, records, stored, tail)
    return _pcrs(args, records, stored)
