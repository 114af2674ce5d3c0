"""Real ascii lists from keylime's test suite (tests/vectors/keylime/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyverity.format.measurelist import MeasurementRecord
from pyverity.measure.stream import open_list

VECTORS = Path(__file__).parents[2] / "vectors" / "keylime"


def _records(name: str, bank: str | None = None) -> list[MeasurementRecord]:
    with open_list(VECTORS / name, bank=bank) as reader:
        return [r for _, r in reader.records()]


@pytest.mark.parametrize(
    ("name", "bank", "templates"),
    [
        ("ima-log-sha1", None, {"ima-ng"}),
        ("ima-log-sha256", None, {"ima-ng"}),
        ("ima-log-sha384", None, {"ima-ng"}),
        ("ima-log-sha512", None, {"ima-ng"}),
        ("ima-log-sm3_256", "sm3", {"ima-ng"}),
        ("ima_ast.ascii", None, {"ima", "ima-ng", "ima-sig", "ima-buf"}),
        ("ima_dm.ascii", None, {"ima-buf"}),
        ("ima_verification.ascii", None, {"ima-sig", "ima-buf"}),
    ],
)
def test_every_template_hash_verifies(name: str, bank: str | None, templates: set[str]) -> None:
    records = _records(name, bank)
    assert {r.template_name for r in records} == templates
    assert all(r.template_digest_ok for r in records)
    assert all(r.bank == (bank or "sha1") for r in records)


@pytest.mark.parametrize("name", ["ima-log-unknown", "ima_verification-bad.ascii"])
def test_keylime_negative_cases_do_not_verify(name: str) -> None:
    assert not all(r.template_digest_ok for r in _records(name))


def test_ascii_lines_round_trip() -> None:
    for name in ("ima_ast.ascii", "ima_dm.ascii", "ima_verification.ascii"):
        text = (VECTORS / name).read_text()
        assert "".join(r.ascii_line() for r in _records(name)) == text
