"""IMA appraisal of v3 (fs-verity) signatures by the real kernels: what opens, what is refused.

On each kernel of ``harness.KERNELS``: signatures by RSA, ECDSA P-256 and ECDSA P-384 keys
(``cases.SIG_KEYS``), each with the same refusals. Where a kernel cannot verify ECDSA at all
(Debian's 6.1: CONFIG_CRYPTO_ECDSA unset), ``pyverity key import`` says so in one line and every
ECDSA-signed file is refused; where it can (6.12), they must open exactly as the RSA ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.cases import SIG_CASES, SIG_KEYS, cert_name
from tests.kernel.conftest import KernelRun, config_option, kernel_config

pytestmark = pytest.mark.kernel


def test_keys_and_policy_loaded(kernel_run: KernelRun) -> None:
    assert kernel_run.lines[("policy", "0")] == ""  # the write was accepted
    # The certificate went into a `_ima` keyring: "<keyring serial> <key serial>".
    assert re.fullmatch(r"\d+ \d+", kernel_run.lines[("addkey", "_ima")])
    for key in SIG_KEYS:
        if key == "rsa":
            continue
        imported = kernel_run.lines.get(("import", key), kernel_run.text("import.err"))
        if kernel_run.facts.verifies(key):
            assert re.fullmatch(r"0 \d+", imported), imported
        else:
            assert imported.startswith("1 ERROR: "), imported
            assert "this kernel cannot use the certificate's key type" in imported


def test_kernel_facts_match_its_config(kernel_run: KernelRun) -> None:
    """The expectations of this suite come from :class:`cases.KernelFacts` (the version):
    they must be what the kernel's config says, where its /boot/config is installed."""
    config = kernel_config(kernel_run.kernel)
    assert config, f"no /boot/config-{kernel_run.kernel.version}"
    for option, value in kernel_run.facts.config().items():
        assert config_option(config, option) == value, option
    # and what the running kernel has: an ECDSA verifier in /proc/crypto
    assert kernel_run.lines[("crypto", "ecdsa")] == ("yes" if kernel_run.facts.ecdsa else "no")


def test_pyverity_verify_reaches_the_kernels_verdict(kernel_run: KernelRun, tmp_path: Path) -> None:
    """Each file as the kernel saw it, given to ``pyverity verify``.

    The kernel's state maps onto pyverity's attributes: ``security.ima`` -> ``user.ima``, and the
    file's fs-verity descriptor (read back with FS_IOC_READ_VERITY_METADATA) -> ``user.verity``.
    The kernel's policy requires a v3 signature (``appraise_type=sigv3``), so pyverity's verdict
    is "verified and signed". Two differences: ``noverity`` (a good signature on a file without
    fs-verity) is refused by the kernel, which has no digest for it, but accepted by pyverity,
    which builds the tree itself (by design); and a good ECDSA signature is accepted by
    pyverity where the kernel cannot verify ECDSA at all.
    """
    files = tmp_path / "files"
    files.mkdir()
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    for key in SIG_KEYS:
        shutil.copyfile(kernel_run.stage / "sig" / cert_name(key), keyring / cert_name(key))
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
        elif not case.verity:
            assert (kernel_allows, pyverity_allows) == (False, True), r
        elif not kernel_run.facts.verifies(case.key):
            assert not kernel_allows
            assert pyverity_allows == case.expect_open, r
        else:
            assert pyverity_allows == kernel_allows, r
    assert proc.returncode == 1  # some files fail
