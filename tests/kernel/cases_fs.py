"""The cases of the filesystems boot: kernel 6.12 on ext4, btrfs and f2fs, sub-page blocks.

One boot of the newer kernel (:data:`tests.kernel.harness.KERNELS`, second entry) does all of
it: the test disk (``/dev/vda``, ext4) carries the inputs and ``/results``; one empty disk per
filesystem (``/dev/vdb`` ext4, ``/dev/vdc`` btrfs, ``/dev/vdd`` f2fs) is mounted at
``/mnt/fs/<fs>`` and gets copies of the inputs. On each filesystem:

- digest cases: 1 KiB, 2 KiB and 4 KiB blocks, sha256 and sha512, with and without salt,
  enabled with ``FS_IOC_ENABLE_VERITY`` (``vhelper``); the kernel's ``FS_IOC_MEASURE_VERITY``
  digest and ``FS_IOC_READ_VERITY_METADATA`` tree and descriptor go to ``/results/<fs>/`` for
  the host to compare with pyverity's bytes;
- ``pyverity enable --kernel`` and the library (``guest_backend.py``), and the daemon with
  ``--backend kernel`` (``guest_daemon.py``), run chrooted into the host's / as on 6.1.

Results are lines ``<what> <fs>/<case> <result>`` in ``/results/kernel.txt`` (see
:func:`tests.kernel.cases.parse_lines`).
"""

from __future__ import annotations

from tests.kernel.cases import (
    BACKEND_CLI,
    DAEMON_FILES,
    GUEST_PY,
    HOST_ENTER,
    HOST_LEAVE,
    SALT11,
    SALT32,
    DigestCase,
    MiB,
)

__all__ = ["BLOCK_CASES", "FILESYSTEMS", "device", "fs_guest_script"]

#: The filesystems of the boot, in the order of their disks (``/dev/vdb`` onwards).
FILESYSTEMS = ("ext4", "btrfs", "f2fs")
#: Size of each filesystem's disk (sparse): btrfs wants more than 100 MiB for its defaults.
FS_DISK_MB = 320
#: Largest file of a case: the three-level trees of small blocks, not 4 KiB ones (64 MiB).
_MAX_SIZE = 2 * MiB + 1


def device(fs: str) -> str:
    return "/dev/vd" + "bcdefgh"[FILESYSTEMS.index(fs)]


def _sizes(block_size: int, algorithm: str, salt: bytes) -> list[int]:
    """Empty (no salt only), one byte, one past a one-level tree, one past a two-level tree."""
    per_block = block_size // {"sha256": 32, "sha512": 64}[algorithm]
    sizes = [] if salt else [0]
    sizes += [1, block_size * per_block + 1]
    if block_size * per_block * per_block + 1 <= _MAX_SIZE:
        sizes.append(block_size * per_block * per_block + 1)
    else:  # a size that is not a whole number of blocks, with a two-level tree
        sizes.append(block_size * per_block * 3 + 123)
    return sizes


BLOCK_CASES: tuple[DigestCase, ...] = tuple(
    DigestCase(size, algorithm, salt, block_size)
    for block_size in (1024, 2048, 4096)
    for algorithm, salt_value in (("sha256", SALT11), ("sha512", SALT32))
    for salt in (b"", salt_value)
    for size in _sizes(block_size, algorithm, salt)
)


def _salt_arg(salt: bytes) -> str:
    return salt.hex() if salt else "-"


def _digest_lines(fs: str) -> list[str]:
    lines = [f"cp -r /mnt/digest /mnt/fs/{fs}/digest; log copy {fs}/digest $?"]
    for c in BLOCK_CASES:
        f, key, out = f"/mnt/fs/{fs}/digest/{c.name}", f"{fs}/{c.name}", f"$R/{fs}/{c.name}"
        salt = _salt_arg(c.salt)
        lines += [
            f"log enable {key} $(vhelper enable {f} {c.number} {c.block_size} {salt})",
            f"log measure {key} $(vhelper measure {f})",
            f"log tree {key} $(vhelper readmeta {f} 1 {out}.tree)",
            f"log descriptor {key} $(vhelper readmeta {f} 2 {out}.desc)",
            f"log read {key} $(vhelper read {f})",
        ]
    return lines


def _pyverity_lines(fs: str) -> list[str]:
    """``enable --kernel``, the library and the daemon on this filesystem (chrooted)."""
    d, r = f"/mnt/fs/{fs}", f"$R/{fs}"
    lines = [
        f"cp -r /mnt/backend {d}/backend && cp -r /mnt/kd {d}/kd; log copy {fs}/pyverity $?",
        f"mkdir -p /host{d} {r}/backend && mount --bind {d} /host{d}; log bind {fs}/x $?",
        (
            f"{GUEST_PY} /mnt/guest_backend.py {d}/backend {r}/backend /mnt/backend-cli.json"
            f" > {r}/backend.out 2>&1"
        ),
        f"log backend-guest {fs}/x $?",
        (
            f"{GUEST_PY} /mnt/guest_daemon.py {d}/kd /mnt/kd-keys /mnt/kd-state-{fs}"
            f" {r}/kd-daemon.log > {r}/kd.out 2>&1"
        ),
        f"log daemon-guest {fs}/x $?",
        f"umount /host{d}",
    ]
    names = sorted({name for name, _ in BACKEND_CLI.values()} | {"lib"})
    lines += [f"log backend-measure {fs}/{n} $(vhelper measure {d}/backend/{n})" for n in names]
    lines += [f"echo x >> {d}/backend/cli 2>/dev/null; log backend-append {fs}/cli $?"]
    lines += [f"log daemon-measure {fs}/{n} $(vhelper measure {d}/kd/{n})" for n in DAEMON_FILES]
    return lines


def fs_guest_script() -> str:
    """``run.sh`` of the filesystems boot (working directory ``/mnt``, the test disk)."""
    lines = [
        "R=/mnt/results",
        'log() { echo "$*" >> $R/kernel.txt; }',
        "log kernel x $(uname -r)",
        "[ -d /host/usr ]; log host-root x $?",
        HOST_ENTER,
    ]
    for fs in FILESYSTEMS:
        lines += [
            f"mkdir -p /mnt/fs/{fs} $R/{fs}",
            f"mount -t {fs} {device(fs)} /mnt/fs/{fs}; log mount {fs}/x $?",
            f"if grep -q ' /mnt/fs/{fs} {fs} ' /proc/mounts; then",
            *("  " + line for line in _digest_lines(fs) + _pyverity_lines(fs)),
            "  sync",
            f"  umount /mnt/fs/{fs}; log umount {fs}/x $?",
            "fi",
        ]
    lines += [HOST_LEAVE, "dmesg > $R/dmesg", "log done x"]
    return "\n".join(lines) + "\n"
