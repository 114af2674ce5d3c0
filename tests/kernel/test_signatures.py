"""IMA appraisal of v3 (fs-verity) signatures by the real kernel: what opens, what is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.cases import SIG_CASES
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel


def test_key_and_policy_loaded(kernel_run: KernelRun) -> None:
    assert kernel_run.lines[("policy", "0")] == ""  # the write was accepted
    # The certificate went into a `_ima` keyring: "<keyring serial> <key serial>".
    assert re.fullmatch(r"\d+ \d+", kernel_run.lines[("addkey", "_ima")])


def test_pyverity_verify_reaches_the_kernels_verdict(kernel_run: KernelRun, tmp_path: Path) -> None:
    """Each file as the kernel saw it, given to ``pyverity verify``.

    The kernel's state maps onto pyverity's attributes: ``security.ima`` -> ``user.ima``, and the
    file's fs-verity descriptor (read back with FS_IOC_READ_VERITY_METADATA) -> ``user.verity``.
    The kernel's policy requires a v3 signature (``appraise_type=sigv3``), so pyverity's verdict
    is "verified and signed". One difference is by design: ``noverity`` (a good signature on a
    file without fs-verity) is refused by the kernel, which has no digest for it, but accepted
    by pyverity, which builds the tree itself.
    """
    files = tmp_path / "files"
    files.mkdir()
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    shutil.copyfile(kernel_run.keys / "ima.der", keyring / "ima.der")
    for case in SIG_CASES:
        path = files / case.name
        shutil.copyfile(kernel_run.stage / "sig" / case.name, path)
        ima = kernel_run.stage / "sig" / f"{case.name}.ima"
        if ima.exists():
            os.setxattr(path, "user.ima", ima.read_bytes())
        if case.verity:
            descriptor = (kernel_run.results / "sigdesc" / case.name).read_bytes()
            os.setxattr(path, "user.verity", descriptor)
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "verify", "--xattr-user", "--keyring",
         str(keyring), "--json", *(str(files / c.name) for c in SIG_CASES)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    results = {Path(r["path"]).name: r for r in json.loads(proc.stdout)}
    for case in SIG_CASES:
        r = results[case.name]
        pyverity_allows = r["ok"] and r["kind"] == "verity-signed"
        kernel_allows = not kernel_run.lines[("open", case.name)].startswith("ERR")
        if case.owner != 1000:  # not appraised by the kernel's policy
            assert kernel_allows
            assert r["ok"], r
        elif case.name == "noverity":
            assert (kernel_allows, pyverity_allows) == (False, True), r
        else:
            assert pyverity_allows == kernel_allows, r
    assert proc.returncode == 1  # some files fail
