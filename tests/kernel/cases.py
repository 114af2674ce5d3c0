"""The conformance cases run in one boot: what goes on the disk, the guest script, the results.

Digest cases: files enabled with ``FS_IOC_ENABLE_VERITY`` inside the VM; the kernel's
``FS_IOC_MEASURE_VERITY`` digest and ``FS_IOC_READ_VERITY_METADATA`` tree and descriptor are
written to ``/results`` for the host to compare with pyverity's bytes.

Signature cases: files signed on the host (v3, type 0x06) with an RSA, an ECDSA P-256 and an
ECDSA P-384 key, the certificates loaded into a ``_ima`` keyring, an appraise + measure policy
written, each file opened once; the kernel's verdicts, every measurement list it offers (one
pair per TPM bank since 6.10) and the TPM's PCR 10 of each bank are written to ``/results``.
What a kernel can do is :class:`KernelFacts` (from its version), not found out by skipping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest

__all__ = [
    "BANKS",
    "DAEMON_FILES",
    "DIGEST_CASES",
    "FUSE_FILES",
    "POLICY",
    "SIG_CASES",
    "SIG_KEYS",
    "DigestCase",
    "KernelFacts",
    "SigCase",
    "cert_name",
    "guest_script",
    "list_bank",
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


#: The keys of the signature cases: name -> ``pyverity key generate`` options.
SIG_KEYS: dict[str, tuple[str, ...]] = {
    "rsa": ("--type", "rsa"),
    "p256": ("--type", "ecdsa", "--curve", "P-256"),
    "p384": ("--type", "ecdsa", "--curve", "P-384"),
}


def cert_name(key: str) -> str:
    """The certificate's file name in ``sig/`` (the RSA one is ``cert.der``, as before ECDSA)."""
    return "cert.der" if key == "rsa" else f"cert-{key}.der"


@dataclass(frozen=True)
class SigCase:
    """One file of the appraisal run.

    ``sign``: which content the v3 signature covers: "self" (the file as enabled), "other"
    (another file's content), "original" (content before a tamper), "wrongkey" (signed by a
    key not in the keyring), "corrupt" (one signature byte flipped) or None (no attribute).
    ``key``: which of :data:`SIG_KEYS` signs it (a second key of the same kind for "wrongkey").
    """

    name: str
    size: int
    owner: int
    verity: bool
    sign: str | None
    expect_open: bool  # on a kernel that can verify signatures of ``key``
    algorithm: str = "sha256"
    salt: bytes = b""
    key: str = "rsa"

    @property
    def signature_valid(self) -> bool:
        """The signature verifies over the file's digest with a certificate in the keyring."""
        return self.sign == "self"

    def opens(self, facts: KernelFacts) -> bool:
        """The kernel's verdict: :attr:`expect_open` where it can verify ``key`` at all."""
        return self.expect_open and facts.verifies(self.key)


def _key_cases(key: str) -> tuple[SigCase, ...]:
    """The cases signed with ``key``: good ones (sha256 and sha512 trees) and each refusal."""
    p = f"{key}-"
    return (
        SigCase(p + "good", 7_000, 1000, verity=True, sign="self", expect_open=True, key=key),
        SigCase(p + "good512", 4_000, 1000, verity=True, sign="self", expect_open=True,
                algorithm="sha512", key=key),
        SigCase(p + "othersig", 13, 1000, verity=True, sign="other", expect_open=False, key=key),
        SigCase(p + "tampered", 8_000, 1000, verity=True, sign="original", expect_open=False,
                key=key),
        SigCase(p + "noverity", 2_000, 1000, verity=False, sign="self", expect_open=False, key=key),
        SigCase(p + "wrongkey", 3_100, 1000, verity=True, sign="wrongkey", expect_open=False,
                key=key),
        SigCase(p + "corrupt", 3_200, 1000, verity=True, sign="corrupt", expect_open=False,
                key=key),
    )  # fmt: skip


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
    *_key_cases("p256"),
    *_key_cases("p384"),
)

