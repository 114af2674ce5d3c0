"""format.measurelist against the spec's worked examples and a real kernel's list."""

from __future__ import annotations

import hashlib
import struct

import pytest

from pyverity.errors import FormatError
from pyverity.format.measurelist import (
    DigestField,
    MeasurementRecord,
    TruncatedRecordError,
    encode_name,
    parse_ascii_line,
    parse_binary,
    template_fields,
)
from tests.unit.measure.kernel_vectors import kernel_vectors_dir

HELLO_VERITY = bytes.fromhex("37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92")


def _kernel_list() -> tuple[bytes, str]:
    d = kernel_vectors_dir()
    return (
        (d / "binary_runtime_measurements").read_bytes(),
        (d / "ascii_runtime_measurements").read_text(),
    )


def test_kernel_binary_list_round_trips_byte_for_byte() -> None:
    data, _ = _kernel_list()
    parsed = parse_binary(data)
    assert len(parsed.records) == 6
    assert b"".join(r.to_bytes() for r in parsed.records) == data
    assert parsed.end == len(data)


def test_kernel_template_hashes_reproduce() -> None:
    data, _ = _kernel_list()
    for record in parse_binary(data).records:
        record.verify_template_digest()
        assert record.template_hash("sha1") == record.template_digest


def test_kernel_ascii_view_is_identical() -> None:
    data, text = _kernel_list()
    assert "".join(r.ascii_line() for r in parse_binary(data).records) == text


def test_kernel_ascii_lines_rebuild_the_binary_records() -> None:
    data, text = _kernel_list()
    records = parse_binary(data).records
    assert tuple(parse_ascii_line(line) for line in text.splitlines(keepends=True)) == records


def test_kernel_fields_decode() -> None:
    data, _ = _kernel_list()
    recs = parse_binary(data).records
    assert recs[0].file_name == "boot_aggregate"
    assert recs[0].template_name == "ima-sig"
    assert recs[0].signature == b""
    hello = recs[1]
    assert hello.file_name == "/mnt/hello"
    assert hello.digest == DigestField("sha256", HELLO_VERITY, "verity")
    assert hello.signature[:2] == b"\x06\x03"
    assert recs[5].digest is not None
    assert recs[5].digest.kind is None  # ima-sig: d-ng cannot say what kind of digest


def test_spec_derived_example_ngv2() -> None:
    # spec/ima.md §4.3: ima-ngv2, verity, /tmp/f.txt, hello world's fs-verity digest.
    rec = MeasurementRecord.for_file(
        "ima-ngv2", DigestField("sha256", HELLO_VERITY, "verity"), "/tmp/f.txt"
    )
    assert len(rec.template_data()) == 66
    assert rec.fields[0][:4] == b"veri"
    assert struct.pack("<I", len(rec.fields[0])) == bytes.fromhex("2f000000")
    assert rec.template_digest.hex() == "ed1f4200029dcf9d18e6511a1f5636d25f489cd4"
    assert rec.template_hash("sha256").hex() == (
        "7c3ca38c1f6fc1b30743a01c6dde0e4b59f5ed4392d75981c66a704c8a439193"
    )
    pcr = hashlib.sha256(bytes(32) + rec.template_hash("sha256")).hexdigest()
    assert pcr.startswith("181ce83b")
    assert pcr.endswith("7b94")
    sigv2 = MeasurementRecord.for_file(
        "ima-sigv2", DigestField("sha256", HELLO_VERITY, "verity"), "/tmp/f.txt"
    )
    assert sigv2.template_digest.hex() == "5227c5c40abd8275594aea622f26cb87ffe3a554"
    assert sigv2.ascii_line().endswith("/tmp/f.txt \n")  # empty sig field: trailing space


def test_name_spaces_become_underscores_and_nul_is_counted() -> None:
    assert encode_name("/a b/c") == b"/a_b/c\0"
    with pytest.raises(FormatError):
        encode_name("a\0b")


