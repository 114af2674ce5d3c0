"""Property tests: measurement-list records round-trip through the binary and ascii forms."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.errors import FormatError
from pyverity.format.measurelist import (
    WRITABLE_TEMPLATES,
    DigestField,
    MeasurementRecord,
    TruncatedRecordError,
    parse_ascii_line,
    parse_binary,
)
from pyverity.measure.pcr import PcrValues

_ALGOS = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

names = st.text(
    alphabet=st.characters(blacklist_characters="\0\n", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=80,
)


@st.composite
def records(draw: st.DrawFn) -> MeasurementRecord:
    template = draw(st.sampled_from(WRITABLE_TEMPLATES))
    algo = draw(st.sampled_from(sorted(_ALGOS)))
    digest = draw(st.binary(min_size=_ALGOS[algo], max_size=_ALGOS[algo]))
    kind = draw(st.sampled_from(["ima", "verity"]))
    sig = draw(st.binary(max_size=300)) if "sig" in template else b""
    pcr = draw(st.integers(min_value=0, max_value=23))
    return MeasurementRecord.for_file(
        template, DigestField(algo, digest, kind), draw(names), sig, pcr=pcr
    )


@given(st.lists(records(), max_size=6))
@settings(max_examples=150, deadline=None)
def test_binary_round_trip(recs: list[MeasurementRecord]) -> None:
    data = b"".join(r.to_bytes() for r in recs)
    parsed = parse_binary(data)
    assert parsed.records == tuple(recs)
    assert parsed.end == len(data)
    for r in parsed.records:
        r.verify_template_digest()


@given(records())
@settings(max_examples=150, deadline=None)
def test_ascii_round_trip(rec: MeasurementRecord) -> None:
    assert parse_ascii_line(rec.ascii_line()) == rec


@given(records(), st.data())
@settings(max_examples=100, deadline=None)
def test_any_cut_is_a_torn_tail(rec: MeasurementRecord, data: st.DataObject) -> None:
    raw = rec.to_bytes()
    cut = data.draw(st.integers(min_value=1, max_value=len(raw) - 1))
    parsed = parse_binary(raw + raw[:cut], allow_torn_tail=True)
    assert parsed.records == (rec,)
    assert isinstance(parsed.torn, TruncatedRecordError)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_garbage_never_escapes_as_another_exception(blob: bytes) -> None:
    with contextlib.suppress(FormatError):
        parsed = parse_binary(blob, allow_torn_tail=True)
        assert parsed.end <= len(blob)
        assert b"".join(r.to_bytes() for r in parsed.records) == blob[: parsed.end]


@given(records(), st.data())
@settings(max_examples=100, deadline=None)
def test_any_flipped_byte_is_detected(rec: MeasurementRecord, data: st.DataObject) -> None:
    raw = bytearray(rec.to_bytes())
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    before = PcrValues.replay([rec])
    try:
        parsed = parse_binary(bytes(raw)).records
    except FormatError:
        return  # refused outright
    if not parsed:
        return
    changed = parsed[0]
    stored_ok = (
        hashlib.new("sha1", changed.template_data(), usedforsecurity=False).digest()
        == changed.template_digest
    )
    # Either the stored template digest no longer matches, or the PCR replay differs, or the
    # template name changed: the kernel hashes the template data, never the name, so a name
    # flipped into one pyverity does not know (read through the length prefixes) is all it shows.
    renamed = changed.template_name != rec.template_name and not changed.known_template
    assert (
        not stored_ok
        or PcrValues.replay(parsed).values != before.values
        or len(parsed) != 1
        or renamed
    )
