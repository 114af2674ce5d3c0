"""The main boot of the kernel suite, once per kernel of :data:`harness.KERNELS`: stage the
disk, boot, read the results back.

``kernel_run`` is parametrized over the kernels (ids "6.1", "6.12"): the signature and
measurement cases run on each, with expectations from :class:`cases.KernelFacts`.
``kernel61_run`` is the first kernel's boot (the same one), which also runs the digest and
backend cases (the filesystems boot of ``test_fs.py`` runs those on the second).

The boot is skipped (with its reason) only where it cannot run at all: qemu, the kernel image,
busybox, e2fsprogs or gcc missing. With ``CI=true`` that skip is a failure instead, so CI can
never go green without the kernel having judged pyverity's bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import harness
from tests.kernel.cases import (
    BACKEND_CLI,
    BACKEND_FILES,
    BANKS,
    DAEMON_FILES,
    DIGEST_CASES,
    FUSE_FILES,
    POLICY,
    SIG_CASES,
    SIG_KEYS,
    KernelFacts,
    cert_name,
    guest_script,
    parse_lines,
    payload,
)
from tests.support.polling import wait_until

_TIMING = pytest.StashKey[list[str]]()
_MAIN_RUNS = pytest.StashKey[dict[str, "KernelRun"]]()
#: The ids of :data:`harness.KERNELS` ("6.1", "6.12").
KERNEL_IDS = tuple(pattern.removesuffix(".*") for pattern in harness.KERNELS)


@dataclass
class KernelRun:
    kernel: harness.KernelImage
    stage: Path  # what the disk was made from (inputs)
    results: Path  # /results read back from the disk
    lines: dict[tuple[str, str], str]
    keys: Path  # pyverity key generate output (ima.key, ima.pem, ima.der): the RSA key
    tpm: bool
    boot: harness.VMRun
    everything: bool  # the digest and backend cases ran too (the first kernel)

    def text(self, name: str) -> str:
        return (self.results / name).read_text()

    @property
    def facts(self) -> KernelFacts:
        return KernelFacts(self.kernel.version)


def kernel_config(kernel: harness.KernelImage) -> str:
    """The kernel's ``/boot/config-<version>`` ("" where it is not installed)."""
    path = Path("/boot") / f"config-{kernel.version}"
    return "\n" + path.read_text() if path.exists() else ""


def config_option(config: str, name: str) -> str:
    """``y``, ``m`` or ``not set`` in a kernel config (:func:`kernel_config`)."""
    found = re.search(rf"^{name}=(\S+)$", config, re.MULTILINE)
    return found.group(1) if found else "not set"


def _need_vm(pattern: str | None = None, filesystems: tuple[str, ...] = ()) -> None:
    """Skip (fail under CI=true) unless kernel ``pattern`` (default: the suite's first) can be
    booted here with disks of ``filesystems``."""
    reason = harness.unavailable_reason(pattern, filesystems)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel suite cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"kernel suite: {reason}")


def boot_script(
    kernel: harness.KernelImage,
    initramfs: Path,
    stage: Path,
    base: Path,
    *,
    disk_mb: int,
    **vm: Any,
) -> tuple[harness.VMRun, Path]:
    """Put ``stage`` (with its ``run.sh``) on a disk of ``disk_mb`` MiB, boot it once
    (``vm``: :func:`harness.run_vm`'s options) and copy back ``/results`` to ``base/out``;
    fails the test when the script did not finish. The boot and the results directory."""
    disk = base / "disk.img"
    harness.make_disk(stage, disk, disk_mb)
    boot = harness.run_vm(kernel, initramfs, disk, **vm)
    if not boot.finished:
        pytest.fail(f"the VM did not finish its script; console tail:\n{boot.console[-4000:]}")
    results = harness.read_back(disk, "/results", base / "out")
    disk.unlink()
    return boot, results


