"""Boot the distribution's kernel under qemu on an ext4 image with fs-verity, run a script.

Only distribution packages are used: the installed ``linux-image`` (``/boot/vmlinuz-*`` and its
``/lib/modules``), ``qemu-system-x86_64``, ``busybox`` (static), ``mkfs.ext4``/``debugfs``
(e2fsprogs) and ``gcc`` (for the static ``vhelper`` that issues the fs-verity ioctls and
``add_key`` inside the VM). The initramfs (busybox, the modules the kernel does not have built
in, ``vhelper``, ``init.sh``) is cached under ``~/.cache/pyverity-kernel/<version>-<key>/``.

The guest's work happens on the ext4 test disk: the host populates it with ``mkfs.ext4 -d``
(``run.sh`` plus data), the guest writes its results to ``/results`` on it, and the host reads
them back with ``debugfs -R rdump`` after qemu has exited.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KernelImage",
    "VMRun",
    "find_kernel",
    "initramfs_for",
    "make_disk",
    "read_back",
    "run_vm",
    "unavailable_reason",
]

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
HELPER_SOURCE = HERE / "vhelper.c"

#: Modules the test needs, by name; dependencies come from ``modules.dep``. Names the kernel
#: has built in (``modules.builtin``) or does not ship are skipped.
WANTED_MODULES = (
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_blk",
    "sha512_generic",
    "9p",
    "9pnet_virtio",
)
TOOLS = ("qemu-system-x86_64", "busybox", "mkfs.ext4", "debugfs", "gcc")
MEMORY_MB = 512
BEGIN, END = "@@PYVERITY-BEGIN", "@@PYVERITY-END"


@dataclass(frozen=True)
class KernelImage:
    version: str
    vmlinuz: Path
    modules: Path  # /lib/modules/<version>


@dataclass(frozen=True)
class VMRun:
    console: str
    seconds: float
    returncode: int

    @property
    def script_output(self) -> str:
        """The console between the init script's begin and end markers."""
        start = self.console.find(BEGIN)
        stop = self.console.find(END)
        if start < 0:
            return ""
        return self.console[start + len(BEGIN) : stop if stop > start else None]

    @property
    def finished(self) -> bool:
        return END in self.console


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0]


def find_kernel() -> KernelImage | None:
    """The newest ``/boot/vmlinuz-<v>`` with modules, or the one named by PYVERITY_KERNEL."""
    wanted = os.environ.get("PYVERITY_KERNEL")
    candidates = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").is_file() and (wanted is None or wanted == version):
            candidates.append(KernelImage(version, vmlinuz, modules))
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda k: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", k.version)],
    )


