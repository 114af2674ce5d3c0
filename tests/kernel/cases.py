"""The conformance cases run in one boot: what goes on the disk, the guest script, the results.

Digest cases: files enabled with ``FS_IOC_ENABLE_VERITY`` inside the VM; the kernel's
``FS_IOC_MEASURE_VERITY`` digest and ``FS_IOC_READ_VERITY_METADATA`` tree and descriptor are
written to ``/results`` for the host to compare with pyverity's bytes.

Signature cases: files signed on the host (v3, type 0x06), the certificate loaded into a
``_ima`` keyring, an appraise + measure policy written, each file opened once; the kernel's
verdicts and its measurement list are written to ``/results``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest

__all__ = [
    "DAEMON_FILES",
    "DIGEST_CASES",
    "POLICY",
    "SIG_CASES",
    "DigestCase",
    "SigCase",
    "guest_script",
    "parse_lines",
    "payload",
]

MiB = 1 << 20
#: The checkout, seen at the same path inside the VM (the host's /, shared over 9p).
CHECKOUT = Path(__file__).resolve().parents[2]
#: The host's venv interpreter (the guest runs it chrooted into the host's /, shared over 9p).
VENV_PYTHON = str(CHECKOUT / ".venv" / "bin" / "python")


@dataclass(frozen=True)
class DigestCase:
    size: int
    algorithm: str = "sha256"
    salt: bytes = b""
    block_size: int = 4096

    @property
    def name(self) -> str:
        return f"{self.algorithm}-b{self.block_size}-s{len(self.salt)}-n{self.size}"

    @property
    def number(self) -> int:
        return {"sha256": 1, "sha512": 2}[self.algorithm]

    @property
    def kernel_accepts(self) -> bool:
        """Kernel 6.1: the block size must equal PAGE_SIZE (spec/fsverity.md §1.2)."""
        return self.block_size == 4096


SALT11 = bytes.fromhex("00112233445566778899aa")
SALT32 = bytes(range(0x80, 0xA0))
# sha256, 4 KiB: 128 hashes per block, so 1 level up to 512 KiB, 2 up to 64 MiB.
# sha512, 4 KiB: 64 hashes per block, so 1 level up to 256 KiB, 2 up to 16 MiB, then 3.
DIGEST_CASES: tuple[DigestCase, ...] = (
    *(
        DigestCase(n)
        for n in (0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, MiB, 3 * MiB + 123)
    ),
    *(
        DigestCase(n, "sha512")
        for n in (0, 1, 4096, 64 * 4096, 64 * 4096 + 1, 64 * 64 * 4096 + 4097)
    ),
    DigestCase(1, salt=SALT11),
    DigestCase(MiB + 1, salt=SALT11),
    DigestCase(4097, "sha512", salt=SALT32),
    DigestCase(300_000, "sha512", salt=SALT11),
    # Refused by kernel 6.1 (block size != PAGE_SIZE): EINVAL.
    DigestCase(4097, block_size=1024),
    DigestCase(4097, block_size=65536),
)


def payload(name: str, size: int) -> bytes:
    """Deterministic pseudo-random content of one test file."""
    return random.Random(name).randbytes(size)


@dataclass(frozen=True)
class SigCase:
    """One file of the appraisal run.

    ``sign``: which content the v3 signature covers: "self" (the file as enabled), "other"
    (another file's content), "original" (content before a tamper), "wrongkey" (signed by a
    key not in the keyring), "corrupt" (one signature byte flipped) or None (no attribute).
    """

    name: str
    size: int
    owner: int
    verity: bool
    sign: str | None
    expect_open: bool
    algorithm: str = "sha256"
    salt: bytes = b""


SIG_CASES: tuple[SigCase, ...] = (
    SigCase("good", 20_000, 1000, verity=True, sign="self", expect_open=True),
    SigCase("good512", 5_000, 1000, verity=True, sign="self", expect_open=True, algorithm="sha512"),
    SigCase("goodsalt", 9_001, 1000, verity=True, sign="self", expect_open=True, salt=SALT11),
    SigCase("othersig", 12, 1000, verity=True, sign="other", expect_open=False),
    SigCase("tampered", 10_000, 1000, verity=True, sign="original", expect_open=False),
    SigCase("noverity", 5_000, 1000, verity=False, sign="self", expect_open=False),
    SigCase("unsigned", 6_000, 1000, verity=True, sign=None, expect_open=False),
    SigCase("wrongkey", 3_000, 1000, verity=True, sign="wrongkey", expect_open=False),
    SigCase("corrupt", 3_000, 1000, verity=True, sign="corrupt", expect_open=False),
    # Not appraised, measured with the ima-ngv2 template.
    SigCase("ngv2", 12_000, 1001, verity=True, sign=None, expect_open=True),
)

POLICY = (
    "appraise func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity appraise_type=sigv3\n"
    "measure func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity template=ima-sigv2\n"
    "measure func=FILE_CHECK mask=MAY_READ fowner=1001 digest_type=verity template=ima-ngv2\n"
)


#: Files of the ``kernel`` backend cases (``/mnt/backend``), name -> size; owned by root, so
#: the IMA policy (fowner 1000/1001) leaves them alone.
BACKEND_FILES = {
    "cli": 100_000,
    "cli512": 70_001,
    "small": 4096,
    "busy": 5000,
    "changed": 9000,
    "samesize": 9000,
    "lib": 300_000,
}
#: Files of the daemon's ``--backend kernel`` case (``/mnt/kd``, see guest_daemon.py).
DAEMON_FILES = {"signed": 200_000, "small": 50_000, "pre": 30_000, "other": 20_000, "plain": 90_001}
#: ``pyverity enable --kernel`` runs in the VM: name -> (file, extra options).
BACKEND_CLI: dict[str, tuple[str, tuple[str, ...]]] = {
    "cli": ("cli", ()),
    "cli-again": ("cli", ()),
    "cli512": ("cli512", ("--hash-alg", "sha512", "--salt", SALT11.hex())),
    "small": ("small", ("--block-size", "1024")),
    "busy": ("busy", ()),
}


#: Guest command prefix running the host's venv Python chrooted into the host's / (9p,
#: read-only). HOME and TMPDIR are a scratch directory on the test disk: a tmpfs over
#: /host/tmp would hide a checkout that lives under /tmp (CI may clone anywhere). The
#: checkout is on PYTHONPATH, so guest scripts import ``tests.support`` as host tests do.
GUEST_PY = (
    "chroot /host /usr/bin/env PYTHONDONTWRITEBYTECODE=1 HOME=/mnt/.scratch"
    f" TMPDIR=/mnt/.scratch PYTHONPATH={CHECKOUT} " + VENV_PYTHON
)
#: Guest lines before and after running ``GUEST_PY`` (the test disk appears at /mnt inside).
HOST_ENTER = (
    "for d in proc sys dev; do mount --bind /$d /host/$d; done;"
    " mount --bind /mnt /host/mnt; mkdir -p /mnt/.scratch"
)
HOST_LEAVE = "umount /host/mnt /host/dev /host/sys /host/proc"


def backend_script() -> list[str]:
    """Guest lines: chroot into the host's / (9p, read-only) and run pyverity there."""
    py = GUEST_PY
    out = " $R/backend/guest.out 2>&1"
    kd_log = "$R/kd-daemon.log"
    lines = [
        "if [ -d /host/usr ]; then",
        f"  {HOST_ENTER}",
        f"  {py} /mnt/guest_backend.py /mnt/backend $R/backend /mnt/backend-cli.json >{out}",
        "  log backend-guest x $?",
        f"  {py} /mnt/guest_daemon.py /mnt/kd /mnt/kd-keys /mnt/kd-state {kd_log} > $R/kd.out 2>&1",
        "  log daemon-guest x $?",
        f"  {HOST_LEAVE}",
        "else",
        "  log backend-guest x no-9p-host-root",
        "fi",
    ]
    names = sorted({name for name, _ in BACKEND_CLI.values()} | {"lib"})
    lines += [f"log backend-measure {n} $(vhelper measure /mnt/backend/{n})" for n in names]
    lines += ["echo x >> /mnt/backend/cli 2>/dev/null; log backend-append cli $?"]
    lines += [f"log daemon-measure {n} $(vhelper measure /mnt/kd/{n})" for n in DAEMON_FILES]
    return lines


