"""PcrValues: extend, replay, JSON storage and the evmctl --pcrs format."""

from __future__ import annotations

import hashlib

import pytest

from pyverity.errors import FormatError
from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.measure.pcr import NUM_PCRS, PcrValues


def _rec(pcr: int = 10) -> MeasurementRecord:
    return MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/x", pcr=pcr)


def test_extend_is_the_tpm_recipe() -> None:
    rec = _rec()
    values = PcrValues().extend(rec)
    assert (
        values.get("sha1")
        == hashlib.new(
            "sha1", bytes(20) + rec.template_hash("sha1"), usedforsecurity=False
        ).digest()
    )
    assert values.get("sha256") == hashlib.sha256(bytes(32) + rec.template_hash("sha256")).digest()
    assert values.get("sha256", 11) == bytes(32)
    assert values.count == 1
    assert values.size == len(rec.to_bytes())


def test_other_pcr_index() -> None:
    values = PcrValues.replay([_rec(11)])
    assert values.get("sha1", 10) == bytes(20)
    assert values.get("sha1", 11) != bytes(20)


def test_json_round_trip_and_bounds() -> None:
    values = PcrValues.replay([_rec(), _rec(12)])
    assert PcrValues.from_json(values.to_json()) == values
    for bad in (
        "{}",
        "[]",
        '{"version": 2}',
        "x" * 70000,
        '{"version": 1, "count": -1, "size": 0, "banks": {}}',
        '{"version": 1, "count": 0, "size": 0, "banks": {"md5": {}}}',
        '{"version": 1, "count": 0, "size": 0, "banks": {"sha1": {"10": "00"}}}',
    ):
        with pytest.raises(FormatError):
            PcrValues.from_json(bad)


def test_evmctl_text() -> None:
    values = PcrValues.replay([_rec()])
    lines = values.evmctl_text("sha256").splitlines()
    assert len(lines) == NUM_PCRS
    assert lines[0] == "PCR-00: " + "00" * 32
    assert lines[10] == "PCR-10: " + values.get("sha256").hex()
    with pytest.raises(FormatError):
        PcrValues({"sha1": {}}).evmctl_text("sha256")