def unavailable_reason() -> str | None:
    """Why the VM cannot be run here at all, or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        packages = "qemu-system-x86 busybox-static e2fsprogs gcc"
        return f"missing tools: {', '.join(missing)} (Debian packages: {packages})"
    kernel = find_kernel()
    if kernel is None:
        return (
            "no /boot/vmlinuz-* with /lib/modules/<version>/modules.dep (Debian: linux-image-amd64)"
        )
    if not os.access(kernel.vmlinuz, os.R_OK):
        return f"{kernel.vmlinuz} is not readable"
    return None


def _resolve_modules(kernel: KernelImage) -> list[Path]:
    """Module files to load, dependencies first, each once."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[_module_name(target)] = (target, rest.split())
    builtin_file = kernel.modules / "modules.builtin"
    builtin = (
        {_module_name(x) for x in builtin_file.read_text().split()}
        if builtin_file.exists()
        else set()
    )
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin or name not in deps:
            return
        target, requires = deps[name]
        for dep in reversed(requires):  # modules.dep lists the deepest dependency last
            visit(_module_name(dep))
        if target not in order:
            order.append(target)

    for name in WANTED_MODULES:
        visit(name)
    return [kernel.modules / t for t in order]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyverity-kernel"


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One entry of a ``newc`` cpio archive (the format the kernel unpacks)."""
    encoded = name.encode() + b"\0"
    header = "070701" + "".join(
        f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    )
    out = header.encode() + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    parts = [_newc_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries)]
    parts.append(_newc_entry("TRAILER!!!", 0, b"", 0))
    return b"".join(parts)


def initramfs_for(kernel: KernelImage) -> Path:
    """Build (or reuse) the initramfs for ``kernel``; returns its path."""
    modules = _resolve_modules(kernel)
    busybox = Path(shutil.which("busybox") or "busybox").resolve()
    key = hashlib.sha256()
    for part in (INIT_SCRIPT, HELPER_SOURCE, busybox, *modules):
        key.update(str(part).encode() + b"\0" + part.read_bytes())
    cache = _cache_root() / f"{kernel.version}-{key.hexdigest()[:16]}"
    image = cache / "initramfs.cpio.gz"
    if image.exists():
        os.utime(image)  # marks it used (see _prune)
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        helper = Path(tmp) / "vhelper"
        subprocess.run(
            ["gcc", "-static", "-O2", "-Wall", "-o", str(helper), str(HELPER_SOURCE)],
            check=True,
            capture_output=True,
        )
        d, x, f = 0o040755, 0o100755, 0o100644
        entries: list[tuple[str, int, bytes]] = [
            (p, d, b"") for p in ("bin", "dev", "proc", "sys", "mnt", "tmp", "modules")
        ]
        entries += [
            ("init", x, INIT_SCRIPT.read_bytes()),
            ("bin/busybox", x, busybox.read_bytes()),
            ("bin/vhelper", x, helper.read_bytes()),
            ("modules/order", f, "".join(m.name + "\n" for m in modules).encode()),
        ]
        entries += [(f"modules/{m.name}", f, m.read_bytes()) for m in modules]
        partial = Path(tmp) / "initramfs.cpio.gz"
        partial.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))
        partial.replace(image)
    _prune(cache)
    return image


def _prune(keep: Path, max_age: float = 86400) -> None:
    """Remove other builds for the same kernel unused for a day (old harness versions)."""
    version = keep.name.rsplit("-", 1)[0]
    for other in keep.parent.glob(f"{version}-*"):
        image = other / "initramfs.cpio.gz"
        try:
            used = (image if image.exists() else other).stat().st_mtime
        except OSError:  # removed meanwhile by another run
            continue
        if other != keep and time.time() - used > max_age:
            shutil.rmtree(other, ignore_errors=True)


def make_disk(source: Path, image: Path, size_mb: int) -> None:
    """An ext4 image with the verity feature and 4 KiB blocks, populated from ``source``."""
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-O",
            "verity",
            "-b",
            "4096",
            "-d",
            str(source),
            str(image),
            f"{size_mb}M",
        ],
        check=True,
        capture_output=True,
    )


def run_vm(
    kernel: KernelImage,
    initramfs: Path,
    disk: Path,
    *,
    timeout: float = 300,
    tpm_socket: Path | None = None,
    share_host_root: bool = False,
) -> VMRun:
    """Boot, let ``init.sh`` run ``/run.sh`` of ``disk``, and wait for the power-off."""
    accel = os.environ.get("PYVERITY_KERNEL_ACCEL", "tcg")
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        str(MEMORY_MB),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initramfs),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 ima_appraise=enforce",
        "-drive",
        f"file={disk},format=raw,if=virtio,cache=unsafe",
    ]
    if share_host_root:
        # The host's / read-only as 9p tag "hostroot": init.sh mounts it at /host, so a
        # guest script can chroot there and run the host's Python and pyverity.
        cmd += [
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]
    if tpm_socket is not None:
        cmd += [
            "-chardev",
            f"socket,id=chrtpm,path={tpm_socket}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:  # qemu was killed; keep what it printed
        out, err, rc = e.stdout or b"", (e.stderr or b"") + b"\n[qemu timed out]\n", -1
    seconds = time.monotonic() - start
    console = out.decode(errors="replace") + err.decode(errors="replace")
    return VMRun(console.replace("\r\n", "\n"), seconds, rc)


def read_back(disk: Path, directory: str, dest: Path) -> Path:
    """Copy ``directory`` out of the ext4 image (after the VM is gone); returns its copy."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump {directory} {dest}", str(disk)],
        check=True,
        capture_output=True,
    )
    return dest / Path(directory).name