def _pyverity(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"pyverity {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _make_key(keys: Path, subject: str, kind: str = "rsa") -> Path:
    """``pyverity key generate`` of ``kind`` (:data:`cases.SIG_KEYS`); returns the dir."""
    _pyverity("key", "generate", *SIG_KEYS[kind], "--out", str(keys), "--subject", subject)
    return keys


def stage_backend(stage: Path, keys: Path) -> None:
    """The inputs of ``guest_backend.py`` and ``guest_daemon.py`` (the ``kernel`` backend)."""
    (stage / "backend").mkdir()
    for name, size in BACKEND_FILES.items():
        (stage / "backend" / name).write_bytes(payload(name, size))
    shutil.copyfile(Path(__file__).with_name("guest_backend.py"), stage / "guest_backend.py")
    (stage / "backend-cli.json").write_text(json.dumps(BACKEND_CLI))
    (stage / "kd").mkdir()
    for name, size in DAEMON_FILES.items():
        (stage / "kd" / name).write_bytes(payload(name, size))
    shutil.copyfile(Path(__file__).with_name("guest_daemon.py"), stage / "guest_daemon.py")
    (stage / "kd-keys" / "keyring").mkdir(parents=True)
    for name in ("ima.key", "ima.der"):
        shutil.copyfile(keys / name, stage / "kd-keys" / name)
    shutil.copyfile(keys / "ima.der", stage / "kd-keys" / "keyring" / "ima.der")


def _stage(stage: Path, base: Path, everything: bool) -> Path:
    """Write the data files, their signatures (by ``pyverity sign``, one key of each of
    :data:`cases.SIG_KEYS` and a second one for "wrongkey"), certificates and policy; with
    ``everything`` the digest and backend inputs too. Returns the RSA key's directory."""
    keys = {k: _make_key(base / f"keys-{k}", f"pyverity kernel test {k}", k) for k in SIG_KEYS}
    other = {k: _make_key(base / f"other-{k}", f"pyverity wrong key {k}", k) for k in SIG_KEYS}
    if everything:
        (stage / "digest").mkdir()
        for c in DIGEST_CASES:
            (stage / "digest" / c.name).write_bytes(payload(c.name, c.size))
        stage_backend(stage, keys["rsa"])
    shutil.copyfile(Path(__file__).with_name("guest_keys.py"), stage / "guest_keys.py")
    (stage / "fuse" / "src").mkdir(parents=True)
    for name, size in FUSE_FILES.items():
        (stage / "fuse" / "src" / name).write_bytes(payload(name, size))
    shutil.copyfile(Path(__file__).with_name("guest_fuse.py"), stage / "guest_fuse.py")
    sig_dir = stage / "sig"
    sig_dir.mkdir()
    signing = base / "signing"
    signing.mkdir()
    other_content = payload(SIG_CASES[0].name, SIG_CASES[0].size)  # "good"
    groups: dict[tuple[Path, str, bytes], list[str]] = {}
    for s in SIG_CASES:
        data = payload(s.name, s.size)
        signed = {"other": other_content, "original": data}.get(s.sign or "", data)
        if s.sign == "original":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        (sig_dir / s.name).write_bytes(data)
        if s.sign is not None:
            (signing / s.name).write_bytes(signed)
            key = (other if s.sign == "wrongkey" else keys)[s.key]
            groups.setdefault((key, s.algorithm, s.salt), []).append(str(signing / s.name))
    for (key, alg, salt), paths in groups.items():
        salt_args = ["--salt", salt.hex()] if salt else []
        _pyverity(
            "sign", "--key", str(key / "ima.key"), "--cert", str(key / "ima.der"),
            "--hash-alg", alg, *salt_args, "--sigfile", *paths,
        )  # fmt: skip
    for s in SIG_CASES:
        if s.sign is None:
            continue
        value = (signing / f"{s.name}.sig").read_bytes()
        if s.sign == "corrupt":
            value = value[:-5] + bytes([value[-5] ^ 0x40]) + value[-4:]
        (sig_dir / f"{s.name}.ima").write_bytes(value)
    for k, d in keys.items():
        shutil.copyfile(d / "ima.der", sig_dir / cert_name(k))
    (sig_dir / "policy").write_text(POLICY)
    return keys["rsa"]


#: What a saved vector keeps of one run (see tests/vectors/kernel-6.1-ima-pyverity/README.md),
#: besides ``lists/`` and ``sig/``.
VECTOR_FILES = ("kernel.txt", "violations", *(f"pcr10-{bank}" for bank in BANKS))


def _save_vector(run: KernelRun, dest: Path) -> None:
    """The run's lists (the kernel's symlinks as symlinks), PCRs, lines and signed files."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in VECTOR_FILES:
        if (run.results / name).exists():
            shutil.copyfile(run.results / name, dest / name)
    (dest / "lists").mkdir(exist_ok=True)
    for path in sorted((run.results / "lists").iterdir()):
        target = dest / "lists" / path.name
        target.unlink(missing_ok=True)
        link = run.lines.get(("symlink", path.name))
        if link is not None:
            target.symlink_to(link)
        else:
            shutil.copyfile(path, target)
    shutil.copytree(run.stage / "sig", dest / "sig", dirs_exist_ok=True)


def _start_swtpm(state: Path) -> subprocess.Popen[bytes] | None:
    """A software TPM 2.0 with the banks of :data:`cases.BANKS`, or None (none installed, or
    ``PYVERITY_KERNEL_TPM=0``; under ``CI=true`` a missing swtpm fails)."""
    if os.environ.get("PYVERITY_KERNEL_TPM") == "0":
        return None
    if shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("swtpm/swtpm_setup is missing (Debian: swtpm, swtpm-tools)", pytrace=False)
        return None
    subprocess.run(
        ["swtpm_setup", "--tpm2", "--pcr-banks", ",".join(BANKS), "--tpmstate", str(state)],
        check=True, capture_output=True,
    )  # fmt: skip
    sock = state / "swtpm.sock"
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--terminate",
            "--tpmstate",
            f"dir={state}",
            "--ctrl",
            f"type=unixio,path={sock}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with contextlib.suppress(AssertionError):  # no socket in time: run without a TPM
        wait_until(
            lambda: sock.exists() or proc.poll() is not None, timeout=5, what="swtpm's socket"
        )
    if sock.exists():
        return proc
    proc.kill()
    proc.wait()
    return None


def _boot_main(request: pytest.FixtureRequest, pattern: str | None) -> KernelRun:
    """One main boot of the kernel ``pattern`` (:func:`harness.find_kernel`)."""
    _need_vm(pattern)
    started = time.monotonic()
    kernel = harness.find_kernel(pattern)
    assert kernel is not None
    everything = pattern is None  # the first kernel
    initramfs = harness.initramfs_for(kernel)
    tmp: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    base = tmp.mktemp(f"kernel-{kernel.version}")
    stage = base / "stage"
    stage.mkdir()
    keys = _stage(stage, base, everything)
    tpm_state = base / "tpm"
    tpm_state.mkdir()
    swtpm = _start_swtpm(tpm_state)
    (stage / "run.sh").write_text(guest_script(tpm=swtpm is not None, everything=everything))
    try:
        boot, results = boot_script(
            kernel,
            initramfs,
            stage,
            base,
            disk_mb=128 if everything else 64,
            tpm_socket=tpm_state / "swtpm.sock" if swtpm else None,
            share_host_root=True,
        )
    finally:
        if swtpm is not None:
            swtpm.terminate()
            swtpm.wait(timeout=10)
    run = KernelRun(
        kernel=kernel,
        stage=stage,
        results=results,
        lines=parse_lines((results / "kernel.txt").read_text()),
        keys=keys,
        tpm=swtpm is not None,
        boot=boot,
        everything=everything,
    )
    assert run.lines.get(("kernel", "x")) == kernel.version
    save = os.environ.get("PYVERITY_SAVE_KERNEL_VECTOR")
    if save:
        major, minor = run.facts.release
        _save_vector(run, Path(save) / f"kernel-{major}.{minor}-ima-pyverity")
    request.config.stash.setdefault(_TIMING, []).append(
        f"kernel suite: {kernel.version} booted and ran its script in {boot.seconds:.1f} s "
        f"(TPM: {'swtpm, ' + '/'.join(BANKS) if run.tpm else 'none'}); "
        f"set-up incl. boot {time.monotonic() - started:.1f} s"
    )
    return run


def _main_run(request: pytest.FixtureRequest, index: int) -> KernelRun:
    """The main boot of ``harness.KERNELS[index]``, once per session (both fixtures share it)."""
    runs = request.config.stash.setdefault(_MAIN_RUNS, {})
    key = KERNEL_IDS[index]
    if key not in runs:
        runs[key] = _boot_main(request, None if index == 0 else harness.KERNELS[index])
    return runs[key]


@pytest.fixture(scope="session", params=range(len(harness.KERNELS)), ids=KERNEL_IDS)
def kernel_run(request: pytest.FixtureRequest) -> KernelRun:
    """The main boot of each kernel: signature and measurement cases."""
    return _main_run(request, request.param)


@pytest.fixture(scope="session")
def kernel61_run(request: pytest.FixtureRequest) -> KernelRun:
    """The first kernel's main boot, which also ran the digest and backend cases."""
    run = _main_run(request, 0)
    assert run.everything
    return run


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for line in config.stash.get(_TIMING, []):
        terminalreporter.write_line(line)
