"""The kernel's measurement lists from the appraisal run: parsed, checked and replayed.

Every check runs on the lists of this session's boots (marked ``kernel``: one per kernel of
``harness.KERNELS``) and on the kept ones in ``tests/vectors/kernel-<version>-ima-pyverity/``
(ordinary tests: no VM needed). Since 6.10 the kernel offers one list pair per TPM bank
(``*_runtime_measurements_<bank>``, the unsuffixed names symlinks to the sha1 ones); the TPM
has four banks (sha1, sha256, sha384, sha512), and every list is replayed to its bank's PCR 10.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest
from tests.kernel import imalist
from tests.kernel.cases import BANKS, SIG_CASES, list_bank
from tests.kernel.conftest import KERNEL_IDS, _main_run
from tests.kernel.imarun import VECTORS, ImaRun, check_log_verify, load_vector
from tests.support.needs import need

_IMA_ALGO = {"sha256": 4, "sha512": 6}
_BOOTS = [pytest.param(i, marks=pytest.mark.kernel, id=k) for i, k in enumerate(KERNEL_IDS)]
_SOURCES = [
    *(pytest.param(*b.values, marks=b.marks, id=f"kernel-{b.id}") for b in _BOOTS),
    *(pytest.param(v, id="vector-" + v.split("-")[1]) for v in VECTORS),
]


def _boot(request: pytest.FixtureRequest, index: int) -> ImaRun:
    run = _main_run(request, index)
    return ImaRun(run.results, run.stage / "sig", run.lines)


@pytest.fixture(params=_SOURCES)
def ima(request: pytest.FixtureRequest) -> ImaRun:
    if isinstance(request.param, int):
        return _boot(request, request.param)
    return load_vector(request.param)


@pytest.fixture(params=_BOOTS)
def booted(request: pytest.FixtureRequest) -> ImaRun:
    return _boot(request, request.param)


def _need_tpm(run: ImaRun) -> None:
    need("a TPM in this run (swtpm, unless PYVERITY_KERNEL_TPM=0)", run.tpm)


def test_every_list_file_the_kernel_offers_is_kept(ima: ImaRun) -> None:
    """Per-bank lists since 6.10, the unsuffixed names symlinks to the sha1 ones; before, one
    pair. A boot notes the kernel's symlinks; a kept vector keeps them as symlinks."""
    expected = ima.facts.list_names()
    assert ima.lists() == sorted(expected)
    for name, target in expected.items():
        path = ima.list_path(name)
        if ima.kept:
            assert (str(path.readlink()) if path.is_symlink() else None) == target, name
        else:
            assert ima.lines.get(("symlink", name)) == target, name
        if target is not None:
            assert path.read_bytes() == ima.list_path(target).read_bytes()


def test_every_template_digest_is_the_hash_of_its_data(ima: ImaRun) -> None:
    for name in ima.lists():
        if not name.startswith("binary_"):
            continue
        bank = list_bank(name)
        hashed = bank in ima.facts.hashed_banks
        entries = ima.entries(name)
        assert entries[0].file_name == "boot_aggregate"
        for e in entries:
            assert e.pcr == 10
            if not e.violation:
                assert imalist.extended(e, bank, hashed) == e.template_digest, (name, e.file_name)


def test_per_bank_lists_hold_the_same_records(ima: ImaRun) -> None:
    legacy = ima.entries()
    for name in ima.lists():
        if name.startswith("binary_"):
            assert [(e.template, e.data) for e in ima.entries(name)] == [
                (e.template, e.data) for e in legacy
            ], name


def test_ascii_list_matches_binary(ima: ImaRun) -> None:
    for name in ima.lists():
        if not name.startswith("ascii_"):
            continue
        entries = ima.entries(name.replace("ascii_", "binary_", 1))
        lines = ima.list_path(name).read_text().splitlines()
        assert len(lines) == len(entries), name
        for e, line in zip(entries, lines, strict=True):
            pcr, digest, template, rest = line.split(" ", 3)
            alg, d = e.digest_field()
            assert (int(pcr), digest, template) == (10, e.template_digest.hex(), e.template)
            assert rest.startswith(f"{alg}:{d.hex()} {e.file_name}"), name


