"""The mount's measurement entries, as the kernel writes them (issue 10, item 2): under a
``measure`` rule without ``digest_type=verity``, ``ima-ng``/``ima-sig`` entries hold the
whole-file hash (the algorithm of the file's ``security.ima``, else sha256) and ``ima-sig``
the v2 or v3 signature, and ``evmctl ima_measurement --verify-sig`` replays the list and checks
the v2 signatures over those hashes; under ``digest_type=verity`` an ``ima-ngv2`` entry holds
``verity:`` + the digest ``fsverity digest`` computes, and unprotected files are not measured.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.format.ima import algo_by_name
from pyverity.fs.xattr import attr_name, get_attr
from pyverity.keys.generate import generate_key
from pyverity.keys.signer import load_signer
from pyverity.measure.log import read_list
from pyverity.protect.sign import imasign_file, sign_file
from tests.interop.fuse_helpers import NS, fuse_skip_reason, mounted, protect

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

CONTENT = {
    "classic": b"signed by evmctl's scheme (v2, sha256)\n" * 300,
    "classic512": b"a v2 signature over sha512\n" * 77,
    "verity": b"only a descriptor\n" * 900,
    "sigv3": b"a v3 signature over the fs-verity digest\n" * 40,
    "plain": b"no attribute at all\n",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it")
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    key = generate_key(tmp_path / "key", "rsa", bits=2048)
    signer = load_signer(str(key.key_path), cert=key.der_path)
    d = tmp_path / "src"
    d.mkdir()
    for name, data in CONTENT.items():
        (d / name).write_bytes(data)
    imasign_file(d / "classic", signer, algo_by_name("sha256"), namespace=NS)
    imasign_file(d / "classic512", signer, algo_by_name("sha512"), namespace=NS)
    protect(d / "verity", CONTENT["verity"])
    sign_file(d / "sigv3", signer, namespace=NS)
    (tmp_path / "cert.der").write_bytes(key.der_path.read_bytes())
    return d


def _measure_all(src: Path, mnt: Path, rule: str) -> Path:
    policy = mnt.parent / "policy"
    policy.write_text(rule)
    measurements = mnt.parent / "measurements"
    with mounted(src, mnt, "--policy", str(policy), "--log", str(measurements)):
        for name, data in CONTENT.items():
            assert (mnt / name).read_bytes() == data
            assert (mnt / name).read_bytes() == data  # measured once
    return measurements


def test_ima_sig_entries_hold_file_hashes_and_signatures(src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    measurements = _measure_all(src, mnt, "measure func=FILE_CHECK template=ima-sig\n")
    snap = read_list(measurements)
    entries = {Path(r.file_name).name: r for r in snap.records[1:]}
    assert sorted(entries) == sorted(CONTENT)  # every first open, each once
    for name, data in CONTENT.items():
        record = entries[name]
        assert record.template_name == "ima-sig"
        digest = record.digest
        assert digest is not None
        algo = "sha512" if name == "classic512" else "sha256"
        assert digest.to_bytes() == f"{algo}:".encode() + b"\0" + hashlib.new(algo, data).digest()
        raw = get_attr(src / name, attr_name(NS, "ima"))
        # The sig field is the whole security.ima value when it is a signature (v2 or v3).
        assert record.field("sig") == (raw if raw is not None and raw[0] in (3, 6) else b"")

    # pyverity checks the v2 signatures over those hashes; the v3 one is over the fs-verity
    # digest, which the entry does not hold: left unchecked, not failed
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(tmp_path / "cert.der", ring / "cert.der")
    checked = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "log", "verify", "--keyring", str(ring),
         str(measurements)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    evmctl = _tool("evmctl")
    assert snap.pcrs is not None
    args = []
    for bank in ("sha1", "sha256"):
        f = tmp_path / f"pcrs-{bank}"
        f.write_text(snap.pcrs.evmctl_text(bank))
        args += ["--pcrs", f"{bank},{f}"]
    # evmctl 1.4 checks v2 signatures only; the v3 entry is left out of this list's copy.
    v2_only = tmp_path / "v2-only"
    kept = [r for r in snap.records if Path(r.file_name).name != "sigv3"]
    v2_only.write_bytes(b"".join(r.to_bytes() for r in kept))
    res = subprocess.run(
        [evmctl, "-v", "ima_measurement", "--verify-sig", "--key", str(tmp_path / "cert.der"),
         str(v2_only)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{mnt}/classic: verification is OK" in out
    assert f"{mnt}/classic512: verification is OK" in out
    res = subprocess.run(
        [evmctl, "-v", "ima_measurement", *args, str(measurements)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Matched per TPM bank calculated digest(s)." in res.stdout + res.stderr


def test_verity_rule_entries_hold_fs_verity_digests(src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rule = "measure func=FILE_CHECK digest_type=verity template=ima-ngv2\n"
    measurements = _measure_all(src, mnt, rule)
    entries = {Path(r.file_name).name: r for r in read_list(measurements).records[1:]}
    assert sorted(entries) == ["sigv3", "verity"]  # no fs-verity digest: not measured
    fsverity = _tool("fsverity")
    for name, record in entries.items():
        digest = record.digest
        assert digest is not None
        out = subprocess.run(
            [fsverity, "digest", str(src / name)], capture_output=True, text=True, check=True
        ).stdout.split()[0]  # sha256:<hex>, from fsverity-utils
        assert record.ascii_line().split()[3] == f"verity:{out}"
    listed = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "log", "verify",
         str(measurements)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_ima_hash_option(src: Path, tmp_path: Path) -> None:
    """``--ima-hash sha512`` (the kernel's ``ima_hash=``): files whose security.ima names no
    algorithm are measured with sha512, signed ones with their signature's algorithm."""
    mnt = tmp_path / "mnt"
    policy = tmp_path / "policy"
    policy.write_text("measure func=FILE_CHECK template=ima-ng\n")
    measurements = tmp_path / "measurements"
    with mounted(src, mnt, "--policy", str(policy), "--log", str(measurements),
                 "--ima-hash", "sha512"):  # fmt: skip
        for name in CONTENT:
            (mnt / name).read_bytes()
    records = read_list(measurements).records
    assert records[0].digest is not None
    assert records[0].digest.algo == "sha512"  # the TPM-less boot_aggregate, as the kernel's
    algos = {Path(r.file_name).name: r.digest.algo for r in records[1:] if r.digest}
    assert algos == {"classic": "sha256", "classic512": "sha512", "verity": "sha512",
                     "sigv3": "sha256", "plain": "sha512"}  # fmt: skip
    bad = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "mount", "--ima-hash", "sha999", str(src),
         str(mnt)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("ERROR: --ima-hash: unknown hash algorithm: 'sha999'\n")
    assert "Traceback" not in bad.stderr
