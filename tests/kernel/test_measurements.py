"""The kernel's measurement list from the appraisal run: parsed, checked and replayed.

Every check runs twice: on the list of this session's boot (marked ``kernel``) and on the list
kept in ``tests/vectors/kernel-6.1-ima-pyverity/`` (an ordinary test: no VM needed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest
from tests.kernel import imalist
from tests.kernel.cases import SIG_CASES, parse_lines
from tests.kernel.conftest import KernelRun

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "kernel-6.1-ima-pyverity"
_IMA_ALGO = {"sha256": 4, "sha512": 6}


@dataclass(frozen=True)
class ImaRun:
    """One appraisal run's outputs: ``results`` (lists, PCRs, kernel.txt) and ``sig`` (inputs)."""

    results: Path
    sig: Path
    lines: dict[tuple[str, str], str]

    @property
    def tpm(self) -> bool:
        return (self.results / "pcr10-sha256").exists()

    def entries(self) -> list[imalist.Entry]:
        return imalist.parse((self.results / "binary_runtime_measurements").read_bytes())

    def signature(self, name: str) -> bytes:
        path = self.sig / f"{name}.ima"
        return path.read_bytes() if path.exists() else b""


@pytest.fixture(params=[pytest.param("kernel", marks=pytest.mark.kernel), "vector"])
def ima(request: pytest.FixtureRequest) -> ImaRun:
    if request.param == "kernel":
        run: KernelRun = request.getfixturevalue("kernel_run")
        return ImaRun(run.results, run.stage / "sig", run.lines)
    assert (VECTOR / "binary_runtime_measurements").exists(), f"{VECTOR} is missing"
    return ImaRun(VECTOR, VECTOR / "sig", parse_lines((VECTOR / "kernel.txt").read_text()))


def test_every_template_digest_is_the_sha1_of_its_data(ima: ImaRun) -> None:
    entries = ima.entries()
    assert entries[0].file_name == "boot_aggregate"
    for e in entries:
        assert e.pcr == 10
        if not e.violation:
            assert e.template_hash("sha1") == e.template_digest, e.file_name


def test_ascii_list_matches_binary(ima: ImaRun) -> None:
    entries = ima.entries()
    lines = (ima.results / "ascii_runtime_measurements").read_text().splitlines()
    assert len(lines) == len(entries)
    for e, line in zip(entries, lines, strict=True):
        pcr, digest, template, rest = line.split(" ", 3)
        alg, d = e.digest_field()
        assert (int(pcr), digest, template) == (10, e.template_digest.hex(), e.template)
        assert rest.startswith(f"{alg}:{d.hex()} {e.file_name}")


def test_one_record_per_verity_file_with_pyverity_digest_and_signature(ima: ImaRun) -> None:
    by_name = {e.file_name: e for e in ima.entries()[1:]}
    for case in SIG_CASES:
        if not case.verity:
            # A signed file without fs-verity under a verity rule: no digest, so no record.
            assert f"/mnt/sig/{case.name}" not in by_name
            continue
        e = by_name[f"/mnt/sig/{case.name}"]
        params = TreeParams(hashalg.by_name(case.algorithm), 4096, case.salt)
        ours = compute_digest(ima.sig / case.name, params)
        assert e.digest_field() == (f"verity:{case.algorithm}", ours.digest)
        assert ima.lines[("measure", case.name)] == f"{ours.algorithm_number} {ours.hex()}"
        if case.owner == 1001:
            assert e.template == "ima-ngv2"
            assert len(e.fields) == 2
        else:
            assert e.template == "ima-sigv2"
            assert e.fields[2] == ima.signature(case.name)


def _v3_verifies(
    public: rsa.RSAPublicKey, keyid: bytes, kind: str, digest: bytes, sig: bytes
) -> bool:
    alg = kind.split(":")[1]
    if sig[:3] != bytes([0x06, 0x03, _IMA_ALGO[alg]]) or sig[3:7] != keyid:
        return False
    signed = hashlib.new(alg, bytes([0x06, _IMA_ALGO[alg]]) + digest).digest()
    chosen = hashes.SHA256() if alg == "sha256" else hashes.SHA512()
    try:
        public.verify(sig[9:], signed, padding.PKCS1v15(), utils.Prehashed(chosen))
    except InvalidSignature:
        return False
    return True


