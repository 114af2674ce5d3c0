"""verify_result: template hashes, replay against PCR values, signatures; tamper cases fail."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pyverity.errors import IntegrityError
from pyverity.format.measurelist import DigestField, MeasurementRecord, parse_binary
from pyverity.measure import MeasurementLog, PcrValues, read_list, verify_list, verify_result
from tests.unit.measure.kernel_vectors import kernel_vectors_dir

if TYPE_CHECKING:
    from pyverity.keys.keyring import Keyring


@pytest.fixture
def written(tmp_path: Path) -> tuple[list[MeasurementRecord], PcrValues]:
    with MeasurementLog.open(tmp_path / "list", default_template="ima-ngv2") as log:
        for i in range(5):
            log.append(DigestField("sha256", bytes([i]) * 32, "verity"), f"/file{i}")
        return list(log.records), log.pcrs


def test_untouched_list_verifies(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    report = verify_list(recs, expected=pcrs)
    assert report.ok
    assert report.entries == 6


def test_changed_entry_is_named(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    bad = dataclasses.replace(recs[3], fields=(recs[3].fields[0], b"/evil\0"))
    report = verify_result([*recs[:3], bad, *recs[4:]], expected=pcrs)
    kinds = {(p.index, p.kind) for p in report.problems}
    assert (4, "template-hash") in kinds
    assert any(p.kind == "replay" for p in report.problems)
    with pytest.raises(IntegrityError, match=r"entry 4 \(/evil\)"):
        verify_list([*recs[:3], bad, *recs[4:]], expected=pcrs)


def test_changed_entry_with_recomputed_digest_fails_replay(
    written: tuple[list[MeasurementRecord], PcrValues],
) -> None:
    recs, pcrs = written
    forged = MeasurementRecord.build(10, "ima-ngv2", (recs[2].fields[0], b"/forged\0"))
    report = verify_result([*recs[:2], forged, *recs[3:]], expected=pcrs)
    assert [p.kind for p in report.problems] == ["replay", "replay"]  # sha1 and sha256 banks


def test_dropped_last_entry_is_named(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    with pytest.raises(IntegrityError, match=r"entries 6\.\.6 were dropped"):
        verify_list(recs[:-1], expected=pcrs)


def test_dropped_middle_entry_fails(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    report = verify_result(recs[:2] + recs[3:], expected=pcrs)
    assert {p.kind for p in report.problems} == {"count", "replay"}


def test_reordered_entries_fail(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    swapped = [recs[0], recs[2], recs[1], *recs[3:]]
    with pytest.raises(IntegrityError, match="changed, dropped or reordered"):
        verify_list(swapped, expected=pcrs)


def test_appended_entry_is_named(written: tuple[list[MeasurementRecord], PcrValues]) -> None:
    recs, pcrs = written
    extra = MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/extra")
    with pytest.raises(IntegrityError, match=r"entry 7 \(/extra\): not covered"):
        verify_list([*recs, extra], expected=pcrs)


def test_violation_is_replayed_as_ff() -> None:
    fields = (b"sha256:\0" + bytes(32), b"/v\0")
    violation = MeasurementRecord(10, bytes(20), "ima-ng", fields)
    pcrs = PcrValues.replay([violation])
    assert pcrs.get("sha256") == hashlib.sha256(bytes(32) + b"\xff" * 32).digest()
    assert (
        pcrs.get("sha1")
        == hashlib.new("sha1", bytes(20) + b"\xff" * 20, usedforsecurity=False).digest()
    )
    assert verify_list([violation], expected=pcrs).ok


@pytest.fixture
def kernel_keyring(tmp_path: Path) -> Keyring:
    """A keyring directory holding only the kernel vectors' certificate."""
    from pyverity.keys.keyring import Keyring

    (tmp_path / "cert.der").write_bytes((kernel_vectors_dir() / "cert.der").read_bytes())
    return Keyring.from_directory(tmp_path)


