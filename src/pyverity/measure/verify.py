"""Replay and verify a measurement list: template hashes, PCR replay, signatures.

:func:`verify_result` checks, for every entry, that its stored template digest is the hash
of its template data in the list's bank (SHA-1 in the legacy list; violations — all-zero
digests — are skipped, as the kernel and evmctl do), replays the records into the banks of the
expected values, else sha1, sha256 and the list's own (violations extended as 0xFF…),
compares the result with the expected PCR values, and, given a keyring, verifies the
``sig`` field of every ``ima-sig``/``ima-sigv2`` entry over the digest in the list (a v2
signature over a whole-file hash, a v3 signature over ``ima_file_id`` of an fs-verity digest;
a v3 signature beside an ``ima:`` file hash, as the kernel records under a rule without
``digest_type=verity``, is over a digest the entry does not hold, and is left unchecked; so is
one in an ``ima-sig`` entry, whose digest may be either, when it does not verify over it as an
fs-verity digest — an unknown key is still a problem there).
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
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from pyverity.errors import Error, FormatError, IntegrityError, Reason
from pyverity.format.measurelist import MeasurementRecord
from pyverity.measure.pcr import CHAIN_BANK, PcrReplay, PcrValues

if TYPE_CHECKING:
    from pyverity.keys.keyring import Keyring

__all__ = [
    "MAX_PROBLEMS",
    "EntryProblem",
    "ListVerifier",
    "VerifyReport",
    "check_signature",
    "verify_list",
    "verify_result",
]


@dataclass(frozen=True)
class EntryProblem:
    """One failed check: ``index`` is the 1-based entry number (0 for the list as a whole)."""

    index: int
    kind: str  # "template-hash" | "replay" | "count" | "signature" | "format" | "unsupported"
    reason: str
    name: str = ""

    def __str__(self) -> str:
        where = f"entry {self.index}" if self.index else "list"
        if self.index and self.name:
            where += f" ({self.name})"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    replayed: PcrValues
    expected: PcrValues | None
    signatures_checked: int = 0
    problems: tuple[EntryProblem, ...] = field(default_factory=tuple)
    #: Problems found beyond the :data:`MAX_PROBLEMS` kept.
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_signature(record: MeasurementRecord, keyring: Keyring) -> None:
    """Verify the entry's ``sig`` over its listed digest; raise a pyverity error on failure."""
    from pyverity.format.ima import ImaSignature, algo_named, parse_ima_value

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
    listed = algo_named(digest.algo) if digest.algo else None
    if digest.algo and (listed is None or listed.id != value.hash_algo):
        raise IntegrityError(
            f"signature is over {value.algorithm.name}, the listed digest is {digest.algo}"
        )
    keyring.verify_ima_signature(value, digest.digest)


def _v3_beside_file_hash(record: MeasurementRecord) -> bool:
    """A v3 signature (type 0x06) in an entry whose digest is an ``ima:`` file hash
    (``ima-sigv2``'s ``d-ngv2``): what the kernel records under a rule without
    ``digest_type=verity``. The signature is over the fs-verity digest, which the entry does
    not hold: it cannot be checked, and is not. (``ima-sig``'s ``d-ng`` may hold either
    digest: see :func:`_v3_beside_d_ng`.)"""
    digest = record.digest
    sig = record.signature
    return digest is not None and digest.kind == "ima" and sig[:1] == b"\x06"


def _v3_beside_d_ng(record: MeasurementRecord) -> bool:
    """A v3 signature in an entry whose digest (``d-ng``: ``ima-sig``) has no type."""
    digest = record.digest
    return digest is not None and digest.kind is None and record.signature[:1] == b"\x06"


#: Problems kept in a report (a list of millions of bad entries is counted, not kept).
MAX_PROBLEMS = 1000


