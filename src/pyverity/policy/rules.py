"""The policy's vocabulary: actions, hooks, masks, flags, modes and one parsed :class:`Rule`.

Names and numbers follow the kernel's ``ima_policy.c`` (spec/ima.md §3.3); the flag bits are
ours, but each one has the meaning of the kernel flag of the same name.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from pyverity.policy.glob import Glob, compile_glob

__all__ = [
    "FILE_FUNCS",
    "MAY_APPEND",
    "MAY_EXEC",
    "MAY_READ",
    "MAY_WRITE",
    "Action",
    "Flag",
    "Func",
    "IdCondition",
    "Mode",
    "Rule",
]

MAY_EXEC = 0x1
MAY_WRITE = 0x2
MAY_READ = 0x4
MAY_APPEND = 0x8
MASKS = {
    "MAY_EXEC": MAY_EXEC,
    "MAY_WRITE": MAY_WRITE,
    "MAY_READ": MAY_READ,
    "MAY_APPEND": MAY_APPEND,
}


class Action(enum.Enum):
    MEASURE = "measure"
    DONT_MEASURE = "dont_measure"
    APPRAISE = "appraise"
    DONT_APPRAISE = "dont_appraise"
    AUDIT = "audit"
    HASH = "hash"
    DONT_HASH = "dont_hash"

    @property
    def family(self) -> str:
        """The pair this action decides: measure, appraise, audit or hash."""
        return self.value.removeprefix("dont_")


class Func(enum.Enum):
    """The kernel's hooks (``func=``). pyverity sees FILE_CHECK and MMAP_CHECK accesses."""

    FILE_CHECK = "FILE_CHECK"
    MMAP_CHECK = "MMAP_CHECK"
    MMAP_CHECK_REQPROT = "MMAP_CHECK_REQPROT"
    BPRM_CHECK = "BPRM_CHECK"
    CREDS_CHECK = "CREDS_CHECK"
    POST_SETATTR = "POST_SETATTR"
    MODULE_CHECK = "MODULE_CHECK"
    FIRMWARE_CHECK = "FIRMWARE_CHECK"
    KEXEC_KERNEL_CHECK = "KEXEC_KERNEL_CHECK"
    KEXEC_INITRAMFS_CHECK = "KEXEC_INITRAMFS_CHECK"
    POLICY_CHECK = "POLICY_CHECK"
    KEXEC_CMDLINE = "KEXEC_CMDLINE"
    KEY_CHECK = "KEY_CHECK"
    CRITICAL_DATA = "CRITICAL_DATA"
    SETXATTR_CHECK = "SETXATTR_CHECK"

    @classmethod
    def parse(cls, text: str) -> Func:
        """A ``func=`` value, with the kernel's aliases PATH_CHECK and FILE_MMAP."""
        text = {"PATH_CHECK": "FILE_CHECK", "FILE_MMAP": "MMAP_CHECK"}.get(text, text)
        return cls(text)


#: Hooks whose rules may carry file conditions and ``digest_type=verity`` (kernel: NONE..).
FILE_FUNCS = frozenset(
    {
        Func.FILE_CHECK,
        Func.MMAP_CHECK,
        Func.MMAP_CHECK_REQPROT,
        Func.BPRM_CHECK,
        Func.CREDS_CHECK,
        Func.POST_SETATTR,
        Func.FIRMWARE_CHECK,
        Func.POLICY_CHECK,
    }
)
#: Hooks that accept ``appraise_type=imasig|modsig``.
MODSIG_FUNCS = frozenset({Func.MODULE_CHECK, Func.KEXEC_KERNEL_CHECK, Func.KEXEC_INITRAMFS_CHECK})


class Flag(enum.IntFlag):
    """A rule's condition and option bits (``ima_rule_entry.flags``)."""

    FUNC = enum.auto()
    MASK = enum.auto()
    INMASK = enum.auto()
    FSMAGIC = enum.auto()
    FSNAME = enum.auto()
    FSUUID = enum.auto()
    UID = enum.auto()
    EUID = enum.auto()
    GID = enum.auto()
    EGID = enum.auto()
    FOWNER = enum.auto()
    FGROUP = enum.auto()
    PCR = enum.auto()
    KEYRINGS = enum.auto()
    LABEL = enum.auto()
    VALIDATE_ALGOS = enum.auto()
    DIGSIG_REQUIRED = enum.auto()
    PERMIT_DIRECTIO = enum.auto()
    MODSIG_ALLOWED = enum.auto()
    CHECK_BLACKLIST = enum.auto()
    VERITY_REQUIRED = enum.auto()
    # pyverity extensions
    PATH = enum.auto()
    KEYRING = enum.auto()


#: Flags carried from a matched rule into the decision (the kernel's IMA_NONACTION_FLAGS).
NONACTION_FLAGS = (
    Flag.DIGSIG_REQUIRED
    | Flag.PERMIT_DIRECTIO
    | Flag.MODSIG_ALLOWED
    | Flag.CHECK_BLACKLIST
    | Flag.VERITY_REQUIRED
)


NO_FLAGS = Flag(0)


class Mode(enum.Enum):
    """What an appraisal failure does (the kernel's ``ima_appraise=``)."""

    ENFORCE = "enforce"  # deny the access (EACCES)
    LOG = "log"  # allow, log the failure
    FIX = "fix"  # allow, log; the daemon may write missing descriptors of files it hashed
    OFF = "off"  # no appraisal at all

    @classmethod
    def parse(cls, text: str) -> Mode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            from pyverity.errors import UsageError

            raise UsageError(
                f"unknown appraise mode {text!r}", remedy="use one of enforce, log, fix, off"
            ) from None


@dataclass(frozen=True)
class IdCondition:
    """``uid=N``, ``fowner>N`` …: an operator and a decimal id."""

    op: str  # "=", "<" or ">"
    value: int

    def matches(self, actual: int) -> bool:
        if self.op == "<":
            return actual < self.value
        if self.op == ">":
            return actual > self.value
        return actual == self.value

    def __str__(self) -> str:
        return f"{self.op}{self.value}"


@dataclass(frozen=True)
class Rule:
    """One parsed policy line. ``flags`` says which conditions and options are present."""

    action: Action
    flags: Flag = NO_FLAGS
    func: Func | None = None
    mask: int = 0
    fsmagic: int = 0
    fsname: str | None = None
    fsuuid: uuid.UUID | None = None
    #: uid= or euid= (the kernel keeps one slot for both; ``flags`` says which).
    uid: IdCondition | None = None
    #: gid= or egid=.
    gid: IdCondition | None = None
    fowner: IdCondition | None = None
    fgroup: IdCondition | None = None
    pcr: int | None = None
    template: str | None = None
    appraise_algos: tuple[str, ...] = ()
    keyrings: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    #: pyverity: glob on the resolved path (advisory).
    path: str | None = None
    #: pyverity: certificate directory that appraises files matched by this rule.
    keyring: str | None = None
    #: Where the rule came from: ``source:line`` and the line's text.
    source: str = ""
    line: int = 0
    text: str = ""
    #: ``path`` compiled (see :mod:`pyverity.policy.glob`), once per rule.
    path_glob: Glob | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path_glob", compile_glob(self.path))

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else f"line {self.line}"

    @property
    def appraise_type(self) -> str | None:
        if not self.flags & Flag.DIGSIG_REQUIRED:
            return None
        if self.flags & Flag.VERITY_REQUIRED:
            return "sigv3"
        return "imasig|modsig" if self.flags & Flag.MODSIG_ALLOWED else "imasig"

    def __str__(self) -> str:
        return self.text or self.action.value
