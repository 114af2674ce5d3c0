"""Replay and verify a measurement list: template hashes, PCR replay, signatures.

:func:`verify_result` checks, for every entry, that its stored SHA-1 template digest is the
hash of its template data (violations — all-zero digests — are skipped, as the kernel and
evmctl do), replays the records into the sha1 and sha256 banks (violations extended as
0xFF…), compares the result with the expected PCR values, and, given a keyring, verifies the
``sig`` field of every ``ima-sig``/``ima-sigv2`` entry over the digest in the list (a v2
signature over a whole-file hash, a v3 signature over ``ima_file_id`` of an fs-verity digest).
It returns a :class:`VerifyReport`; :func:`verify_list` raises
:class:`~pyverity.errors.IntegrityError` with the first problem instead.

What the checks can name: a changed entry whose template digest was not recomputed fails by
itself; an entry appended or dropped at the end is found from the count the PCR values cover;
any other change, drop or reorder is found by the replay, and the entry where it starts is
named with the help of ``LIST.chain`` (the PCR value after each entry) when that chain ends at
the expected PCR values. Without a usable chain the replay can only say that entries 1..N do
not reproduce the PCR values.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyverity.errors import Error, FormatError, IntegrityError
from pyverity.format.measurelist import MeasurementRecord
from pyverity.measure.pcr import CHAIN_BANK, PcrValues, chain_values

if TYPE_CHECKING:
    from pyverity.keys.keyring import Keyring

__all__ = ["EntryProblem", "VerifyReport", "check_signature", "verify_list", "verify_result"]


@dataclass(frozen=True)
class EntryProblem:
    """One failed check: ``index`` is the 1-based entry number (0 for the list as a whole)."""

    index: int
    kind: str  # "template-hash" | "replay" | "count" | "signature" | "format"
    reason: str
    name: str = ""

    def __str__(self) -> str:
        where = f"entry {self.index} ({self.name})" if self.index else "list"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    replayed: PcrValues
    expected: PcrValues | None
    signatures_checked: int = 0
    problems: tuple[EntryProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_signature(record: MeasurementRecord, keyring: Keyring) -> None:
    """Verify the entry's ``sig`` over its listed digest; raise a pyverity error on failure."""
    from pyverity.format.ima import ImaSignature, algo_by_name, parse_ima_value

    digest = record.digest
    if digest is None:
        raise FormatError("entry has no digest field")
    value = parse_ima_value(record.signature)
    if not isinstance(value, ImaSignature):
        raise FormatError("sig field holds a hash, not a signature")
    if value.is_verity and digest.kind == "ima":
        raise IntegrityError("v3 (fs-verity) signature on an entry whose digest is a file hash")
    if not value.is_verity and digest.kind == "verity":
        raise IntegrityError("v2 signature on an entry whose digest is an fs-verity digest")
    if digest.algo and algo_by_name(digest.algo).id != value.hash_algo:
        raise IntegrityError(
            f"signature is over {value.algorithm.name}, the listed digest is {digest.algo}"
        )
    keyring.verify_ima_signature(value, digest.digest)


def verify_result(
    records: Sequence[MeasurementRecord],
    *,
    expected: PcrValues | None = None,
    keyring: Keyring | None = None,
    chain: bytes | None = None,
) -> VerifyReport:
    """Run every check over ``records`` and collect the problems (see the module docstring)."""
    problems: list[EntryProblem] = []
    signatures = 0
    for i, record in enumerate(records, 1):
        if not record.is_violation and not hmac.compare_digest(
            record.template_hash("sha1"), record.template_digest
        ):
            problems.append(
                EntryProblem(
                    i,
                    "template-hash",
                    "template digest does not match the entry's data",
                    record.file_name,
                )
            )
        if keyring is not None and "sig" in record.field_ids and not record.is_violation:
            if not record.signature:
                continue
            signatures += 1
            try:
                check_signature(record, keyring)
            except Error as exc:
                problems.append(
                    EntryProblem(
                        i, "signature", f"signature does not verify: {exc}", record.file_name
                    )
                )
    banks = expected.banks if expected is not None else ("sha1", "sha256")
    covered = records if expected is None else records[: expected.count]
    replayed = PcrValues.replay(covered, banks)
    if expected is not None:
        problems.extend(_compare(records, replayed, expected, chain))
    return VerifyReport(len(records), replayed, expected, signatures, tuple(problems))


def _diverges_at(
    records: Sequence[MeasurementRecord], expected: PcrValues, chain: bytes | None
) -> int | None:
    """The first entry (0-based) whose replay leaves the recorded chain, if the chain is one
    the expected PCR values end with; ``None`` otherwise."""
    size = hashlib.new(CHAIN_BANK).digest_size
    if not chain or len(chain) % size or CHAIN_BANK not in expected.values:
        return None
    if chain[-size:] not in expected.values[CHAIN_BANK].values():
        return None  # the chain does not end where the PCR values are: no use as a hint
    mine = chain_values(records)
    for i in range(min(len(mine), len(chain)) // size):
        if mine[i * size : (i + 1) * size] != chain[i * size : (i + 1) * size]:
            return i
    return None


def _compare(
    records: Sequence[MeasurementRecord],
    replayed: PcrValues,
    expected: PcrValues,
    chain: bytes | None = None,
) -> list[EntryProblem]:
    problems: list[EntryProblem] = []
    if expected.count > len(records):
        problems.append(
            EntryProblem(
                0,
                "count",
                f"the PCR values cover {expected.count} entries, the list has {len(records)}: "
                f"entries {len(records) + 1}..{expected.count} were dropped",
            )
        )
    elif expected.count < len(records):
        extra = records[expected.count]
        problems.append(
            EntryProblem(
                expected.count + 1,
                "count",
                f"not covered by the PCR values (they cover {expected.count} of "
                f"{len(records)} entries)",
                extra.file_name,
            )
        )
    pcr_indexes = sorted(
        {i for bank in expected.values.values() for i in bank}
        | {i for bank in replayed.values.values() for i in bank}
    )
    for bank in expected.banks:
        for pcr in pcr_indexes:
            if not hmac.compare_digest(replayed.get(bank, pcr), expected.get(bank, pcr)):
                n = min(len(records), expected.count)
                problems.append(
                    EntryProblem(
                        0,
                        "replay",
                        f"replaying entries 1..{n} gives {bank} PCR {pcr} "
                        f"{replayed.get(bank, pcr).hex()}, expected {expected.get(bank, pcr).hex()}"
                        ": entries were changed, dropped or reordered",
                    )
                )
    if any(p.kind in ("replay", "count") for p in problems):
        at = _diverges_at(records, expected, chain)
        if at is not None:
            problems.insert(
                0,
                EntryProblem(
                    at + 1,
                    "chain",
                    "the replay leaves the recorded PCR chain here: this entry was changed or "
                    "inserted, or an entry before it was dropped or moved",
                    records[at].file_name,
                ),
            )
    return problems


def verify_list(
    records: Sequence[MeasurementRecord],
    *,
    expected: PcrValues | None = None,
    keyring: Keyring | None = None,
    chain: bytes | None = None,
) -> VerifyReport:
    """Like :func:`verify_result`, but raise :class:`IntegrityError` naming the first problem."""
    report = verify_result(records, expected=expected, keyring=keyring, chain=chain)
    if report.problems:
        more = len(report.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise IntegrityError(f"measurement list: {report.problems[0]}{suffix}")
    return report
