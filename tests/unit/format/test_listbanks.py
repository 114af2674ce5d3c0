"""Per-bank measurement lists (spec/ima.md §4.3; issue 10, item 3): the bank from a list file's
name, the template-digest size of each bank, template hashes and extends per bank (a
``tpm_alg_<hex>`` bank: the SHA-1 template hash zero-padded, extended with the TPM's hash),
the ``TPM_ALG_ID`` mapping, binary lists of 20/32/48/64-byte template digests, and a template
pyverity does not know, read field by field rather than refused."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from pyverity.errors import FormatError, Reason, UnsupportedError, UsageError
from pyverity.format.listbanks import (
    BANK_SIZES,
    TPM_ALGS,
    bank_from_name,
    digest_size,
    extend,
    normalize_bank,
    template_hash,
)
from pyverity.format.measurelist import (
    GENERIC_FIELD,
    DigestField,
    MeasurementRecord,
    detect_bank,
    iter_records,
    known_fields,
    read_record,
)
from pyverity.measure.stream import open_list

SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
SECURITYFS = "/sys/kernel/security/ima"


def _record(bank: str, name: str = "/bin/true", template: str = "ima-ng") -> MeasurementRecord:
    digest = DigestField("sha256", hashlib.sha256(name.encode()).digest())
    fields = MeasurementRecord.for_file("ima-ng", digest, name).fields
    return MeasurementRecord.build(10, template, fields, bank=bank)


def _list(bank: str, count: int = 3) -> bytes:
    return b"".join(_record(bank, f"/f{i}").to_bytes() for i in range(count))


@pytest.mark.parametrize(
    ("path", "bank"),
    [
        (f"{SECURITYFS}/binary_runtime_measurements_sha1", "sha1"),
        (f"{SECURITYFS}/binary_runtime_measurements_sha256", "sha256"),
        (f"{SECURITYFS}/ascii_runtime_measurements_sha384", "sha384"),
        ("binary_runtime_measurements_sha512", "sha512"),
        ("copies/ascii_runtime_measurements_sm3", "sm3"),
        ("binary_runtime_measurements_sm3_256", "sm3"),
        ("binary_runtime_measurements_SHA256", "sha256"),
        ("binary_runtime_measurements_tpm_alg_12", "tpm_alg_12"),
        ("ascii_runtime_measurements_tpm_alg_000B", "tpm_alg_b"),
        # the unsuffixed names say nothing (6.10+: symlinks to the sha1 ones; older: sha1)
        (f"{SECURITYFS}/binary_runtime_measurements", None),
        (f"{SECURITYFS}/ascii_runtime_measurements", None),
        ("measurements.bin", None),
        ("binary_runtime_measurements_backup", None),
    ],
)
def test_bank_from_the_file_name(path: str, bank: str | None) -> None:
    assert bank_from_name(path) == bank


def test_an_unknown_tpm_algorithm_in_a_name_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="0x1234 is not supported") as e:
        bank_from_name("binary_runtime_measurements_tpm_alg_1234")
    assert e.value.reason is Reason.UNSUPPORTED
    for bad in ("tpm_alg_", "tpm_alg_xyz", "tpm_alg_12345", "md5", "sha3"):
        with pytest.raises(UnsupportedError):
            normalize_bank(bad)


def test_tpm_alg_ids_are_the_tcg_registry_values() -> None:
    # TCG Algorithm Registry: TPM_ALG_SHA1 0x0004, SHA256 0x000B, SHA384 0x000C, SHA512 0x000D,
    # SM3_256 0x0012, SHA3_256 0x0027, SHA3_384 0x0028, SHA3_512 0x0029.
    registry = {0x4: "sha1", 0xB: "sha256", 0xC: "sha384", 0xD: "sha512",
                0x12: "sm3", 0x27: "sha3-256", 0x28: "sha3-384", 0x29: "sha3-512"}  # fmt: skip
    assert registry == TPM_ALGS
    for alg_id, name in TPM_ALGS.items():
        bank = normalize_bank(f"tpm_alg_{alg_id:04X}")
        assert bank == f"tpm_alg_{alg_id:x}"
        assert digest_size(bank) == BANK_SIZES[name]


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384", "sha512", "sm3", "sha3-256"])
def test_template_hash_and_extend_per_bank(bank: str) -> None:
    data = b"template data"
    hashlib_name = {"sm3": "sm3", "sha3-256": "sha3_256"}.get(bank, bank)
    if hashlib_name not in hashlib.algorithms_available:
        with pytest.raises(UnsupportedError):
            template_hash(bank, data)
        pytest.skip(f"this Python's OpenSSL has no {hashlib_name}: unsupported, as tested")
    want = hashlib.new(hashlib_name, data).digest()
    assert template_hash(bank, data) == want
    assert len(want) == digest_size(bank)
    old = bytes(digest_size(bank))
    assert extend(bank, old, want) == hashlib.new(hashlib_name, old + want).digest()


def test_a_tpm_alg_bank_extends_the_padded_sha1_template_hash() -> None:
    data = b"template data"
    padded = hashlib.sha1(data).digest() + bytes(12)  # noqa: S324 - the kernel's sha1 slot
    assert template_hash("tpm_alg_b", data) == padded
    old = bytes(32)
    assert extend("tpm_alg_b", old, padded) == hashlib.sha256(old + padded).digest()


@pytest.mark.parametrize("bank", list(SIZES))
def test_binary_lists_of_each_digest_size(bank: str) -> None:
    raw = _list(bank)
    assert detect_bank(raw[:400]) == bank
    got = [r for _, r, _ in iter_records(io.BytesIO(raw).read, bank=bank)]
    assert [r.file_name for r in got] == ["/f0", "/f1", "/f2"]
    for record in got:
        assert record.bank == bank
        assert len(record.template_digest) == SIZES[bank]
        assert record.template_digest_ok
        assert record.template_digest == template_hash(bank, record.template_data())
    assert b"".join(r.to_bytes() for r in got) == raw  # byte for byte


@pytest.mark.parametrize(("written", "read_as"), [("sha256", "sha1"), ("sha1", "sha512")])
def test_a_list_read_with_the_wrong_bank_is_refused(written: str, read_as: str) -> None:
    with pytest.raises(FormatError):
        list(iter_records(io.BytesIO(_list(written)).read, bank=read_as))


def test_a_record_with_another_banks_digest_size_is_refused() -> None:
    record = _record("sha1")
    with pytest.raises(FormatError, match="template digest of 20 bytes"):
        MeasurementRecord(10, record.template_digest, "ima-ng", record.fields, "sha256")


def test_an_unknown_template_is_read_field_by_field() -> None:
    fields = (b"sha256:\0" + bytes(32), b"/opt/x\0", b"\x01\x02", b"")
    for bank in ("sha1", "sha256"):
        record = MeasurementRecord.build(11, "my-site-tpl", fields, bank=bank)
        raw = record.to_bytes()
        got = read_record(io.BytesIO(raw).read, 0, bank=bank)
        assert got is not None
        back, end = got
        assert end == len(raw)
        assert back == record
        assert not back.known_template
        assert back.field_ids == (GENERIC_FIELD,) * 4
        assert back.fields == fields
        assert back.template_digest_ok  # the hash is over the length-prefixed fields
        assert back.ascii_line().split()[2] == "my-site-tpl"


@pytest.mark.parametrize("template", ["ima-modsig", "evm-sig"])
def test_kernel_templates_with_more_fields_replay(template: str) -> None:
    ids = known_fields(template)
    assert ids is not None
    fields = (b"sha256:\0" + bytes(32), b"/lib/m.ko\0") + (b"",) * (len(ids) - 2)
    raw = MeasurementRecord.build(10, template, fields, bank="sha256").to_bytes()
    got = read_record(io.BytesIO(raw).read, 0, bank="sha256")
    assert got is not None
    assert got[0].template_digest_ok


def _write(path: Path, bank: str) -> Path:
    path.write_bytes(_list(bank))
    return path


def test_open_list_takes_the_bank_from_the_name_or_its_symlink(tmp_path: Path) -> None:
    for bank in SIZES:
        f = _write(tmp_path / f"binary_runtime_measurements_{bank}", bank)
        with open_list(f, pcrs=False) as reader:
            assert reader.bank == bank
            assert len(list(reader.records())) == 3
    # 6.10+: the unsuffixed name is a symlink to the sha1 list; followed, it says sha1
    link = tmp_path / "binary_runtime_measurements"
    link.symlink_to(tmp_path / "binary_runtime_measurements_sha1")
    with open_list(link, pcrs=False) as reader:
        assert reader.bank == "sha1"
    # the link is followed, not guessed from the content: 32-byte digests named sm3 are sm3
    if "sm3" in hashlib.algorithms_available:
        (tmp_path / "sm3").mkdir()
        target = _write(tmp_path / "sm3" / "binary_runtime_measurements_sm3", "sm3")
        (tmp_path / "sm3" / "binary_runtime_measurements").symlink_to(target)
        with open_list(tmp_path / "sm3" / "binary_runtime_measurements", pcrs=False) as reader:
            assert reader.bank == "sm3"
    # before 6.10 the unsuffixed file is itself the sha1 list
    (tmp_path / "old").mkdir()
    plain = _write(tmp_path / "old" / "binary_runtime_measurements", "sha1")
    with open_list(plain, pcrs=False) as reader:
        assert reader.bank == "sha1"


def test_bank_option_against_the_name(tmp_path: Path) -> None:
    f = _write(tmp_path / "binary_runtime_measurements_sha256", "sha256")
    with pytest.raises(UsageError, match="is the sha256 list"):
        open_list(f, pcrs=False, bank="sha384").__enter__()
    with open_list(f, pcrs=False, bank="SHA256") as reader:
        assert reader.bank == "sha256"
    # a 32-byte list without a suffix is taken as sha256; --bank sm3 says otherwise
    g = tmp_path / "copy.bin"
    g.write_bytes(f.read_bytes())
    with open_list(g, pcrs=False) as reader:
        assert reader.bank == "sha256"
    with open_list(g, pcrs=False, bank="sm3") as reader:
        assert reader.bank == "sm3"