def test_kernel_list_template_hashes_and_signatures(kernel_keyring: Keyring) -> None:
    d = kernel_vectors_dir()
    recs = parse_binary((d / "binary_runtime_measurements").read_bytes()).records
    keyring = kernel_keyring
    report = verify_result(recs, keyring=keyring)
    assert report.signatures_checked == 4  # hello, big, denied (v3) and classic (v2)
    # The kernel measured /mnt/denied, then refused it: its signature is of other content.
    assert [(p.index, p.kind, p.name) for p in report.problems] == [(5, "signature", "/mnt/denied")]


def test_kernel_list_without_keyring_passes() -> None:
    d = kernel_vectors_dir()
    snap = read_list(d / "binary_runtime_measurements", pcrs=False)
    assert snap.tail_problem is None
    report = verify_list(snap.records)
    assert report.entries == 6


def test_kernel_list_signature_tamper_fails(kernel_keyring: Keyring) -> None:
    d = kernel_vectors_dir()
    recs = list(parse_binary((d / "binary_runtime_measurements").read_bytes()).records)
    hello = recs[1]
    sig = bytearray(hello.signature)
    sig[-1] ^= 1
    forged = MeasurementRecord.build(10, hello.template_name, (*hello.fields[:2], bytes(sig)))
    report = verify_result([forged], keyring=kernel_keyring)
    assert [p.kind for p in report.problems] == ["signature"]


def _tpm_vector() -> Path:
    v = Path(__file__).resolve().parents[2] / "vectors" / "kernel-6.1-ima-pyverity"
    if not (v / "pcr10-sha256").is_file():
        pytest.skip(f"{v} is not present (the kernel suite records it)")
    return v


def test_real_tpm_list_replays_to_the_tpm_pcrs() -> None:
    v = _tpm_vector()
    recs = list(read_list(v / "binary_runtime_measurements", pcrs=False).records)
    tpm = PcrValues(
        {
            b: {10: bytes.fromhex((v / f"pcr10-{b}").read_text().strip())}
            for b in ("sha1", "sha256")
        },
        count=len(recs),
    )
    assert verify_list(recs, expected=tpm).ok
    assert recs[0].file_name == "boot_aggregate"
    assert recs[0].digest is not None
    assert recs[0].digest.digest != bytes(32)  # a real TPM: a real boot_aggregate
    swapped = [recs[0], recs[2], recs[1], *recs[3:]]
    assert not verify_result(swapped, expected=tpm).ok
    assert not verify_result(recs[:-1], expected=tpm).ok