def _salt_arg(salt: bytes) -> str:
    return salt.hex() if salt else "-"


def guest_script(tpm: bool) -> str:
    """``run.sh``: runs inside the VM with ``/mnt`` (the test disk) as working directory."""
    lines = [
        "R=/mnt/results",
        "mkdir -p $R/digest $R/sigdesc",
        'log() { echo "$*" >> $R/kernel.txt; }',
        # Digest cases.
    ]
    for c in DIGEST_CASES:
        f, salt = f"/mnt/digest/{c.name}", _salt_arg(c.salt)
        lines += [
            f"log enable {c.name} $(vhelper enable {f} {c.number} {c.block_size} {salt})",
            f"log measure {c.name} $(vhelper measure {f})",
            f"log tree {c.name} $(vhelper readmeta {f} 1 $R/digest/{c.name}.tree)",
            f"log descriptor {c.name} $(vhelper readmeta {f} 2 $R/digest/{c.name}.desc)",
            f"log read {c.name} $(vhelper read {f})",
        ]
    lines += ["mkdir -p $R/backend", *backend_script()]
    # Signature cases: owners, attributes, fs-verity, keyring, policy, then one open each.
    for s in SIG_CASES:
        f = f"/mnt/sig/{s.name}"
        lines.append(f"chown {s.owner} {f}")
        if s.sign is not None:
            lines.append(f"log setxattr {s.name} $(vhelper setxattr {f} security.ima {f}.ima)")
        if s.verity:
            number = {"sha256": 1, "sha512": 2}[s.algorithm]
            lines.append(
                f"log enable {s.name} $(vhelper enable {f} {number} 4096 {_salt_arg(s.salt)})"
            )
            lines.append(f"log measure {s.name} $(vhelper measure {f})")
            # Before the policy: this open is neither appraised nor measured.
            lines.append(f"log sigdesc {s.name} $(vhelper readmeta {f} 2 $R/sigdesc/{s.name})")
    lines += [
        "log addkey _ima $(vhelper addkey _ima /mnt/sig/cert.der)",
        # Debian 6.1 has no CONFIG_IMA_READ_POLICY: the write status is all we can see.
        "cat /mnt/sig/policy > /sys/kernel/security/ima/policy; log policy $?",
    ]
    lines += [f"log open {s.name} $(vhelper read /mnt/sig/{s.name})" for s in SIG_CASES]
    lines += [
        "cp /sys/kernel/security/ima/binary_runtime_measurements $R/",
        "cp /sys/kernel/security/ima/ascii_runtime_measurements $R/",
        "cat /sys/kernel/security/ima/violations > $R/violations",
    ]
    if tpm:
        lines += [
            "for b in sha1 sha256; do",
            "  p=/sys/class/tpm/tpm0/pcr-$b/10",
            "  [ -r $p ] && cat $p > $R/pcr10-$b",
            "done",
        ]
    lines += ["dmesg > $R/dmesg", "log done"]
    return "\n".join(lines) + "\n"


