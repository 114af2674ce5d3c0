"""Evaluate a policy for one access: which measure rule and which appraise rule apply.

As the kernel's ``ima_match_policy`` (spec/ima.md §3.5): rules are walked in order; the first
rule that matches decides its family (measure/dont_measure, appraise/dont_appraise), later
rules of that family are skipped, so a ``measure`` rule never hides a later ``appraise`` rule.
The options of the deciding rules (``digest_type=verity``, ``appraise_type=``) are OR-ed into
the decision, as the kernel ORs the flags of every rule it takes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyverity.errors import InputError, PolicyError
from pyverity.fs.inputs import read_input
from pyverity.policy.parser import MAX_POLICY_SIZE, parse_rules
from pyverity.policy.rules import (
    MAY_READ,
    NO_FLAGS,
    NONACTION_FLAGS,
    Action,
    Flag,
    Func,
    Mode,
    Rule,
)

__all__ = ["AccessContext", "Decision", "Policy"]

DEFAULT_PCR = 10


@dataclass(frozen=True)
class AccessContext:
    """One access as the policy sees it. ``euid``/``gid``/``egid`` default to ``uid``/…"""

    uid: int
    fowner: int
    fgroup: int
    mask: int = MAY_READ
    func: Func = Func.FILE_CHECK
    euid: int | None = None
    gid: int | None = None
    egid: int | None = None
    fsmagic: int | None = None
    fsuuid: uuid.UUID | None = None
    fsname: str | None = None
    #: The resolved path (for ``path=``); ``None`` if unknown (``path=`` rules then don't match).
    path: str | None = None


#: Flag bits as plain ints, for :func:`rule_matches` (called once per rule per open).
_FUNC, _MASK, _INMASK = Flag.FUNC.value, Flag.MASK.value, Flag.INMASK.value
_FSMAGIC, _FSNAME, _FSUUID = Flag.FSMAGIC.value, Flag.FSNAME.value, Flag.FSUUID.value
_UID, _GID = Flag.UID.value, Flag.GID.value
_BUFFER_ONLY = (Flag.KEYRINGS | Flag.LABEL).value


def rule_matches(rule: Rule, ctx: AccessContext) -> bool:
    """``ima_match_rules`` for a file access."""
    f = rule.flags.value  # plain int: enum.Flag's '&' costs a microsecond
    post = ctx.func is Func.POST_SETATTR
    if f & _FUNC and rule.func is not ctx.func and not post:
        return False
    if f & _MASK and rule.mask != ctx.mask and not post:
        return False
    if f & _INMASK and not rule.mask & ctx.mask and not post:
        return False
    if f & _FSMAGIC and rule.fsmagic != ctx.fsmagic:
        return False
    if f & _FSNAME and rule.fsname != ctx.fsname:
        return False
    if f & _FSUUID and rule.fsuuid != ctx.fsuuid:
        return False
    if rule.uid is not None:
        who = ctx.uid if f & _UID else (ctx.uid if ctx.euid is None else ctx.euid)
        if not rule.uid.matches(who):
            return False
    if rule.gid is not None:
        real = ctx.uid if ctx.gid is None else ctx.gid
        who = real if f & _GID else (real if ctx.egid is None else ctx.egid)
        if not rule.gid.matches(who):
            return False
    if rule.fowner is not None and not rule.fowner.matches(ctx.fowner):
        return False
    if rule.fgroup is not None and not rule.fgroup.matches(ctx.fgroup):
        return False
    if f & _BUFFER_ONLY:
        return False  # buffer measurements: never a file access
    glob = rule.path_glob
    return glob is None or (ctx.path is not None and glob.matches(ctx.path))


@dataclass(frozen=True)
class Decision:
    """What the policy decides for one access."""

    #: The first rule of the measure family that matched (``measure`` or ``dont_measure``).
    measure_rule: Rule | None
    #: The first rule of the appraise family that matched.
    appraise_rule: Rule | None
    mode: Mode
    flags: Flag = NO_FLAGS
    default_template: str = "ima-ng"
    default_keyring: str | None = None

    @property
    def measure(self) -> bool:
        return self.measure_rule is not None and self.measure_rule.action is Action.MEASURE

    @property
    def appraise(self) -> bool:
        """Appraise this access (false when the mode is ``off``)."""
        return (
            self.mode is not Mode.OFF
            and self.appraise_rule is not None
            and self.appraise_rule.action is Action.APPRAISE
        )

    @property
    def enforce(self) -> bool:
        """An appraisal failure denies the access (EACCES)."""
        return self.appraise and self.mode is Mode.ENFORCE

    @property
    def fix(self) -> bool:
        """Mode ``fix``: a failure is allowed and logged; missing descriptors may be written."""
        return self.appraise and self.mode is Mode.FIX

    @property
    def verity(self) -> bool:
        """The digest is the fs-verity digest (``digest_type=verity``), not a content hash."""
        return bool(self.flags & Flag.VERITY_REQUIRED)

    @property
    def signature_required(self) -> bool:
        return bool(self.flags & Flag.DIGSIG_REQUIRED)

    @property
    def sigv3_required(self) -> bool:
        """``appraise_type=sigv3``: a type 0x06 v3 signature over the fs-verity digest."""
        return self.signature_required and self.verity

    @property
    def template(self) -> str:
        rule = self.measure_rule
        return rule.template if rule is not None and rule.template else self.default_template

    @property
    def pcr(self) -> int:
        rule = self.measure_rule
        return rule.pcr if rule is not None and rule.pcr is not None else DEFAULT_PCR

    @property
    def keyring(self) -> str | None:
        rule = self.appraise_rule
        return rule.keyring if rule is not None and rule.keyring else self.default_keyring

    @property
    def appraise_algos(self) -> tuple[str, ...]:
        return self.appraise_rule.appraise_algos if self.appraise_rule is not None else ()

    def as_dict(self) -> dict[str, object]:
        return {
            "measure": self.measure,
            "measure_rule": _rule_ref(self.measure_rule),
            "template": self.template if self.measure else None,
            "pcr": self.pcr if self.measure else None,
            "appraise": self.appraise,
            "appraise_rule": _rule_ref(self.appraise_rule),
            "mode": self.mode.value,
            "enforce": self.enforce,
            "digest_type": "verity" if self.verity else "hash",
            "appraise_type": self.appraise_rule.appraise_type if self.appraise_rule else None,
            "keyring": self.keyring if self.appraise else None,
        }


def _rule_ref(rule: Rule | None) -> dict[str, object] | None:
    if rule is None:
        return None
    return {"line": rule.line, "source": rule.source, "rule": rule.text}


@dataclass(frozen=True)
class Policy:
    """A parsed policy and its appraise mode.

    The mode is not part of the policy text (as the kernel's ``ima_appraise=`` is a boot
    parameter, not a rule): give it to :meth:`parse`/:meth:`load`, or with ``--appraise-mode``.
    """

    rules: tuple[Rule, ...]
    mode: Mode = Mode.ENFORCE
    source: str = "<policy>"
    default_template: str = "ima-ng"
    default_keyring: str | None = None
    uses: Flag = field(init=False, default=NO_FLAGS)

    def __post_init__(self) -> None:
        uses = Flag(0)
        for r in self.rules:
            uses |= r.flags
        object.__setattr__(self, "uses", uses)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        source: str = "<policy>",
        mode: Mode | str = Mode.ENFORCE,
        default_template: str = "ima-ng",
        default_keyring: str | None = None,
    ) -> Policy:
        if isinstance(mode, str):
            mode = Mode.parse(mode)
        return cls(
            tuple(parse_rules(text, source)), mode, source, default_template, default_keyring
        )

    @classmethod
    def builtin(cls, names: str, *, mode: Mode | str = Mode.ENFORCE) -> Policy:
        """The kernel's built-in policy ``names`` (``tcb``, ``appraise_tcb``, ``secure_boot``,
        ``critical_data``; several joined by ``|``), as ``ima_policy=`` loads them."""
        from pyverity.policy.builtin_policies import builtin_text

        return cls.parse(builtin_text(names), source=f"ima_policy={names}", mode=mode)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        mode: Mode | str = Mode.ENFORCE,
        default_template: str = "ima-ng",
        default_keyring: str | None = None,
    ) -> Policy:
        """Read and parse a policy file (bounded in size). Relative ``keyring=`` directories
        are taken relative to the policy file's directory."""
        p = Path(path)
        try:
            raw = read_input(p, "policy", MAX_POLICY_SIZE)
        except InputError as exc:
            raise PolicyError(str(exc)) from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{p}: policy is not UTF-8 text (byte {exc.start})") from None
        policy = cls.parse(
            text,
            source=str(p),
            mode=mode,
            default_template=default_template,
            default_keyring=default_keyring,
        )
        base = p.resolve().parent
        rules = tuple(
            _with_keyring(r, str(base / r.keyring))
            if r.keyring and not Path(r.keyring).is_absolute()
            else r
            for r in policy.rules
        )
        return cls(rules, policy.mode, policy.source, default_template, default_keyring)

    @property
    def needs_fs_identity(self) -> bool:
        """Some rule tests ``fsmagic=``/``fsuuid=``/``fsname=`` (the context must carry them)."""
        return bool(self.uses & (Flag.FSMAGIC | Flag.FSUUID | Flag.FSNAME))

    def matching_rules(self, ctx: AccessContext) -> list[Rule]:
        """Every rule whose conditions match (for display; decisions use :meth:`decide`)."""
        return [r for r in self.rules if rule_matches(r, ctx)]

    def decide(self, ctx: AccessContext) -> Decision:
        """The measure and appraise rules that apply to ``ctx`` (first match per family)."""
        decided: dict[str, Rule] = {}
        flags = Flag(0)
        for rule in self.rules:
            family = rule.action.family
            if family in decided or not rule_matches(rule, ctx):
                continue
            decided[family] = rule
            # audit/hash rules decide nothing here, but their flags count, as in the kernel
            flags |= rule.flags & NONACTION_FLAGS
            if len(decided) == 4:
                break
        measure_rule, appraise_rule = decided.get("measure"), decided.get("appraise")
        return Decision(
            measure_rule,
            appraise_rule,
            self.mode,
            flags,
            self.default_template,
            self.default_keyring,
        )

    def with_mode(self, mode: Mode) -> Policy:
        return Policy(self.rules, mode, self.source, self.default_template, self.default_keyring)


def _with_keyring(rule: Rule, keyring: str) -> Rule:
    from dataclasses import replace

    return replace(rule, keyring=keyring)


def evaluate(rules: Sequence[Rule], ctx: AccessContext, mode: Mode = Mode.ENFORCE) -> Decision:
    """:meth:`Policy.decide` over a bare rule list."""
    return Policy(tuple(rules), mode).decide(ctx)
