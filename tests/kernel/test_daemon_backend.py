"""The daemon's ``--backend kernel`` and reads of kernel-verity files, run inside the VM.

``guest_daemon.py`` signs five files of ``/mnt/kd`` and runs ``pyverity daemon --backend kernel``
over them; ``vhelper measure`` witnesses what the kernel enforces afterwards.
"""

from __future__ import annotations

import hashlib

import pytest

from pyverity.daemon.kernelstore import FALLBACK
from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from tests.kernel.cases import DAEMON_FILES, daemon_digest, parse_lines, payload
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel


def _guest(run: KernelRun) -> dict[tuple[str, str], str]:
    assert run.lines[("daemon-guest", "x")] == "0", run.text("kd.out") + run.text("kd-daemon.log")
    return parse_lines(run.text("kd.out"))


def test_daemon_enables_fs_verity_after_proving_the_build(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    assert guest[("daemon", "exit")] == "0"
    for name in ("signed", "plain"):  # a v3 signature alone; a descriptor and a signature
        number, hexd = daemon_digest(name)
        assert guest[("state", name)] == "READY ", kernel61_run.text("kd-daemon.log")
        assert guest[("digest", name)] == f"sha256:{hexd}"
        assert guest[("kernel", name)] == f"sha256:{hexd}"  # the kernel's own measurement
        assert kernel61_run.lines[("daemon-measure", name)] == f"{number} {hexd}"
        assert guest[("cache", name)] == "False"  # the kernel keeps the tree, not the cache
    assert f"fs-verity enabled on /mnt/kd/signed (sha256:{daemon_digest('signed')[1]})" in (
        kernel61_run.text("kd-daemon.log")
    )


def test_file_already_kernel_verity_is_ready_without_a_build(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    hexd = daemon_digest("pre")[1]
    assert guest[("state", "pre")] == "READY "
    assert guest[("kernel", "pre")] == f"sha256:{hexd}"
    assert "/mnt/kd/pre: fs-verity already enabled in the kernel: READY" in kernel61_run.text(
        "kd-daemon.log"
    )
    assert "/mnt/kd/pre: building" not in kernel61_run.text("kd-daemon.log")
    # Built: signed, plain and small (the fallback); pre and other never were.
    assert guest[("metrics", "builds_started")] == "3"


def test_other_kernel_digest_is_mismatch(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    number, hexd = daemon_digest("other", TreeParams(hashalg.by_name("sha512")))
    assert kernel61_run.lines[("daemon-measure", "other")] == f"{number} {hexd}"
    assert guest[("state", "other")] == (
        f"MISMATCH fs-verity is enabled in the kernel with digest sha512:{hexd}, not the declared"
        f" sha256:{daemon_digest('other')[1]} (the file is read-only now)"
    )


def test_kernel_refusal_falls_back_to_the_cache(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    _, hexd = daemon_digest("small", TreeParams(block_size=1024))
    state = guest[("state", "small")]
    assert state.startswith(f"READY {FALLBACK}can't enable fs-verity on '/mnt/kd/small': kernel")
    assert state.endswith("accepts only block sizes 4096 on this filesystem (block size 4096),"
                          " the descriptor uses 1024")  # fmt: skip
    assert guest[("digest", "small")] == f"sha256:{hexd}"
    assert guest[("cache", "small")] == "True"
    assert guest[("kernel", "small")] == "None"
    assert kernel61_run.lines[("daemon-measure", "small")] == "ERR 61 No data available"


def test_reader_serves_kernel_verity_files_by_pread(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    for name in ("signed", "pre", "plain"):
        want = hashlib.sha256(payload(name, DAEMON_FILES[name])).hexdigest()
        assert guest[("open", name)] == f"KernelVerified {want}"
    # The fallback file is verified block by block against the cached tree.
    want = hashlib.sha256(payload("small", DAEMON_FILES["small"])).hexdigest()
    assert guest[("open", "small")] == f"BlockVerifier {want}"
