"""The kernel's measurement list from the appraisal run: parsed, checked and replayed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest
from tests.kernel import imalist
from tests.kernel.cases import SIG_CASES
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel

_IMA_ALGO = {"sha256": 4, "sha512": 6}


def _entries(run: KernelRun) -> list[imalist.Entry]:
    return imalist.parse((run.results / "binary_runtime_measurements").read_bytes())


def test_every_template_digest_is_the_sha1_of_its_data(kernel_run: KernelRun) -> None:
    entries = _entries(kernel_run)
    assert entries[0].file_name == "boot_aggregate"
    for e in entries:
        assert e.pcr == 10
        if not e.violation:
            assert e.template_hash("sha1") == e.template_digest, e.file_name


def test_ascii_list_matches_binary(kernel_run: KernelRun) -> None:
    entries = _entries(kernel_run)
    lines = kernel_run.text("ascii_runtime_measurements").splitlines()
    assert len(lines) == len(entries)
    for e, line in zip(entries, lines, strict=True):
        pcr, digest, template, rest = line.split(" ", 3)
        alg, d = e.digest_field()
        assert (int(pcr), digest, template) == (10, e.template_digest.hex(), e.template)
        assert rest.startswith(f"{alg}:{d.hex()} {e.file_name}")


def test_one_record_per_verity_file_with_pyverity_digest_and_signature(
    kernel_run: KernelRun,
) -> None:
    by_name = {e.file_name: e for e in _entries(kernel_run)[1:]}
    for case in SIG_CASES:
        path = kernel_run.stage / "sig" / case.name
        if not case.verity:
            # A signed file without fs-verity under a verity rule: no digest, so no record.
            assert f"/mnt/sig/{case.name}" not in by_name
            continue
        e = by_name[f"/mnt/sig/{case.name}"]
        params = TreeParams(hashalg.by_name(case.algorithm), 4096, case.salt)
        ours = compute_digest(path, params)
        assert e.digest_field() == (f"verity:{case.algorithm}", ours.digest)
        if case.owner == 1001:
            assert e.template == "ima-ngv2"
            assert len(e.fields) == 2
        else:
            assert e.template == "ima-sigv2"
            assert e.fields[2] == kernel_run.signatures.get(case.name, b"")


def test_signatures_in_the_list_verify_exactly_where_the_kernel_allowed(
    kernel_run: KernelRun,
) -> None:
    cert = x509.load_der_x509_certificate(kernel_run.key.cert_der)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    keyid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest[-4:]
    checked = 0
    for e in _entries(kernel_run)[1:]:
        if e.template != "ima-sigv2" or not e.fields[2]:
            continue
        name = e.file_name.rsplit("/", 1)[1]
        allowed = not kernel_run.lines[("open", name)].startswith("ERR")
        kind, digest = e.digest_field()
        alg = kind.split(":")[1]
        sig = e.fields[2]
        h = hashlib.new(alg, bytes([0x06, _IMA_ALGO[alg]]) + digest).digest()
        ok = sig[:3] == bytes([0x06, 0x03, _IMA_ALGO[alg]]) and sig[3:7] == keyid
        if ok:
            chosen = hashes.SHA256() if alg == "sha256" else hashes.SHA512()
            try:
                public.verify(sig[9:], h, padding.PKCS1v15(), utils.Prehashed(chosen))
            except Exception:  # noqa: BLE001 - InvalidSignature: the verdict we compare
                ok = False
        assert ok == allowed, name
        checked += 1
    assert checked == 7


def test_replay_equals_the_tpm_pcr10(kernel_run: KernelRun) -> None:
    if not kernel_run.tpm:
        pytest.skip("swtpm is not installed: no TPM to compare with (Debian: swtpm)")
    entries = _entries(kernel_run)
    assert entries[0].digest_field()[1] != bytes(32)  # a real boot_aggregate
    for bank in ("sha1", "sha256"):
        pcr = kernel_run.results / f"pcr10-{bank}"
        if bank == "sha256" or pcr.exists():
            assert imalist.replay(entries, bank) == bytes.fromhex(pcr.read_text().strip()), bank


def test_evmctl_replays_the_kernel_list_against_the_tpm(
    kernel_run: KernelRun, tmp_path: Path
) -> None:
    if not kernel_run.tpm:
        pytest.skip("swtpm is not installed: no TPM values to give evmctl (Debian: swtpm)")
    if shutil.which("evmctl") is None:
        pytest.skip("evmctl is not installed (Debian: ima-evm-utils)")
    cmd = ["evmctl", "ima_measurement"]
    for bank in ("sha1", "sha256"):
        value = (kernel_run.results / f"pcr10-{bank}").read_text().strip().lower()
        zero = "0" * len(value)
        pcrs = tmp_path / bank
        pcrs.write_text("".join(f"PCR-{i:02d}: {value if i == 10 else zero}\n" for i in range(24)))
        cmd += ["--pcrs", f"{bank},{pcrs}"]
    cmd.append(str(kernel_run.results / "binary_runtime_measurements"))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Matched per TPM bank" in proc.stdout + proc.stderr
