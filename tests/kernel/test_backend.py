"""The ``kernel`` storage backend and ``pyverity enable --kernel``, run inside the VM.

The guest runs the host's Python and pyverity (the host's / shared read-only over 9p, chrooted)
on files of the ext4 test disk; ``vhelper measure`` checks independently what the kernel did.
"""

from __future__ import annotations

import pytest

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from tests.kernel.cases import SALT11, expected_digest, parse_backend_output
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel


def _guest(run: KernelRun) -> dict[str, str]:
    assert run.lines[("backend-guest", "x")] == "0", run.text("backend/guest.out")
    return parse_backend_output(run.text("backend/guest.out"))


def test_enable_kernel_hands_the_file_to_fs_verity(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    assert guest["cli cli"] == "0"
    out = kernel61_run.text("backend/cli.out")
    expected = expected_digest("cli", 100_000)
    assert kernel61_run.lines[("backend-measure", "cli")] == expected
    hexdigest = expected.split()[1]
    assert f"Protected file '/mnt/backend/cli' (sha256:{hexdigest}) in security.verity" in out
    assert f"Enabled fs-verity on '/mnt/backend/cli' (sha256:{hexdigest}) in the kernel" in out
    # Read-only for good: appending fails.
    assert kernel61_run.lines[("backend-append", "cli")] == "1"


def test_enable_kernel_again_is_idempotent(kernel61_run: KernelRun) -> None:
    assert _guest(kernel61_run)["cli cli-again"] == "0"
    assert "Enabled fs-verity on '/mnt/backend/cli'" in kernel61_run.text("backend/cli-again.out")


def test_enable_kernel_uses_the_descriptor_parameters(kernel61_run: KernelRun) -> None:
    assert _guest(kernel61_run)["cli cli512"] == "0"
    params = TreeParams(hashalg.by_name("sha512"), 4096, SALT11)
    expected = expected_digest("cli512", 70_001, params)
    assert kernel61_run.lines[("backend-measure", "cli512")] == expected


def test_block_size_other_than_page_size_is_refused_clearly(kernel61_run: KernelRun) -> None:
    assert _guest(kernel61_run)["cli small"] == "1"
    out = kernel61_run.text("backend/small.out").splitlines()
    # The descriptor is written (the file is protected by pyverity), the kernel step refused.
    assert out[0].startswith("Protected file '/mnt/backend/small'")
    assert out[1] == (
        "ERROR: /mnt/backend/small: can't enable fs-verity on '/mnt/backend/small': kernel "
        f"{kernel61_run.kernel.version} accepts only block sizes 4096 on this filesystem"
        " (block size 4096), the descriptor uses 1024"
    )
    assert out[2].startswith("protect the file with --block-size 4096")
    assert kernel61_run.lines[("backend-measure", "small")] == "ERR 61 No data available"


def test_open_writer_is_refused_clearly(kernel61_run: KernelRun) -> None:
    assert _guest(kernel61_run)["cli busy"] == "1"
    out = kernel61_run.text("backend/busy.out")
    assert "FS_IOC_ENABLE_VERITY failed on '/mnt/backend/busy': the file is open for writing" in out
    assert kernel61_run.lines[("backend-measure", "busy")] == "ERR 61 No data available"


def test_library_refuses_a_file_that_is_no_longer_described(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    assert guest["changed-size"].startswith("FileChangedError: '/mnt/backend/changed' is 9004")
    assert guest["changed-verity"] == "None"
    assert guest["samesize"].startswith("IntegrityError: '/mnt/backend/samesize' does not match")
    assert guest["samesize-verity"] == "None"


def test_library_enable_read_tree_and_measure(kernel61_run: KernelRun) -> None:
    guest = _guest(kernel61_run)
    expected = expected_digest("lib", 300_000)
    alg_hex = "sha256:" + expected.split()[1]
    assert guest["lib-enable"] == f"ok {alg_hex}"
    assert guest["lib-again"] == f"ok {alg_hex}"
    assert guest["lib-tree"] == "ok True"  # read_tree == pyverity's build_tree, byte for byte
    assert guest["lib-other"].startswith("IntegrityError: '/mnt/backend/lib' already has fs-verity")
    assert guest["lib-measure"] == alg_hex
    assert kernel61_run.lines[("backend-measure", "lib")] == expected
