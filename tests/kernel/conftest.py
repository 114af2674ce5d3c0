"""One VM boot for the whole kernel suite: stage the disk, boot, read the results back.

The boot is skipped (with its reason) only where it cannot run at all: qemu, the kernel image,
busybox, e2fsprogs or gcc missing. With ``CI=true`` that skip is a failure instead, so CI can
never go green without the kernel having judged pyverity's bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
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
    DAEMON_FILES,
    DIGEST_CASES,
    POLICY,
    SIG_CASES,
    guest_script,
    parse_lines,
    payload,
)
from tests.support.polling import wait_until

_TIMING = pytest.StashKey[list[str]]()


@dataclass
class KernelRun:
    kernel: harness.KernelImage
    stage: Path  # what the disk was made from (inputs)
    results: Path  # /results read back from the disk
    lines: dict[tuple[str, str], str]
    keys: Path  # pyverity key generate output (ima.key, ima.pem, ima.der)
    tpm: bool
    boot: harness.VMRun

    def text(self, name: str) -> str:
        return (self.results / name).read_text()


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


def _make_key(keys: Path, subject: str) -> Path:
    """``pyverity key generate`` (RSA: Debian's 6.1 kernel has no ECDSA); returns the dir."""
    _pyverity("key", "generate", "--type", "rsa", "--out", str(keys), "--subject", subject)
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


def _stage(stage: Path, signing: Path, keys: Path, other: Path) -> None:
    """Write the data files, their signatures (by ``pyverity sign``), certificate, policy."""
    (stage / "digest").mkdir()
    for c in DIGEST_CASES:
        (stage / "digest" / c.name).write_bytes(payload(c.name, c.size))
    stage_backend(stage, keys)
    sig_dir = stage / "sig"
    sig_dir.mkdir()
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
            key = other if s.sign == "wrongkey" else keys
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
    shutil.copyfile(keys / "ima.der", sig_dir / "cert.der")
    (sig_dir / "policy").write_text(POLICY)


#: What a saved vector keeps of one run (see tests/vectors/kernel-6.1-ima-pyverity/README.md).
VECTOR_FILES = (
    "binary_runtime_measurements",
    "ascii_runtime_measurements",
    "kernel.txt",
    "violations",
    "pcr10-sha1",
    "pcr10-sha256",
)


def _save_vector(run: KernelRun, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in VECTOR_FILES:
        if (run.results / name).exists():
            shutil.copyfile(run.results / name, dest / name)
    shutil.copytree(run.stage / "sig", dest / "sig", dirs_exist_ok=True)


def _start_swtpm(state: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("swtpm") is None or os.environ.get("PYVERITY_KERNEL_TPM") == "0":
        return None
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


@pytest.fixture(scope="session")
def kernel_run(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> KernelRun:
    _need_vm()
    started = time.monotonic()
    kernel = harness.find_kernel()
    assert kernel is not None
    initramfs = harness.initramfs_for(kernel)
    base = tmp_path_factory.mktemp("kernel")
    stage = base / "stage"
    stage.mkdir()
    keys = _make_key(base / "keys", "pyverity kernel test")
    other = _make_key(base / "other-keys", "pyverity wrong key")
    _stage(stage, base / "signing", keys, other)
    tpm_state = base / "tpm"
    tpm_state.mkdir()
    swtpm = _start_swtpm(tpm_state)
    (stage / "run.sh").write_text(guest_script(tpm=swtpm is not None))
    try:
        boot, results = boot_script(
            kernel,
            initramfs,
            stage,
            base,
            disk_mb=128,
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
    )
    save = os.environ.get("PYVERITY_SAVE_KERNEL_VECTOR")
    if save:
        _save_vector(run, Path(save))
    request.config.stash.setdefault(_TIMING, []).append(
        f"kernel suite: {kernel.version} booted and ran its script in {boot.seconds:.1f} s "
        f"(TPM: {'swtpm' if run.tpm else 'none'}); "
        f"set-up incl. boot {time.monotonic() - started:.1f} s"
    )
    return run


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for line in config.stash.get(_TIMING, []):
        terminalreporter.write_line(line)
