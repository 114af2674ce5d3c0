"""Boot the distribution's kernels under qemu on an ext4 image with fs-verity, run a script.

Only distribution packages are used: the installed ``linux-image`` packages (``/boot/vmlinuz-*``
and their ``/lib/modules``: Debian 12's 6.1 and bookworm-backports' 6.12, see :data:`KERNELS`),
``qemu-system-x86_64``, ``busybox`` (static), ``mkfs.ext4``/``debugfs`` (e2fsprogs),
``mkfs.btrfs``/``mkfs.f2fs`` for the extra disks of :func:`make_fs_disk`, and ``gcc`` (for the
static ``vhelper`` that issues the fs-verity ioctls and ``add_key`` inside the VM). The
initramfs (busybox, the modules the kernel does not have built in, decompressed where the
kernel ships them as ``.ko.xz`` or ``.ko.gz``, ``vhelper``, ``init.sh``) is cached under
``~/.cache/pyverity-kernel/<version>-<key>/``.

The guest's work happens on the ext4 test disk: the host populates it with ``mkfs.ext4 -d``
(``run.sh`` plus data), the guest writes its results to ``/results`` on it, and the host reads
them back with ``debugfs -R rdump`` after qemu has exited. Extra disks (``run_vm(...,
extra_disks=[...])``) appear as ``/dev/vdb``, ``/dev/vdc``, ... in that order; a script mounts
them itself (btrfs and f2fs cannot be read by debugfs, so results always go to ``/results``).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KERNELS",
    "KernelImage",
    "VMRun",
    "find_kernel",
    "find_kernels",
    "initramfs_for",
    "make_disk",
    "make_fs_disk",
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
    "ecdsa_generic",  # built in on 6.12; a module where a kernel has one
    "fuse",  # /dev/fuse for the pyverity mount: a module in Debian's 6.1, built in on 6.12
)
#: Further modules for the extra disks of a filesystem (``initramfs_for(k, filesystems=...)``).
FS_MODULES = {"ext4": (), "btrfs": ("crc32c_generic", "btrfs"), "f2fs": ("crc32_generic", "f2fs")}
TOOLS = ("qemu-system-x86_64", "busybox", "mkfs.ext4", "debugfs", "gcc")
#: The extra filesystems' tools (:func:`make_fs_disk`): Debian's btrfs-progs and f2fs-tools.
FS_TOOLS = {"ext4": "mkfs.ext4", "btrfs": "mkfs.btrfs", "f2fs": "mkfs.f2fs"}
#: The kernels the suite boots, by version glob over ``/boot/vmlinuz-<version>``: Debian 12's
#: own and the one of bookworm-backports (``scripts/install`` installs both). The newest match
#: of each is booted; ``PYVERITY_KERNEL=<version>`` replaces the first (the suite's default).
KERNELS = ("6.1.*", "6.12.*")
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


def find_kernel(pattern: str | None = None) -> KernelImage | None:
    """The newest ``/boot/vmlinuz-<v>`` with modules whose version matches the glob
    ``pattern`` (default: the first of :data:`KERNELS`, or exactly ``PYVERITY_KERNEL``)."""
    if pattern is None:
        pattern = os.environ.get("PYVERITY_KERNEL") or KERNELS[0]
    candidates = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").is_file() and fnmatch.fnmatchcase(version, pattern):
            candidates.append(KernelImage(version, vmlinuz, modules))
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda k: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", k.version)],
    )


def find_kernels() -> list[tuple[str, KernelImage | None]]:
    """Each pattern of :data:`KERNELS` with its newest installed kernel (None: not installed)."""
    return [(pattern, find_kernel(pattern)) for pattern in KERNELS]


def unavailable_reason(pattern: str | None = None, filesystems: Sequence[str] = ()) -> str | None:
    """Why the VM (kernel ``pattern``, see :func:`find_kernel`, with extra disks of
    ``filesystems``) cannot be run here at all, or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [FS_TOOLS[f] for f in filesystems if shutil.which(FS_TOOLS[f]) is None]
    if missing:
        packages = "qemu-system-x86 busybox-static e2fsprogs btrfs-progs f2fs-tools gcc"
        return f"missing tools: {', '.join(missing)} (Debian packages: {packages})"
    kernel = find_kernel(pattern)
    if kernel is None:
        where = (
            "bookworm-backports' linux-image-amd64"
            if pattern == KERNELS[1]
            else ("linux-image-amd64")
        )
        return (
            f"no /boot/vmlinuz-{pattern or KERNELS[0]} with /lib/modules/<version>/modules.dep"
            f" (Debian: {where}; scripts/install installs it)"
        )
    if not os.access(kernel.vmlinuz, os.R_OK):
        return f"{kernel.vmlinuz} is not readable"
    return None


def _resolve_modules(kernel: KernelImage, wanted: Sequence[str]) -> list[Path]:
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

    for name in wanted:
        visit(name)
    return [kernel.modules / t for t in order]


def _module_bytes(path: Path) -> tuple[str, bytes]:
    """A module's file name and contents, decompressed (busybox's insmod loads plain ELF)."""
    if path.name.endswith(".ko.xz"):
        return path.name.removesuffix(".xz"), lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return path.name.removesuffix(".gz"), gzip.decompress(path.read_bytes())
    if not path.name.endswith(".ko"):
        raise ValueError(f"{path}: a module compression the harness cannot undo")
    return path.name, path.read_bytes()


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


def initramfs_for(kernel: KernelImage, filesystems: Sequence[str] = ()) -> Path:
    """Build (or reuse) the initramfs for ``kernel`` (with the modules of ``filesystems``, see
    :data:`FS_MODULES`); returns its path."""
    wanted = [*WANTED_MODULES, *(m for fs in filesystems for m in FS_MODULES[fs])]
    modules = _resolve_modules(kernel, wanted)
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
        loaded = [_module_bytes(m) for m in modules]
        entries += [
            ("init", x, INIT_SCRIPT.read_bytes()),
            ("bin/busybox", x, busybox.read_bytes()),
            ("bin/vhelper", x, helper.read_bytes()),
            ("modules/order", f, "".join(name + "\n" for name, _ in loaded).encode()),
        ]
        entries += [(f"modules/{name}", f, data) for name, data in loaded]
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


def make_fs_disk(fs: str, image: Path, size_mb: int) -> None:
    """An empty image of ``fs`` (ext4, btrfs or f2fs) with fs-verity available, 4 KiB blocks."""
    with image.open("wb") as f:
        f.truncate(size_mb << 20)
    options = {
        "ext4": ["-q", "-F", "-O", "verity", "-b", "4096"],
        "btrfs": ["-q", "-f"],  # fs-verity needs no feature flag on btrfs
        "f2fs": ["-q", "-f", "-O", "verity,extra_attr"],
    }[fs]
    subprocess.run([FS_TOOLS[fs], *options, str(image)], check=True, capture_output=True)


def run_vm(
    kernel: KernelImage,
    initramfs: Path,
    disk: Path,
    *,
    timeout: float = 300,
    tpm_socket: Path | None = None,
    share_host_root: bool = False,
    extra_disks: Sequence[Path] = (),
) -> VMRun:
    """Boot, let ``init.sh`` run ``/run.sh`` of ``disk``, and wait for the power-off.

    ``extra_disks`` are raw images attached after ``disk``: ``/dev/vdb``, ``/dev/vdc``, ..."""
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
    for extra in extra_disks:
        cmd += ["-drive", f"file={extra},format=raw,if=virtio,cache=unsafe"]
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
