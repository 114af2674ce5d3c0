"""One appraisal run's measurement lists, from a boot or a kept vector, and the check that
``pyverity log verify`` replays each of them to its bank's PCR 10.

Used by ``tests/kernel/test_measurements.py`` (boots and the kept vectors) and
``tests/vectors/test_vectors.py`` (the kept vectors' per-bank replay, no VM).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.kernel import imalist
from tests.kernel.cases import BANKS, SIG_CASES, KernelFacts, SigCase, list_bank, parse_lines

__all__ = ["VECTORS", "ImaRun", "check_log_verify", "load_vector"]

VECTOR_ROOT = Path(__file__).resolve().parents[1] / "vectors"
#: The kept runs of the main boot (``PYVERITY_SAVE_KERNEL_VECTOR``, tests/vectors/README.md).
VECTORS = ("kernel-6.1-ima-pyverity", "kernel-6.12-ima-pyverity")
#: Kept before the guest logged ``uname -r`` (and before the ECDSA cases, the four-bank TPM
#: and ``lists/``): the version its README names. Other tests read its files where they are.
_EARLY = {"kernel-6.1-ima-pyverity": "6.1.0-56-amd64"}


@dataclass(frozen=True)
class ImaRun:
    """One appraisal run's outputs: ``results`` (``lists/``, PCRs, kernel.txt) and ``sig``
    (the signed files, their ``security.ima`` values, the certificates)."""

    results: Path
    sig: Path
    lines: dict[tuple[str, str], str]
    kept: bool = False  # a vector: the kernel's symlinks are symlinks in ``lists/``

    @property
    def facts(self) -> KernelFacts:
        return KernelFacts(self.lines[("kernel", "x")])

    @property
    def cases(self) -> list[SigCase]:
        """The signature cases of this run (an early vector has fewer)."""
        return [c for c in SIG_CASES if ("open", c.name) in self.lines]

    @property
    def tpm(self) -> bool:
        return (self.results / "pcr10-sha256").exists()

    def banks(self) -> list[str]:
        """The TPM banks whose PCR 10 this run has (an early vector: sha1 and sha256)."""
        return [b for b in BANKS if (self.results / f"pcr10-{b}").exists()]

    def pcr(self, bank: str) -> str:
        return (self.results / f"pcr10-{bank}").read_text().strip().lower()

    @property
    def _lists(self) -> Path:
        d = self.results / "lists"
        return d if d.is_dir() else self.results  # an early vector: beside kernel.txt

    def lists(self) -> list[str]:
        return sorted(p.name for p in self._lists.glob("*_runtime_measurements*"))

    def list_path(self, name: str) -> Path:
        return self._lists / name

    def entries(self, name: str = "binary_runtime_measurements") -> list[imalist.Entry]:
        size = hashlib.new(list_bank(name)).digest_size
        return imalist.parse(self.list_path(name).read_bytes(), size)

    def signature(self, name: str) -> bytes:
        path = self.sig / f"{name}.ima"
        return path.read_bytes() if path.exists() else b""

    def certificates(self) -> list[Path]:
        return sorted(self.sig.glob("cert*.der"))

    def refused(self, name: str) -> bool:
        return self.lines[("open", name)].startswith("ERR")


def load_vector(name: str) -> ImaRun:
    d = VECTOR_ROOT / name
    assert (d / "kernel.txt").exists(), f"{d} is missing"
    lines = parse_lines((d / "kernel.txt").read_text())
    if name in _EARLY:
        lines.setdefault(("kernel", "x"), _EARLY[name])
    return ImaRun(d, d / "sig", lines, kept=True)


def log_verify(run: ImaRun, name: str, tmp: Path, *, pcrs: bool = True) -> dict[str, Any]:
    """``pyverity log verify --json`` of list ``name`` with every certificate of the run,
    and (``pcrs``) its bank's PCR 10 from the TPM."""
    keyring = tmp / "keyring"
    keyring.mkdir(parents=True, exist_ok=True)
    for cert in run.certificates():
        shutil.copyfile(cert, keyring / cert.name)
    cmd = [sys.executable, "-m", "pyverity.cli", "log", "verify", "--json", "--keyring",
           str(keyring)]  # fmt: skip
    bank = list_bank(name)
    if pcrs:
        cmd += ["--pcr", f"{bank}:{run.pcr(bank)}"]
    proc = subprocess.run(
        [*cmd, str(run.list_path(name))], capture_output=True, text=True, check=False
    )
    assert proc.stdout.startswith("{"), f"{name}: {proc.stdout}{proc.stderr}"
    report: dict[str, Any] = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    return report


def check_log_verify(run: ImaRun, name: str, tmp: Path) -> None:
    """``pyverity log verify`` of list ``name``: its replay equals its bank's PCR 10, and a
    signature fails exactly where it does not verify (where the kernel can verify the key:
    exactly where it refused the open)."""
    bank = list_bank(name)
    assert run.tpm, "no TPM in this run"
    assert bank in run.facts.hashed_banks, f"{bank} is not extended with its own hash"
    report = log_verify(run, name, tmp)
    bad = set()
    for c in run.cases:
        if not (c.verity and c.sign):
            continue
        if not c.signature_valid:
            bad.add(f"/mnt/sig/{c.name}")
        if run.facts.verifies(c.key):
            assert run.refused(c.name) == (not c.signature_valid), c.name
    assert {p["kind"] for p in report["problems"]} == {"signature"}, (name, report["problems"])
    assert {p["name"] for p in report["problems"]} == bad, name
    assert report["signatures_checked"] == sum(1 for c in run.cases if c.verity and c.sign)
    assert report["entries"] == len(run.entries(name.replace("ascii_", "binary_", 1))), name
    assert report["pcrs_compared"] is True, name
    assert report["replayed"][bank]["10"] == run.pcr(bank), name
    assert report["returncode"] == 1  # the bad signatures
