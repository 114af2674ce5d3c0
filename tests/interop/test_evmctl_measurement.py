"""``evmctl ima_measurement`` (ima-evm-utils 1.4) replays pyverity's lists against our PCRs.

evmctl reads PCR values from ``--pcrs BANK,FILE`` files in the ``PCR-NN: hex`` form that
``pyverity log pcrs --evmctl BANK`` prints. It recomputes every template hash, replays the
sha1 and sha256 banks and compares; with ``--verify-sig`` it also checks ``ima-sig``
signatures over the listed digests (1.4 reports a bad signature but still exits 0, so the test
reads its output).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.measure import MeasurementLog, PcrValues, pcr_path
from tests.unit.measure.kernel_vectors import kernel_vectors_dir

pytestmark = pytest.mark.interop

EVMCTL = shutil.which("evmctl")
if EVMCTL is None:
    pytest.skip("evmctl (ima-evm-utils) is not installed", allow_module_level=True)


def _pcr_files(tmp: Path, values: PcrValues) -> list[str]:
    args = []
    for bank in ("sha1", "sha256"):
        f = tmp / f"pcrs-{bank}"
        f.write_text(values.evmctl_text(bank))
        args += ["--pcrs", f"{bank},{f}"]
    return args


def _evmctl(*args: str) -> subprocess.CompletedProcess[str]:
    assert EVMCTL is not None
    return subprocess.run(
        [EVMCTL, "-v", "ima_measurement", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write_list(path: Path) -> PcrValues:
    with MeasurementLog.open(path, default_template="ima-ng") as log:
        for i in range(4):
            content = f"file {i}\n".encode()
            log.append(DigestField("sha256", hashlib.sha256(content).digest(), "ima"), f"/d/f{i}")
        log.append(DigestField("sha256", bytes(range(32)), "verity"), "/d/v", template="ima-ngv2")
        log.append(
            DigestField("sha512", bytes(64), "verity"),
            "/d/s",
            template="ima-sigv2",
            signature=b"\x06\x03\x06" + bytes(6) + b"\x01",
        )
        return log.pcrs


def test_evmctl_accepts_our_list_and_pcrs(tmp_path: Path) -> None:
    path = tmp_path / "list"
    pcrs = _write_list(path)
    res = _evmctl(*_pcr_files(tmp_path, pcrs), str(path))
    assert res.returncode == 0, res.stderr
    assert "sha1 PCR-10: succeed at entry 7" in res.stdout + res.stderr
    assert "sha256 PCR-10: succeed at entry 7" in res.stdout + res.stderr
    assert "Matched per TPM bank calculated digest(s)." in res.stdout + res.stderr


def test_evmctl_refuses_wrong_pcrs(tmp_path: Path) -> None:
    path = tmp_path / "list"
    pcrs = _write_list(path)
    wrong = PcrValues({"sha1": {10: bytes(20)}, "sha256": {10: bytes(32)}}, pcrs.count)
    res = _evmctl(*_pcr_files(tmp_path, wrong), str(path))
    assert res.returncode != 0
    assert "Failed to match" in res.stdout + res.stderr


@pytest.mark.parametrize("tamper", ["reorder", "drop", "change"])
def test_evmctl_refuses_tampered_list(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "list"
    pcrs = _write_list(path)
    with MeasurementLog.open(path) as log:
        recs = list(log.records)
    if tamper == "reorder":
        recs[2], recs[3] = recs[3], recs[2]
    elif tamper == "drop":
        del recs[2]
    else:  # a different name with a recomputed template hash
        recs[2] = MeasurementRecord.build(10, "ima-ng", (recs[2].fields[0], b"/d/evil\0"))
    path.write_bytes(b"".join(r.to_bytes() for r in recs))
    res = _evmctl(*_pcr_files(tmp_path, pcrs), str(path))
    assert res.returncode != 0
    assert "Failed to match" in res.stdout + res.stderr


def test_evmctl_verifies_an_ima_sig_entry(tmp_path: Path) -> None:
    # A v2 signature made by `evmctl ima_sign` in the kernel vectors, over the whole-file hash.
    v = kernel_vectors_dir()
    sig = bytes.fromhex((v / "classic.sig").read_text().strip().removeprefix("0x"))
    digest = hashlib.sha256((v / "classic").read_bytes()).digest()
    path = tmp_path / "list"
    with MeasurementLog.open(path, default_template="ima-sig") as log:
        log.append(DigestField("sha256", digest, "ima"), "/mnt/classic", signature=sig)
        pcrs = log.pcrs
        first = log.records[0]
    # Our boot_aggregate entry is the kernel's TPM-less one, byte for byte.
    kernel_first = (v / "ascii_runtime_measurements").read_text().splitlines()[0]
    assert first.ascii_line().rstrip("\n") == kernel_first
    res = _evmctl(
        "--verify-sig", "--key", str(v / "cert.der"), *_pcr_files(tmp_path, pcrs), str(path)
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "/mnt/classic: verification is OK" in out
    assert "Matched per TPM bank" in out


def test_evmctl_and_pyverity_agree_on_a_real_tpm_list(tmp_path: Path) -> None:
    # The kernel suite's vector: a real kernel list with a software TPM's PCR 10.
    v = Path(__file__).resolve().parents[1] / "vectors" / "kernel-6.1-ima-pyverity"
    if not (v / "pcr10-sha256").is_file():
        pytest.skip(f"{v} is not present (the kernel suite records it)")
    real = PcrValues(
        {b: {10: bytes.fromhex((v / f"pcr10-{b}").read_text().strip())} for b in ("sha1", "sha256")}
    )
    res = _evmctl(*_pcr_files(tmp_path, real), str(v / "binary_runtime_measurements"))
    assert res.returncode == 0, res.stdout + res.stderr
    from pyverity.measure import read_list

    snap = read_list(v / "binary_runtime_measurements", pcrs=False)
    assert PcrValues.replay(snap.records).values == real.values
    assert not pcr_path(v / "binary_runtime_measurements").exists()