def test_ng_drops_digest_kind_and_v2_needs_it() -> None:
    rec = MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32), "verity"), "/x")
    assert rec.fields[0] == b"sha256:\0" + bytes(32)
    with pytest.raises(FormatError, match="digest type"):
        MeasurementRecord.for_file("ima-ngv2", DigestField("sha256", bytes(32)), "/x")
    with pytest.raises(FormatError, match="no signature field"):
        MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/x", b"\x03")
    with pytest.raises(FormatError, match="cannot be written"):
        MeasurementRecord.for_file("ima-buf", DigestField("sha256", bytes(32)), "/x")


def test_legacy_ima_template_parses_and_hashes() -> None:
    digest = hashlib.new("sha1", b"content", usedforsecurity=False).digest()
    name = b"/bin/true"
    fields = (digest, name + b"\0")
    rec = MeasurementRecord.build(10, "ima", fields)
    expected = hashlib.new("sha1", digest + name.ljust(256, b"\0"), usedforsecurity=False).digest()
    assert rec.template_digest == expected
    raw = rec.to_bytes()
    # u32 pcr, digest, u32 3, "ima", 20-byte d (no length), u32 strlen(name), name (no NUL)
    assert raw[28:31] == b"ima"
    assert raw[31:51] == digest
    assert raw[51:55] == struct.pack("<I", len(name))
    assert raw[55:] == name
    assert parse_binary(raw).records == (rec,)
    assert rec.ascii_line() == f"10 {expected.hex()} ima {digest.hex()} /bin/true\n"


def test_custom_format_template_name() -> None:
    assert template_fields("d-ng|n-ng|sig") == ("d-ng", "n-ng", "sig")
    with pytest.raises(FormatError):
        template_fields("d-ng|bogus")


def test_violation_entry_extends_ff_and_skips_hash_check() -> None:
    fields = (b"sha256:\0" + bytes(32), encode_name("/f"))
    rec = MeasurementRecord(10, bytes(20), "ima-ng", fields)
    assert rec.is_violation
    rec.verify_template_digest()  # not checked for violations
    assert rec.pcr_extend_value("sha1") == b"\xff" * 20
    assert rec.pcr_extend_value("sha256") == b"\xff" * 32


def test_truncation_anywhere_is_a_torn_tail() -> None:
    rec = MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/x")
    raw = rec.to_bytes()
    for cut in range(1, len(raw)):
        with pytest.raises(TruncatedRecordError) as info:
            parse_binary(raw + raw[:cut])
        assert info.value.offset == len(raw)
        parsed = parse_binary(raw + raw[:cut], allow_torn_tail=True)
        assert parsed.records == (rec,)
        assert parsed.end == len(raw)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:24] + struct.pack("<I", 0) + b[28:], "template name length 0"),
        (lambda b: b[:24] + struct.pack("<I", 999) + b[28:], "template name length 999"),
        (lambda b: b[:28] + b"xx\x01-ng" + b[34:], "bad template name"),
        (lambda b: b[:28] + b"xx -ng" + b[34:], "bad template name"),
        (lambda b: b[:34] + struct.pack("<I", 1 << 30) + b[38:], "template data length"),
        (lambda b: b[:38] + struct.pack("<I", 200) + b[42:], "overruns"),
    ],
)
def test_malformed_records_are_refused(mutate: object, message: str) -> None:
    rec = MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/x")
    raw = mutate(rec.to_bytes())  # type: ignore[operator]
    with pytest.raises(FormatError, match=message):
        parse_binary(raw)


def test_digest_field_parsing() -> None:
    d = DigestField.parse("verity:sha512:" + "ab" * 64, v2=True)
    assert (d.kind, d.algo, d.digest) == ("verity", "sha512", b"\xab" * 64)
    assert str(d) == "verity:sha512:" + "ab" * 64
    old = DigestField.from_bytes(b":\0" + bytes(20), v2=False)  # very old kernels
    assert old.algo == ""
    with pytest.raises(FormatError):
        DigestField.parse("bogus:sha256:00", v2=True)
    with pytest.raises(FormatError):
        DigestField.from_bytes(b"sha256" + bytes(32), v2=False)