def parse_lines(text: str) -> dict[tuple[str, str], str]:
    """``kernel.txt`` lines ``<what> <case> <result...>`` keyed by (what, case)."""
    out: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        what, _, rest = line.partition(" ")
        case, _, result = rest.partition(" ")
        out[(what, case)] = result
    return out


def parse_backend_output(text: str) -> dict[str, str]:
    """``guest_backend.py``'s lines ``<key> <value>`` by key; ``cli <case> <value>`` lines
    are keyed ``cli <case>``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "cli":
            case, _, value = value.partition(" ")
            key = f"cli {case}"
        out[key] = value
    return out


def payload_digest(name: str, size: int, params: TreeParams | None = None) -> tuple[int, str]:
    """pyverity's fs-verity digest of :func:`payload`: (algorithm number, hex)."""
    d = compute_digest(BytesIO(payload(name, size)), params or TreeParams())
    return d.algorithm_number, d.hex()


def daemon_digest(name: str, params: TreeParams | None = None) -> tuple[int, str]:
    """:func:`payload_digest` of the daemon case ``name`` (:data:`DAEMON_FILES`)."""
    return payload_digest(name, DAEMON_FILES[name], params)


def expected_digest(name: str, size: int, params: TreeParams | None = None) -> str:
    """:func:`payload_digest` as the guest prints the kernel's: ``<algorithm number> <hex>``."""
    number, hexd = payload_digest(name, size, params)
    return f"{number} {hexd}"
