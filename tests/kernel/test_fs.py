"""Kernel 6.12 on ext4, btrfs and f2fs: digests, trees and descriptors for 1, 2 and 4 KiB blocks,
``enable --kernel`` and the daemon's ``--backend kernel``, each checked against the kernel.

One boot (see :mod:`tests.kernel.cases_fs`): the kernel's answers come back on the ext4 test
disk, read by ``debugfs`` after qemu has exited.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from tests.kernel import harness
from tests.kernel.cases import (
    DAEMON_FILES,
    SALT11,
    DigestCase,
    daemon_digest,
    expected_digest,
    parse_backend_output,
    parse_lines,
    payload,
)
from tests.kernel.cases_fs import BLOCK_CASES, FILESYSTEMS, FS_DISK_MB, fs_guest_script
from tests.kernel.conftest import _TIMING, _make_key, _need_vm, boot_script, stage_backend

pytestmark = pytest.mark.kernel

KERNEL = harness.KERNELS[1]
#: Filesystems without FS_IOC_READ_VERITY_METADATA, and vhelper's line for it: btrfs (6.12)
#: wires up only FS_IOC_ENABLE_VERITY and FS_IOC_MEASURE_VERITY.
METADATA_UNREADABLE = {"btrfs": "ERR 25 Inappropriate ioctl for device"}


@dataclass
class FsRun:
    kernel: harness.KernelImage
    stage: Path
    results: Path
    lines: dict[tuple[str, str], str]

    def text(self, name: str) -> str:
        return (self.results / name).read_text()

    def line(self, what: str, fs: str, case: str = "x") -> str:
        return self.lines.get((what, f"{fs}/{case}"), "<missing>")


@pytest.fixture(scope="module")
def fs_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> FsRun:
    _need_vm(KERNEL, FILESYSTEMS)
    started = time.monotonic()
    kernel = harness.find_kernel(KERNEL)
    assert kernel is not None
    initramfs = harness.initramfs_for(kernel, FILESYSTEMS)
    base = tmp_path_factory.mktemp("fs")
    stage = base / "stage"
    (stage / "digest").mkdir(parents=True)
    for c in BLOCK_CASES:
        (stage / "digest" / c.name).write_bytes(payload(c.name, c.size))
    stage_backend(stage, _make_key(base / "keys", "pyverity fs test"))
    (stage / "run.sh").write_text(fs_guest_script())
    extra = [base / f"{fs}.img" for fs in FILESYSTEMS]
    for fs, image in zip(FILESYSTEMS, extra, strict=True):
        harness.make_fs_disk(fs, image, FS_DISK_MB)
    try:
        boot, results = boot_script(
            kernel,
            initramfs,
            stage,
            base,
            disk_mb=128,
            timeout=600,
            share_host_root=True,
            extra_disks=extra,
        )
    finally:
        for image in extra:
            image.unlink()
    request.config.stash.setdefault(_TIMING, []).append(
        f"filesystems case: {kernel.version} (ext4, btrfs, f2fs) booted and ran its script in"
        f" {boot.seconds:.1f} s; set-up incl. boot {time.monotonic() - started:.1f} s"
    )
    run = FsRun(kernel, stage, results, parse_lines((results / "kernel.txt").read_text()))
    assert run.lines.get(("kernel", "x")) == kernel.version
    assert run.lines.get(("host-root", "x")) == "0", "the host's / is not shared over 9p"
    return run


def _mounted(run: FsRun, fs: str) -> None:
    assert run.line("mount", fs) == "0", run.text("dmesg")[-3000:]


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_each_filesystem_mounts_with_verity(fs_run: FsRun, fs: str) -> None:
    _mounted(fs_run, fs)
    assert fs_run.line("copy", fs, "digest") == "0"
    assert fs_run.line("umount", fs) == "0"


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_kernel_digest_tree_and_descriptor_equal_pyverity(
    fs_run: FsRun, fs: str, case: DigestCase
) -> None:
    _mounted(fs_run, fs)
    params = TreeParams(hashalg.by_name(case.algorithm), case.block_size, case.salt)
    assert fs_run.line("enable", fs, case.name) == "OK"
    ours = build_tree(fs_run.stage / "digest" / case.name, params, keep_tree=True)
    # The digest is over the descriptor, which holds the root hash: equal digests mean equal
    # descriptors and root hashes; the tree and descriptor are compared too where readable.
    assert fs_run.line("measure", fs, case.name) == f"{case.number} {ours.file_digest().hex()}"
    if fs in METADATA_UNREADABLE:
        assert fs_run.line("tree", fs, case.name) == METADATA_UNREADABLE[fs]
        assert fs_run.line("descriptor", fs, case.name) == METADATA_UNREADABLE[fs]
    else:  # vhelper readmeta prints the bytes the kernel returned
        assert ours.tree is not None
        assert fs_run.line("tree", fs, case.name) == str(len(ours.tree))
        assert fs_run.line("descriptor", fs, case.name) == str(len(ours.descriptor.to_bytes()))
        results = fs_run.results / fs
        assert (results / f"{case.name}.desc").read_bytes() == ours.descriptor.to_bytes()
        assert (results / f"{case.name}.tree").read_bytes() == ours.tree
    # The kernel read the whole file back through its own verification.
    assert fs_run.line("read", fs, case.name) == str(case.size)


def test_the_cases_cover_every_block_size_algorithm_and_salt() -> None:
    combos = {(c.block_size, c.algorithm, bool(c.salt)) for c in BLOCK_CASES}
    assert combos == {
        (b, a, s) for b in (1024, 2048, 4096) for a in ("sha256", "sha512") for s in (False, True)
    }
    # Every block size has a file with a tree of two levels or more.
    for b in (1024, 2048, 4096):
        assert any(c.block_size == b and c.size > b * b // 64 for c in BLOCK_CASES)


# --- pyverity enable --kernel and the kernel backend's library calls ------------------------


def _backend(run: FsRun, fs: str) -> dict[str, str]:
    _mounted(run, fs)
    assert run.line("backend-guest", fs) == "0", run.text(f"{fs}/backend.out")
    return parse_backend_output(run.text(f"{fs}/backend.out"))


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_enable_kernel_hands_the_file_to_fs_verity(fs_run: FsRun, fs: str) -> None:
    guest = _backend(fs_run, fs)
    assert guest["cli cli"] == "0"
    assert guest["cli cli-again"] == "0"
    path = f"/mnt/fs/{fs}/backend/cli"
    expected = expected_digest("cli", 100_000)
    assert fs_run.line("backend-measure", fs, "cli") == expected
    out = fs_run.text(f"{fs}/backend/cli.out")
    assert f"Enabled fs-verity on '{path}' (sha256:{expected.split()[1]}) in the kernel" in out
    assert f"Enabled fs-verity on '{path}'" in fs_run.text(f"{fs}/backend/cli-again.out")
    assert fs_run.line("backend-append", fs, "cli") == "1"  # read-only for good


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_enable_kernel_uses_the_descriptor_parameters(fs_run: FsRun, fs: str) -> None:
    guest = _backend(fs_run, fs)
    assert guest["cli cli512"] == "0"
    params = TreeParams(hashalg.by_name("sha512"), 4096, SALT11)
    assert fs_run.line("backend-measure", fs, "cli512") == expected_digest("cli512", 70_001, params)


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_enable_kernel_with_1k_blocks_is_accepted_by_6_12(fs_run: FsRun, fs: str) -> None:
    """6.1 refuses a block size other than PAGE_SIZE; 6.3 and later take 1 KiB blocks."""
    guest = _backend(fs_run, fs)
    assert guest["cli small"] == "0", fs_run.text(f"{fs}/backend/small.out")
    expected = expected_digest("small", 4096, TreeParams(block_size=1024))
    assert fs_run.line("backend-measure", fs, "small") == expected
    assert "in the kernel" in fs_run.text(f"{fs}/backend/small.out")


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_open_writer_is_refused_clearly(fs_run: FsRun, fs: str) -> None:
    assert _backend(fs_run, fs)["cli busy"] == "1"
    out = fs_run.text(f"{fs}/backend/busy.out")
    assert f"FS_IOC_ENABLE_VERITY failed on '/mnt/fs/{fs}/backend/busy': the file is open" in out
    assert fs_run.line("backend-measure", fs, "busy") == "ERR 61 No data available"


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_library_enable_read_tree_and_refusals(fs_run: FsRun, fs: str) -> None:
    guest = _backend(fs_run, fs)
    d = f"/mnt/fs/{fs}/backend"
    assert guest["changed-size"].startswith(f"FileChangedError: '{d}/changed' is 9004")
    assert guest["changed-verity"] == "None"
    assert guest["samesize"].startswith(f"IntegrityError: '{d}/samesize' does not match")
    assert guest["samesize-verity"] == "None"
    alg_hex = "sha256:" + expected_digest("lib", 300_000).split()[1]
    assert guest["lib-enable"] == f"ok {alg_hex}"
    assert guest["lib-again"] == f"ok {alg_hex}"
    if fs in METADATA_UNREADABLE:  # said as such, not "does not support fs-verity"
        assert guest["lib-tree"].startswith(
            f"VerityUnsupportedError: FS_IOC_READ_VERITY_METADATA(descriptor) failed on '{d}/lib':"
            " this filesystem does not let fs-verity metadata be read back"
        )
    else:
        assert guest["lib-tree"] == "ok True"  # read_tree == pyverity's build_tree, byte for byte
    assert guest["lib-other"].startswith(f"IntegrityError: '{d}/lib' already has fs-verity")
    assert guest["lib-measure"] == alg_hex
    assert fs_run.line("backend-measure", fs, "lib") == expected_digest("lib", 300_000)


# --- the daemon with --backend kernel -------------------------------------------------------


def _daemon(run: FsRun, fs: str) -> dict[tuple[str, str], str]:
    _mounted(run, fs)
    log = run.text(f"{fs}/kd-daemon.log")
    assert run.line("daemon-guest", fs) == "0", run.text(f"{fs}/kd.out") + log
    return parse_lines(run.text(f"{fs}/kd.out"))


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_daemon_enables_fs_verity_on_every_file_it_proves(fs_run: FsRun, fs: str) -> None:
    guest = _daemon(fs_run, fs)
    log = fs_run.text(f"{fs}/kd-daemon.log")
    assert guest[("daemon", "exit")] == "0"
    # signed: a v3 signature alone; plain: descriptor and signature; small: 1 KiB blocks, which
    # 6.12 enables (6.1 falls back to the cache).
    for name, params in (("signed", None), ("plain", None), ("small", TreeParams(block_size=1024))):
        number, hexd = daemon_digest(name, params)
        assert guest[("state", name)] == "READY ", log
        assert guest[("digest", name)] == f"sha256:{hexd}"
        assert guest[("kernel", name)] == f"sha256:{hexd}"  # the kernel's own measurement
        assert fs_run.line("daemon-measure", fs, name) == f"{number} {hexd}"
        assert guest[("cache", name)] == "False"  # the kernel keeps the tree, not the cache
        want = hashlib.sha256(payload(name, DAEMON_FILES[name])).hexdigest()
        assert guest[("open", name)] == f"KernelVerified {want}"
    assert guest[("metrics", "builds_started")] == "3"


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_daemon_kernel_verity_before_is_ready_and_other_is_mismatch(fs_run: FsRun, fs: str) -> None:
    guest = _daemon(fs_run, fs)
    hexd = daemon_digest("pre")[1]
    assert guest[("state", "pre")] == "READY "
    assert guest[("kernel", "pre")] == f"sha256:{hexd}"
    log = fs_run.text(f"{fs}/kd-daemon.log")
    assert f"/mnt/fs/{fs}/kd/pre: fs-verity already enabled in the kernel: READY" in log
    want = hashlib.sha256(payload("pre", DAEMON_FILES["pre"])).hexdigest()
    assert guest[("open", "pre")] == f"KernelVerified {want}"
    number, other = daemon_digest("other", TreeParams(hashalg.by_name("sha512")))
    assert fs_run.line("daemon-measure", fs, "other") == f"{number} {other}"
    assert guest[("state", "other")] == (
        f"MISMATCH fs-verity is enabled in the kernel with digest sha512:{other}, not the declared"
        f" sha256:{daemon_digest('other')[1]} (the file is read-only now)"
    )
