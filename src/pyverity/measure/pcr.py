"""Software PCRs: the banks a measurement list is extended into (spec/ima.md §4.7).

pyverity's own lists keep the sha1 and sha256 banks (:data:`BANKS`); a kernel's list is
replayed into any bank :mod:`pyverity.format.listbanks` knows (sha384, sha512, sm3, …).

:class:`PcrValues` is an immutable snapshot: for each bank, for each PCR index, the value, plus
how many list entries (``count``) and list bytes (``size``) it covers. ``extend`` returns a new
snapshot. It is stored *apart from the list* (``<list>.pcrs``, JSON, written by temp file +
fsync + rename) so that a verifier can replay the list and compare; the evmctl form
(``PCR-00: hex`` lines, for ``evmctl ima_measurement --pcrs bank,FILE``) is produced by
:meth:`PcrValues.evmctl_text`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyverity.errors import FormatError
from pyverity.format import listbanks
from pyverity.format.measurelist import NUM_PCRS, MeasurementRecord

__all__ = ["BANKS", "CHAIN_BANK", "NUM_PCRS", "PcrReplay", "PcrValues", "chain_values"]

#: The banks pyverity's own lists keep (TPM 2.0's usual pair).
BANKS = ("sha1", "sha256")
#: The bank of ``LIST.chain`` (the PCR value after each entry).
CHAIN_BANK = "sha256"
_FORMAT_VERSION = 1
_MAX_PCR_FILE = 1 << 16


@functools.cache
def _zero(bank: str) -> bytes:
    return bytes(listbanks.digest_size(bank))


def _extend(bank: str, old: bytes, value: bytes) -> bytes:
    return listbanks.extend(bank, old, value)


def _check_bank(bank: str) -> None:
    if listbanks.normalize_bank(bank) != bank:
        raise FormatError(f"PCR bank {bank!r}: spelled {listbanks.normalize_bank(bank)!r}")


@dataclass(frozen=True)
class PcrValues:
    """PCR values per bank: ``values[bank][pcr]``; PCRs never extended are all zeros."""

    values: Mapping[str, Mapping[int, bytes]] = field(
        default_factory=lambda: {b: {} for b in BANKS}
    )
    count: int = 0
    size: int = 0

    def __post_init__(self) -> None:
        for bank, pcrs in self.values.items():
            _check_bank(bank)
            for index, value in pcrs.items():
                if not 0 <= index < 1 << 32 or len(value) != len(_zero(bank)):
                    raise FormatError(f"bad {bank} value for PCR {index}")

    @property
    def banks(self) -> tuple[str, ...]:
        return tuple(self.values)

    def get(self, bank: str, pcr: int = 10) -> bytes:
        return self.values.get(bank, {}).get(pcr, _zero(bank))

    def extend(self, record: MeasurementRecord, *, record_size: int | None = None) -> PcrValues:
        """The values after extending ``record`` into every bank (violations as 0xFF…)."""
        new: dict[str, dict[int, bytes]] = {}
        for bank, pcrs in self.values.items():
            updated = dict(pcrs)
            old = pcrs.get(record.pcr, _zero(bank))
            updated[record.pcr] = _extend(bank, old, record.pcr_extend_value(bank))
            new[bank] = updated
        size = len(record.to_bytes()) if record_size is None else record_size
        return PcrValues(new, self.count + 1, self.size + size)

    @classmethod
    def replay(
        cls, records: Iterable[MeasurementRecord], banks: Iterable[str] = BANKS
    ) -> PcrValues:
        """Replay ``records`` from all-zero PCRs."""
        replay = PcrReplay(banks)
        for record in records:
            replay.extend(record)
        return replay.values()

    # -- storage forms ------------------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "version": _FORMAT_VERSION,
            "count": self.count,
            "size": self.size,
            "banks": {
                bank: {str(i): v.hex() for i, v in sorted(pcrs.items())}
                for bank, pcrs in self.values.items()
            },
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> PcrValues:
        if len(text) > _MAX_PCR_FILE:
            raise FormatError("PCR file too large")
        try:
            doc = json.loads(text)
            if doc["version"] != _FORMAT_VERSION:
                raise FormatError(f"unsupported PCR file version {doc['version']!r}")
            values = {
                str(bank): {int(i): bytes.fromhex(v) for i, v in pcrs.items()}
                for bank, pcrs in doc["banks"].items()
            }
            count, size = int(doc["count"]), int(doc["size"])
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"malformed PCR file: {exc}") from None
        if count < 0 or size < 0:
            raise FormatError("malformed PCR file: negative count")
        return cls(values, count, size)

    def evmctl_text(self, bank: str) -> str:
        """The bank in the ``PCR-NN: hex`` form that ``evmctl ima_measurement --pcrs`` reads."""
        if bank not in self.values:
            raise FormatError(f"no {bank} bank")
        return "".join(f"PCR-{i:02d}: {self.get(bank, i).hex()}\n" for i in range(NUM_PCRS))

    def as_dict(self) -> dict[str, dict[str, str]]:
        """``{bank: {pcr: hex}}`` for JSON output."""
        return {b: {str(i): v.hex() for i, v in sorted(p.items())} for b, p in self.values.items()}


class PcrReplay:
    """PCR values extended one record at a time, in place (for lists of any length: memory
    does not grow with the list); :meth:`values` gives the :class:`PcrValues` so far."""

    def __init__(self, banks: Iterable[str] = BANKS) -> None:
        self._banks: dict[str, dict[int, bytes]] = {b: {} for b in banks}
        for bank in self._banks:
            _check_bank(bank)
        self.count = 0
        self.size = 0

    def extend(self, record: MeasurementRecord, *, size: int | None = None) -> bytes | None:
        """Extend ``record`` into every bank; the new value of its PCR in the sha256 bank
        (the ``LIST.chain`` value), or ``None`` without that bank."""
        chained = None
        for bank, pcrs in self._banks.items():
            old = pcrs.get(record.pcr) or _zero(bank)
            pcrs[record.pcr] = value = _extend(bank, old, record.pcr_extend_value(bank))
            if bank == CHAIN_BANK:
                chained = value
        self.count += 1
        self.size += len(record.to_bytes()) if size is None else size
        return chained

    def values(self) -> PcrValues:
        return PcrValues({b: dict(p) for b, p in self._banks.items()}, self.count, self.size)


def chain_values(records: Iterable[MeasurementRecord], bank: str = CHAIN_BANK) -> bytes:
    """The value of each entry's PCR in ``bank`` right after the entry, concatenated."""
    current: dict[int, bytes] = {}
    out: list[bytes] = []
    for record in records:
        old = current.get(record.pcr, _zero(bank))
        value = _extend(bank, old, record.pcr_extend_value(bank))
        current[record.pcr] = value
        out.append(value)
    return b"".join(out)