@pytest.mark.parametrize("tamper", ["reorder", "drop", "forge"])
def test_the_chain_names_the_entry(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "list"
    with MeasurementLog.open(path, default_template="ima-ng") as log:
        for i in range(8):
            log.append(DigestField("sha256", bytes([i]) * 32, "ima"), f"/e{i}")
    snap = read_list(path)
    assert snap.chain is not None
    assert len(snap.chain) == 9 * 32
    recs = list(snap.records)
    if tamper == "reorder":
        recs[4], recs[6] = recs[6], recs[4]  # entries 5 and 7
    elif tamper == "drop":
        del recs[4]  # entry 5; entry 6 moves up
    else:
        recs[4] = MeasurementRecord.build(10, "ima-ng", (recs[4].fields[0], b"/forged\0"))
    with pytest.raises(IntegrityError) as info:
        verify_list(recs, expected=snap.pcrs, chain=snap.chain)
    name = {"reorder": "/e5", "drop": "/e4", "forge": "/forged"}[tamper]
    assert str(info.value).startswith(f"measurement list: entry 5 ({name}): the replay leaves")


def test_a_chain_that_disagrees_with_the_pcrs_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "list"
    with MeasurementLog.open(path) as log:
        for i in range(3):
            log.append(DigestField("sha256", bytes([i]) * 32, "ima"), f"/e{i}")
    snap = read_list(path)
    recs = [snap.records[0], snap.records[2], snap.records[1], snap.records[3]]
    report = verify_result(recs, expected=snap.pcrs, chain=bytes(len(snap.chain or b"")))
    assert [p.kind for p in report.problems] == ["replay", "replay"]


def test_a_damaged_chain_file_is_rebuilt_on_open(tmp_path: Path) -> None:
    from pyverity.measure.log import chain_path

    path = tmp_path / "list"
    with MeasurementLog.open(path) as log:
        log.append(DigestField("sha256", bytes(32), "ima"), "/x")
    good = chain_path(path).read_bytes()
    chain_path(path).write_bytes(good[:40])  # a crash left it short and torn
    MeasurementLog.open(path).close()
    assert chain_path(path).read_bytes() == good


def test_signatures_by_kernel_keys_and_hashes() -> None:
    """sm3 by P-192 and rmd160 by RSA-1024 verify; an RSA signature over streebog256 is
    ``unsupported`` (OpenSSL has no DigestInfo for it), not a bad signature; a v3 signature
    beside an ``ima:`` file hash (a rule without digest_type=verity) is left unchecked."""
    from pyverity.format.ima import ImaSignature, algo_named
    from pyverity.keys import Keyring
    from pyverity.keys.cert import parse_certificate
    from pyverity.keys.keyid import keyid_from_public_key
    from tests.unit.keys.keyhelpers import certified_key
    from tests.unit.keys.test_kernel_keys import _sign

    if not {"sm3", "ripemd160"} <= hashlib.algorithms_available:
        pytest.skip("this Python's OpenSSL lacks sm3 or rmd160")
    certs, records = [], []
    cases = [("ecdsa-p192", "sm3"), ("rsa-1024", "rmd160"), ("rsa-2048", "streebog256")]
    for kind, name in cases:
        alg = algo_named(name)
        assert alg is not None
        key, cert = certified_key(kind)
        certs.append(parse_certificate(cert.public_bytes(Encoding.DER), kind))
        keyid = keyid_from_public_key(key.public_key())
        if alg.hashlib_name is None:
            digest, raw = bytes(alg.digest_size), bytes(128)
        else:
            digest = alg.hash(b"content")
            raw = _sign(key, alg, digest)
        sig = ImaSignature.v2(alg.id, keyid, raw).to_bytes()
        field = DigestField(name, digest, "ima")
        records.append(MeasurementRecord.for_file("ima-sigv2", field, f"/{name}", sig))
    v3 = b"\x06\x03\x04" + bytes(4) + b"\x00\x01" + b"\x01"
    file_hash = DigestField("sha256", hashlib.sha256(b"x").digest(), "ima")
    records.append(MeasurementRecord.for_file("ima-sigv2", file_hash, "/v3", v3))
    report = verify_result(records, keyring=Keyring.from_certificates(certs))
    assert report.signatures_checked == 3
    assert [(p.kind, p.name) for p in report.problems] == [("unsupported", "/streebog256")]
    assert "not supported" in report.problems[0].reason


def test_v3_signatures_in_ima_sig_entries() -> None:
    """``ima-sig`` (d-ng) cannot say which digest it holds: a v3 signature over it as an
    fs-verity digest is checked; one beside a file hash (what a rule without digest_type=verity
    records) does not verify that way and is left unchecked; an unknown key is a problem."""
    from pyverity.keys import Keyring, load_signer
    from pyverity.keys.signer import sign_v3
    from tests.unit.keys.keyhelpers import keyring_dir, make_key

    key = make_key()
    signer = load_signer(str(key.key_path), cert=key.cert_path)
    ring = Keyring.from_directory(keyring_dir(key))
    verity = bytes(range(32))
    sig = sign_v3(signer, 1, verity).to_bytes()
    file_hash = hashlib.sha256(b"content").digest()
    other = make_key("ecdsa", "P-256")
    stranger = sign_v3(load_signer(str(other.key_path), cert=other.cert_path), 1, verity)
    records = [
        MeasurementRecord.for_file("ima-sig", DigestField("sha256", verity), "/verity", sig),
        MeasurementRecord.for_file("ima-sig", DigestField("sha256", file_hash), "/hash", sig),
        MeasurementRecord.for_file(
            "ima-sig", DigestField("sha256", verity), "/stranger", stranger.to_bytes()
        ),
    ]
    report = verify_result(records, keyring=ring)
    assert report.signatures_checked == 2  # /verity, and /stranger's unknown key
    assert [(p.kind, p.name) for p in report.problems] == [("signature", "/stranger")]