def test_one_record_per_verity_file_with_pyverity_digest_and_signature(ima: ImaRun) -> None:
    by_name = {e.file_name: e for e in ima.entries()[1:]}
    for case in ima.cases:
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
    certs: dict[bytes, x509.Certificate], kind: str, digest: bytes, sig: bytes
) -> bool:
    """A v3 signature (spec/ima.md §2.3) over the record's digest, by RSA or ECDSA, checked
    with ``cryptography`` against the certificate its keyid names."""
    alg = kind.split(":")[1]
    cert = certs.get(sig[3:7])
    if sig[:3] != bytes([0x06, 0x03, _IMA_ALGO[alg]]) or cert is None:
        return False
    signed = hashlib.new(alg, bytes([0x06, _IMA_ALGO[alg]]) + digest).digest()
    chosen = utils.Prehashed(hashes.SHA256() if alg == "sha256" else hashes.SHA512())
    public = cert.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(sig[9:], signed, padding.PKCS1v15(), chosen)
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(sig[9:], signed, ec.ECDSA(chosen))
    except InvalidSignature:
        return False
    return True


def test_signatures_in_the_list_verify_exactly_where_the_kernel_allowed(ima: ImaRun) -> None:
    """Where the kernel cannot verify a key at all (ECDSA on Debian's 6.1), it refuses the
    open of a good signature too."""
    certs = {}
    for path in ima.certificates():
        cert = x509.load_der_x509_certificate(path.read_bytes())
        skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        certs[skid[-4:]] = cert
    assert len(certs) == len({c.key for c in ima.cases})
    by_name = {e.file_name: e for e in ima.entries()[1:]}
    signed = [c for c in ima.cases if c.verity and c.sign]
    for case in signed:
        e = by_name[f"/mnt/sig/{case.name}"]
        kind, digest = e.digest_field()
        verifies = _v3_verifies(certs, kind, digest, e.fields[2])
        assert verifies == case.signature_valid, case.name
        assert (not ima.refused(case.name)) == (verifies and ima.facts.verifies(case.key))
    assert sum(1 for e in by_name.values() if e.template == "ima-sigv2" and e.fields[2]) == len(
        signed
    )


def test_verdicts_are_the_expected_ones(ima: ImaRun) -> None:
    assert ima.cases == list(SIG_CASES) or ima.kept  # an early vector has only the RSA cases
    for case in ima.cases:
        verdict = ima.lines[("open", case.name)]
        opens = case.opens(ima.facts)
        assert verdict == (str(case.size) if opens else "ERR 13 Permission denied"), case.name


def test_replay_equals_the_tpm_pcr10_of_each_bank(ima: ImaRun) -> None:
    """The legacy (sha1) list's template data replayed to each of the four banks (a bank the
    kernel has no hash for was extended with the SHA-1 digest, zero-padded), and each
    per-bank list's own template digests to its bank."""
    _need_tpm(ima)
    entries = ima.entries()
    assert entries[0].digest_field()[1] != bytes(32)  # a real boot_aggregate
    assert ima.banks() == list(BANKS) or ima.kept  # an early vector has two
    for bank in ima.banks():
        hashed = bank in ima.facts.hashed_banks
        assert imalist.replay(entries, bank, hashed=hashed).hex() == ima.pcr(bank), bank
    for name in ima.lists():
        if name.startswith("binary_") and name.endswith(BANKS):
            bank = list_bank(name)
            assert imalist.replay(ima.entries(name), bank, stored=True).hex() == ima.pcr(bank), name


def test_evmctl_replays_the_kernel_list_against_the_tpm(ima: ImaRun, tmp_path: Path) -> None:
    """evmctl 1.4 reads the legacy list and computes each bank's template hash itself: given
    sha1 and sha256 (it takes at most two ``--pcrs`` files)."""
    _need_tpm(ima)
    need("evmctl (Debian: ima-evm-utils)", shutil.which("evmctl") is not None)
    cmd = ["evmctl", "ima_measurement"]
    for bank in ("sha1", "sha256"):
        value = ima.pcr(bank)
        zero = "0" * len(value)
        pcrs = tmp_path / bank
        pcrs.write_text("".join(f"PCR-{i:02d}: {value if i == 10 else zero}\n" for i in range(24)))
        cmd += ["--pcrs", f"{bank},{pcrs}"]
    cmd.append(str(ima.list_path("binary_runtime_measurements")))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Matched per TPM bank" in proc.stdout + proc.stderr


def test_pyverity_log_verify_replays_every_list_of_the_boot(booted: ImaRun, tmp_path: Path) -> None:
    """``pyverity log verify`` of each list file the kernel offered (binary and ascii, each
    bank, the unsuffixed names): its replay equals its bank's PCR 10, and a signature fails
    exactly where it does not verify. The kept vectors: tests/vectors/test_vectors.py."""
    _need_tpm(booted)
    for name in booted.lists():
        if list_bank(name) in booted.facts.hashed_banks:
            check_log_verify(booted, name, tmp_path / name)