class ListVerifier:
    """:func:`verify_result` one record at a time: :meth:`add` each record in order, then
    :meth:`finish`. Memory does not grow with the list (PCR values, the first entries of
    interest and at most :data:`MAX_PROBLEMS` problems); ``chain`` (``LIST.chain``, the sha256
    PCR value after each entry) may be a file object read alongside the records.
    """

    def __init__(
        self,
        *,
        expected: PcrValues | None = None,
        keyring: Keyring | None = None,
        chain: bytes | BinaryIO | None = None,
        banks: Iterable[str] = ("sha1", "sha256"),
    ) -> None:
        self.expected, self.keyring = expected, keyring
        self._replay = PcrReplay(expected.banks if expected is not None else banks)
        self._problems: list[EntryProblem] = []
        self.more_problems = 0
        self.entries = 0
        self.signatures = 0
        self._chain = io.BytesIO(chain) if isinstance(chain, bytes) else chain
        self._chain_usable = self._chain is not None and self._chain_ends_at_expected()
        self._mine: dict[int, bytes] = {}  # sha256 PCR values over every entry, for the chain
        self._diverges: tuple[int, str] | None = None
        self._first_uncovered = ""

    def _chain_ends_at_expected(self) -> bool:
        """The chain is a hint only if it ends where the expected PCR values are."""
        f, expected = self._chain, self.expected
        size = hashlib.new(CHAIN_BANK).digest_size
        if f is None or expected is None or CHAIN_BANK not in expected.values:
            return False
        length = f.seek(0, io.SEEK_END)
        if not length or length % size:
            return False
        f.seek(length - size)
        last = f.read(size)
        f.seek(0)
        return last in expected.values[CHAIN_BANK].values()

    def problem(self, problem: EntryProblem) -> None:
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append(problem)
        else:
            self.more_problems += 1

    def add(self, record: MeasurementRecord, size: int | None = None) -> None:
        self.entries += 1
        i = self.entries
        try:
            template_ok = record.template_digest_ok
        except Error as exc:  # a bank whose hash pyverity lacks (reason: unsupported)
            template_ok = True
            self.problem(EntryProblem(i, "unsupported", str(exc), record.file_name))
        if not template_ok:
            self.problem(
                EntryProblem(
                    i,
                    "template-hash",
                    "template digest does not match the entry's data",
                    record.file_name,
                )
            )
        keyring = self.keyring
        if (
            keyring is not None
            and "sig" in record.field_ids
            and not record.is_violation
            and record.signature
            and not _v3_beside_file_hash(record)
        ):
            self.signatures += 1
            try:
                check_signature(record, keyring)
            except Error as exc:
                if exc.reason is Reason.BAD_SIGNATURE and _v3_beside_d_ng(record):
                    # A d-ng digest under a v3 signature: the fs-verity digest (a verity
                    # rule) or a file hash (any other rule, as the kernel records it); one
                    # that does not verify as the former is taken for the latter, unchecked.
                    self.signatures -= 1
                elif exc.reason is Reason.UNSUPPORTED:  # a key or hash pyverity cannot use
                    self.problem(EntryProblem(i, "unsupported", str(exc), record.file_name))
                else:
                    self.problem(
                        EntryProblem(
                            i, "signature", f"signature does not verify: {exc}", record.file_name
                        )
                    )
        expected = self.expected
        if expected is None or i <= expected.count:
            self._replay.extend(record, size=size)
        elif i == expected.count + 1:
            self._first_uncovered = record.file_name
        if self._chain_usable and self._diverges is None:
            self._follow_chain(i, record)

    def _follow_chain(self, i: int, record: MeasurementRecord) -> None:
        assert self._chain is not None  # noqa: S101 - only called when the chain is usable
        bank = CHAIN_BANK
        old = self._mine.get(record.pcr) or bytes(hashlib.new(bank).digest_size)
        mine = hashlib.new(bank, old + record.pcr_extend_value(bank)).digest()
        self._mine[record.pcr] = mine
        recorded = self._chain.read(len(mine))
        if len(recorded) < len(mine):
            self._chain_usable = False  # the chain ends here: nothing diverged before it
        elif recorded != mine:
            self._diverges = (i, record.file_name)

    def finish(self) -> VerifyReport:
        replayed = self._replay.values()
        problems = list(self._problems)
        if self.expected is not None:
            problems.extend(self._compare(replayed, self.expected))
        return VerifyReport(
            self.entries,
            replayed,
            self.expected,
            self.signatures,
            tuple(problems),
            self.more_problems,
        )

    def _compare(self, replayed: PcrValues, expected: PcrValues) -> list[EntryProblem]:
        problems: list[EntryProblem] = []
        n = self.entries
        if expected.count > n:
            problems.append(
                EntryProblem(
                    0,
                    "count",
                    f"the PCR values cover {expected.count} entries, the list has {n}: "
                    f"entries {n + 1}..{expected.count} were dropped",
                )
            )
        elif expected.count < n:
            problems.append(
                EntryProblem(
                    expected.count + 1,
                    "count",
                    f"not covered by the PCR values (they cover {expected.count} of {n} entries)",
                    self._first_uncovered,
                )
            )
        pcr_indexes = sorted(
            {i for bank in expected.values.values() for i in bank}
            | {i for bank in replayed.values.values() for i in bank}
        )
        for bank in expected.banks:
            for pcr in pcr_indexes:
                if not hmac.compare_digest(replayed.get(bank, pcr), expected.get(bank, pcr)):
                    problems.append(
                        EntryProblem(
                            0,
                            "replay",
                            f"replaying entries 1..{min(n, expected.count)} gives {bank} PCR "
                            f"{pcr} {replayed.get(bank, pcr).hex()}, expected "
                            f"{expected.get(bank, pcr).hex()}: entries were changed, dropped "
                            "or reordered",
                        )
                    )
        if problems and self._diverges is not None:
            at, name = self._diverges
            problems.insert(
                0,
                EntryProblem(
                    at,
                    "chain",
                    "the replay leaves the recorded PCR chain here: this entry was changed or "
                    "inserted, or an entry before it was dropped or moved",
                    name,
                ),
            )
        return problems


def verify_result(
    records: Iterable[MeasurementRecord],
    *,
    expected: PcrValues | None = None,
    keyring: Keyring | None = None,
    chain: bytes | BinaryIO | None = None,
) -> VerifyReport:
    """Run every check over ``records`` and collect the problems (see the module docstring)."""
    verifier = ListVerifier(expected=expected, keyring=keyring, chain=chain)
    for record in records:
        verifier.add(record)
    return verifier.finish()


def verify_list(
    records: Iterable[MeasurementRecord],
    *,
    expected: PcrValues | None = None,
    keyring: Keyring | None = None,
    chain: bytes | BinaryIO | None = None,
) -> VerifyReport:
    """Like :func:`verify_result`, but raise :class:`IntegrityError` naming the first problem."""
    report = verify_result(records, expected=expected, keyring=keyring, chain=chain)
    if report.problems:
        more = len(report.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise IntegrityError(f"measurement list: {report.problems[0]}{suffix}")
    return report