def test_signatures_in_the_list_verify_exactly_where_the_kernel_allowed(ima: ImaRun) -> None:
    cert = x509.load_der_x509_certificate((ima.sig / "cert.der").read_bytes())
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    keyid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest[-4:]
    checked = 0
    for e in ima.entries()[1:]:
        if e.template != "ima-sigv2" or not e.fields[2]:
            continue
        name = e.file_name.rsplit("/", 1)[1]
        allowed = not ima.lines[("open", name)].startswith("ERR")
        kind, digest = e.digest_field()
        assert _v3_verifies(public, keyid, kind, digest, e.fields[2]) == allowed, name
        checked += 1
    assert checked == sum(1 for c in SIG_CASES if c.verity and c.sign)


def test_verdicts_are_the_expected_ones(ima: ImaRun) -> None:
    for case in SIG_CASES:
        verdict = ima.lines[("open", case.name)]
        assert verdict == (str(case.size) if case.expect_open else "ERR 13 Permission denied")


def test_replay_equals_the_tpm_pcr10(ima: ImaRun) -> None:
    if not ima.tpm:
        pytest.skip("no TPM in this run (swtpm not installed, or PYVERITY_KERNEL_TPM=0)")
    entries = ima.entries()
    assert entries[0].digest_field()[1] != bytes(32)  # a real boot_aggregate
    for bank in ("sha1", "sha256"):
        pcr = ima.results / f"pcr10-{bank}"
        if bank == "sha256" or pcr.exists():
            assert imalist.replay(entries, bank) == bytes.fromhex(pcr.read_text().strip()), bank


def test_evmctl_replays_the_kernel_list_against_the_tpm(ima: ImaRun, tmp_path: Path) -> None:
    if not ima.tpm:
        pytest.skip("no TPM in this run (swtpm not installed, or PYVERITY_KERNEL_TPM=0)")
    if shutil.which("evmctl") is None:
        pytest.skip("evmctl is not installed (Debian: ima-evm-utils)")
    cmd = ["evmctl", "ima_measurement"]
    for bank in ("sha1", "sha256"):
        value = (ima.results / f"pcr10-{bank}").read_text().strip().lower()
        zero = "0" * len(value)
        pcrs = tmp_path / bank
        pcrs.write_text("".join(f"PCR-{i:02d}: {value if i == 10 else zero}\n" for i in range(24)))
        cmd += ["--pcrs", f"{bank},{pcrs}"]
    cmd.append(str(ima.results / "binary_runtime_measurements"))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Matched per TPM bank" in proc.stdout + proc.stderr


def test_pyverity_log_verify_replays_and_checks_the_kernel_list(
    ima: ImaRun, tmp_path: Path
) -> None:
    """``pyverity log verify``: the replay equals the TPM, and a signature fails exactly where
    the kernel refused the open."""
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    shutil.copyfile(ima.sig / "cert.der", keyring / "cert.der")
    cmd = [
        sys.executable,
        "-m",
        "pyverity.cli",
        "log",
        "verify",
        "--json",
        "--keyring",
        str(keyring),
    ]
    pcrs = {}
    if ima.tpm:
        for bank in ("sha1", "sha256"):
            pcrs[bank] = (ima.results / f"pcr10-{bank}").read_text().strip().lower()
            cmd += ["--pcr", f"{bank}:{pcrs[bank]}"]
    cmd.append(str(ima.results / "binary_runtime_measurements"))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    report = json.loads(proc.stdout)
    refused = {
        f"/mnt/sig/{c.name}"
        for c in SIG_CASES
        if c.verity and c.sign and ima.lines[("open", c.name)].startswith("ERR")
    }
    assert {p["kind"] for p in report["problems"]} == {"signature"}
    assert {p["name"] for p in report["problems"]} == refused
    assert report["signatures_checked"] == sum(1 for c in SIG_CASES if c.verity and c.sign)
    assert report["entries"] == len(ima.entries())
    if ima.tpm:
        assert report["pcrs_compared"] is True
        assert {bank: v["10"] for bank, v in report["replayed"].items()} == pcrs
    assert proc.returncode == 1