#: The TPM's PCR banks (swtpm_setup --pcr-banks), in the kernel's order of its lists.
BANKS = ("sha1", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class KernelFacts:
    """What the kernel of ``version`` does where the tests' expectations differ, from its
    version (Debian's configs; ``test_kernel_facts_match_its_config`` checks them against
    ``/boot/config-<version>`` where that is installed)."""

    version: str

    @property
    def release(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    @property
    def ecdsa(self) -> bool:
        """ECDSA signatures verify (CONFIG_CRYPTO_ECDSA: unset in Debian's 6.1, y in 6.12)."""
        return self.release >= (6, 12)

    def verifies(self, key: str) -> bool:
        """Signatures by a key of ``key`` (:data:`SIG_KEYS`) can be verified at all."""
        return key == "rsa" or self.ecdsa

    @property
    def per_bank_lists(self) -> bool:
        """One list pair per TPM bank, ``*_runtime_measurements_<bank>``, the unsuffixed names
        symlinks to the sha1 ones (mainline 6.10)."""
        return self.release >= (6, 10)

    @property
    def hashed_banks(self) -> tuple[str, ...]:
        """The banks IMA extends with their own hash of the template data. The others get
        the SHA-1 template digest zero-padded: their hash is a module (Debian's 6.1:
        CONFIG_CRYPTO_SHA512=m), which cannot be loaded when IMA starts, before /init."""
        return BANKS if self.release >= (6, 12) else ("sha1", "sha256")

    @property
    def fuse_verity_ioctls(self) -> bool:
        """FUSE forwards ``FS_IOC_MEASURE_VERITY`` and ``FS_IOC_ENABLE_VERITY`` to the server
        with their variable-length arguments (mainline 6.10); before, a server gets only the
        fixed-size structure and pyverity's answers ENOTTY."""
        return self.release >= (6, 10)

    def list_names(self) -> dict[str, str | None]:
        """Every list file of /sys/kernel/security/ima -> its symlink target (None: a file)."""
        if not self.per_bank_lists:
            return {f"{kind}_runtime_measurements": None for kind in ("binary", "ascii")}
        names: dict[str, str | None] = {}
        for kind in ("binary", "ascii"):
            names[f"{kind}_runtime_measurements"] = f"{kind}_runtime_measurements_sha1"
            names.update({f"{kind}_runtime_measurements_{b}": None for b in BANKS})
        return names

    def config(self) -> dict[str, str]:
        """The options of ``/boot/config-<version>`` these facts stand for."""
        return {
            "CONFIG_CRYPTO_ECDSA": "y" if self.ecdsa else "not set",
            "CONFIG_CRYPTO_SHA512": "y" if "sha512" in self.hashed_banks else "m",
        }


def list_bank(name: str) -> str:
    """The bank of a list file by its name (the unsuffixed names are sha1's)."""
    suffix = name.rsplit("_", 1)[1]
    return suffix if suffix in BANKS else "sha1"


POLICY = (
    "appraise func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity appraise_type=sigv3\n"
    "measure func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity template=ima-sigv2\n"
    "measure func=FILE_CHECK mask=MAY_READ fowner=1001 digest_type=verity template=ima-ngv2\n"
)


#: Files of the FUSE case (``/mnt/fuse/src``, see guest_fuse.py), name -> size; owned by root.
FUSE_FILES = {"protected": 100_001, "plain": 50_000}
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


def guest_script(tpm: bool, *, everything: bool = True) -> str:
    """``run.sh``: runs inside the VM with ``/mnt`` (the test disk) as working directory.

    ``everything``: the digest and backend cases too (the first kernel's boot); else only the
    signature and measurement cases (the filesystems boot checks digests on the other)."""
    lines = [
        "R=/mnt/results",
        "mkdir -p $R/digest $R/sigdesc $R/lists",
        'log() { echo "$*" >> $R/kernel.txt; }',
        "log kernel x $(uname -r)",
        "grep -q ecdsa /proc/crypto && log crypto ecdsa yes || log crypto ecdsa no",
    ]
    if everything:
        lines += _digest_script()
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
    # vhelper makes the _ima keyring with the RSA certificate; a second vhelper addkey would
    # replace that keyring, so the others go in with ``pyverity key import`` (one interpreter).
    certs = " ".join(f"/mnt/sig/{cert_name(key)}" for key in SIG_KEYS if key != "rsa")
    import_ec = f"{GUEST_PY} /mnt/guest_keys.py import %keyring:_ima {certs}"
    lines += [
        f"log addkey _ima $(vhelper addkey _ima /mnt/sig/{cert_name('rsa')})",
        "if [ -d /host/usr ]; then",
        f"  {HOST_ENTER}",
        f"  {import_ec} >> $R/kernel.txt 2> $R/import.err",
        # Before the policy (which covers only files of uid 1000 and 1001).
        f"  {GUEST_PY} /mnt/guest_fuse.py /mnt/fuse $R/fuse-mount.log > $R/fuse.out 2>&1",
        "  log fuse-guest x $?",
        f"  {HOST_LEAVE}",
        "else",
        "  log import x no-9p-host-root",
        "fi",
    ]
    lines += [
        # Debian's kernels have no CONFIG_IMA_READ_POLICY: the write status is all we can see.
        "cat /mnt/sig/policy > /sys/kernel/security/ima/policy; log policy $?",
    ]
    lines += [f"log open {s.name} $(vhelper read /mnt/sig/{s.name})" for s in SIG_CASES]
    lines += [
        # Every list the kernel offers (per bank since 6.10), symlinks followed and noted.
        "for f in /sys/kernel/security/ima/*_runtime_measurements*; do",
        "  n=${f##*/}",
        "  cp $f $R/lists/$n",
        "  [ -L $f ] && log symlink $n $(readlink $f)",
        "done",
        "cat /sys/kernel/security/ima/violations > $R/violations",
    ]
    if tpm:
        lines += [
            f"for b in {' '.join(BANKS)}; do",
            "  p=/sys/class/tpm/tpm0/pcr-$b/10",
            "  [ -r $p ] && cat $p > $R/pcr10-$b",
            "done",
        ]
    lines += ["dmesg > $R/dmesg", "log done"]
    return "\n".join(lines) + "\n"


def _digest_script() -> list[str]:
    lines = []
    for c in DIGEST_CASES:
        f, salt = f"/mnt/digest/{c.name}", _salt_arg(c.salt)
        lines += [
            f"log enable {c.name} $(vhelper enable {f} {c.number} {c.block_size} {salt})",
            f"log measure {c.name} $(vhelper measure {f})",
            f"log tree {c.name} $(vhelper readmeta {f} 1 $R/digest/{c.name}.tree)",
            f"log descriptor {c.name} $(vhelper readmeta {f} 2 $R/digest/{c.name}.desc)",
            f"log read {c.name} $(vhelper read {f})",
        ]
    return lines


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
