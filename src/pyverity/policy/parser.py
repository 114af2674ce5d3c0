"""Parse IMA policy text into :class:`~pyverity.policy.rules.Rule` objects, as the kernel does.

Token by token, in order, with the kernel's checks (``ima_parse_rule`` and
``ima_validate_rule``, spec/ima.md §3.3–§3.4): one action per rule; a repeated condition is an
error where the kernel makes it one; ``digest_type=verity`` must come before
``appraise_type=``; ``appraise_type=sigv3`` needs ``digest_type=verity`` and ``imasig`` refuses
it; ``template=`` must follow ``measure``; ``pcr=`` only on measure rules; signature options
only on appraise rules; each hook allows only its own conditions; a verity appraise rule must
require a signature. Errors are :class:`~pyverity.errors.PolicyError` naming
``source:line:column``.

Where pyverity departs (all documented in docs/policy.md):

- refused with a message: LSM conditions (``subj_*=``, ``obj_*=``) — pyverity cannot evaluate
  them, and ignoring them would widen the rule;
- accepted and ignored (they change nothing pyverity decides): the ``audit``, ``hash`` and
  ``dont_hash`` actions, ``permit_directio``, ``appraise_flag=check_blacklist`` (ignored by
  kernels since 6.6 too);
- accepted, but such rules never match a file access: rules for the kernel's own hooks
  (``MODULE_CHECK``, ``KEXEC_*``, ``KEY_CHECK`` with ``keyrings=``, ``CRITICAL_DATA`` with
  ``label=`` …);
- extensions: ``path=GLOB`` (a condition) and ``keyring=DIR`` (an appraise option).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyverity.errors import PolicyError
from pyverity.format.measurelist import NUM_PCRS, TEMPLATE_FIELDS, WRITABLE_TEMPLATES
from pyverity.policy.glob import compile_glob
from pyverity.policy.rules import (
    FILE_FUNCS,
    MASKS,
    MODSIG_FUNCS,
    NO_FLAGS,
    Action,
    Flag,
    Func,
    IdCondition,
    Rule,
)

__all__ = ["MAX_POLICY_SIZE", "MAX_RULES", "parse_rules"]

logger = logging.getLogger(__name__)

MAX_POLICY_SIZE = 1 << 20
MAX_RULES = 10_000
MAX_LINE = 8192
#: ``INVALID_PCR``: measured_pcrs is a 64-bit field.
_PCR_LIMIT = 64
_ID_LIMIT = 1 << 32
#: Hash names the kernel's ``appraise_algos=`` knows (``hash_algo_name``).
_KERNEL_HASHES = frozenset(
    {
        "md4",
        "md5",
        "sha1",
        "rmd160",
        "sha256",
        "sha384",
        "sha512",
        "sha224",
        "rmd128",
        "rmd256",
        "rmd320",
        "wp256",
        "wp384",
        "wp512",
        "tgr128",
        "tgr160",
        "tgr192",
        "sm3",
        "streebog256",
        "streebog512",
    }
)
_ACTIONS = {a.value: a for a in Action}
_IGNORED_ACTIONS = frozenset({Action.AUDIT, Action.HASH, Action.DONT_HASH})
_LSM_KEYS = frozenset({"subj_user", "subj_role", "subj_type", "obj_user", "obj_role", "obj_type"})
_ID_KEYS = {
    "uid": Flag.UID,
    "euid": Flag.EUID,
    "gid": Flag.GID,
    "egid": Flag.EGID,
    "fowner": Flag.FOWNER,
    "fgroup": Flag.FGROUP,
}
#: The conditions every file hook accepts (and KEXEC_CMDLINE, less the masks).
_ID_CONDS = (
    Flag.FUNC | Flag.MASK | Flag.INMASK | Flag.FSMAGIC | Flag.UID | Flag.FOWNER | Flag.FSUUID
    | Flag.EUID | Flag.PCR | Flag.FSNAME | Flag.GID | Flag.EGID | Flag.FGROUP
)  # fmt: skip
_COMMON_CONDS = (
    _ID_CONDS | Flag.DIGSIG_REQUIRED | Flag.PERMIT_DIRECTIO | Flag.VALIDATE_ALGOS | Flag.PATH
    | Flag.KEYRING
)  # fmt: skip


class _RuleError(Exception):
    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.remedy = remedy


@dataclass
class _Draft:
    action: Action | None = None
    fields: dict[str, object] = field(default_factory=dict)
    flags: Flag = NO_FLAGS


def _kernel_uint(text: str, base: int) -> int:
    """``kstrtoul``: optional ``+``, digits (``0x`` allowed in base 16), nothing else."""
    body = text[1:] if text.startswith("+") else text
    if base == 16 and body[:2].lower() == "0x":
        body = body[2:]
    if not body or not all(
        c in "0123456789abcdefABCDEF"[: base + (6 if base == 16 else 0)] for c in body
    ):
        raise _RuleError(f"{text!r} is not a {'hexadecimal' if base == 16 else 'decimal'} number")
    return int(body, base)


def _set_action(d: _Draft, action: Action) -> None:
    if d.action is not None:
        raise _RuleError(f"a rule has one action; '{action.value}' follows '{d.action.value}'")
    d.action = action


def _once(d: _Draft, name: str, value: object) -> None:
    if name in d.fields:
        raise _RuleError(f"{name} given twice in one rule")
    d.fields[name] = value


def _token(d: _Draft, tok: str) -> None:
    if tok in _ACTIONS:
        _set_action(d, _ACTIONS[tok])
        return
    if tok == "permit_directio":
        d.flags |= Flag.PERMIT_DIRECTIO
        return
    for op in ("=", "<", ">"):
        key, sep, value = tok.partition(op)
        if sep and key in _ID_KEYS:
            _id_condition(d, key, op, value)
            return
    key, sep, value = tok.partition("=")
    if not sep:
        raise _RuleError(f"unknown keyword {tok!r}")
    if key in _LSM_KEYS:
        raise _RuleError(
            f"{key}= (LSM labels) cannot be evaluated by pyverity",
            remedy="remove the condition, or use path=/fowner= to select the files",
        )
    handler = _HANDLERS.get(key)
    if handler is None:
        raise _RuleError(f"unknown keyword {key!r}")
    if not value:
        raise _RuleError(f"{key}= needs a value")  # the kernel's %s never matches ""
    handler(d, value)


def _id_condition(d: _Draft, key: str, op: str, value: str) -> None:
    slot = {"euid": "uid", "egid": "gid"}.get(key, key)
    number = _kernel_uint(value, 10)
    if number >= _ID_LIMIT - 1:
        raise _RuleError(f"{key}: {value} is not a valid id")
    if slot in d.fields:
        raise _RuleError(f"{key}: a rule has one of {slot}=/e{slot}= (one condition each)")
    d.fields[slot] = IdCondition(op, number)
    d.flags |= _ID_KEYS[key]


def _func(d: _Draft, value: str) -> None:
    try:
        func = Func.parse(value)
    except ValueError:
        raise _RuleError(f"unknown func {value!r}") from None
    _once(d, "func", func)
    d.flags |= Flag.FUNC


def _mask(d: _Draft, value: str) -> None:
    name = value.removeprefix("^")
    if name not in MASKS:
        raise _RuleError(
            f"unknown mask {value!r}",
            remedy="use MAY_EXEC, MAY_WRITE, MAY_READ or "
            "MAY_APPEND, with ^ for 'any of these bits'",
        )
    _once(d, "mask", MASKS[name])
    d.flags |= Flag.INMASK if value.startswith("^") else Flag.MASK


def _fsmagic(d: _Draft, value: str) -> None:
    _once(d, "fsmagic", _kernel_uint(value, 16))
    d.flags |= Flag.FSMAGIC


def _fsname(d: _Draft, value: str) -> None:
    d.fields["fsname"] = value  # the kernel lets a later fsname= replace an earlier one
    d.flags |= Flag.FSNAME


def _fsuuid(d: _Draft, value: str) -> None:
    if len(value) != 36:
        raise _RuleError(f"fsuuid {value!r} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise _RuleError(f"fsuuid {value!r} is not a UUID") from None
    _once(d, "fsuuid", parsed)
    d.flags |= Flag.FSUUID


def _list_option(flag: Flag, name: str, slot: str) -> Callable[[_Draft, str], None]:
    def handler(d: _Draft, value: str) -> None:
        items = tuple(value.split("|"))
        if not all(items):
            raise _RuleError(f"{name}= has an empty item")
        _once(d, slot, items)
        d.flags |= flag

    return handler


def _digest_type(d: _Draft, value: str) -> None:
    if d.flags & Flag.DIGSIG_REQUIRED:
        raise _RuleError("digest_type= must come before appraise_type=")
    if value != "verity":
        raise _RuleError(f"unknown digest_type {value!r} (only 'verity')")
    d.flags |= Flag.VERITY_REQUIRED


def _appraise_type(d: _Draft, value: str) -> None:
    verity = bool(d.flags & Flag.VERITY_REQUIRED)
    if value == "sigv3":
        if not verity:
            raise _RuleError("appraise_type=sigv3 needs digest_type=verity before it")
        d.flags |= Flag.DIGSIG_REQUIRED
    elif value in ("imasig", "imasig|modsig"):
        if verity:
            raise _RuleError(
                f"appraise_type={value} cannot be used with digest_type=verity",
                remedy="use appraise_type=sigv3 for fs-verity signatures",
            )
        d.flags |= Flag.DIGSIG_REQUIRED
        if value == "imasig|modsig":
            d.flags |= Flag.MODSIG_ALLOWED
    else:
        raise _RuleError(f"unknown appraise_type {value!r} (sigv3, imasig or imasig|modsig)")


def _appraise_flag(d: _Draft, value: str) -> None:
    if "blacklist" not in value:
        raise _RuleError(f"unknown appraise_flag {value!r}")
    logger.info("policy: appraise_flag=%s is accepted and ignored", value)


def _appraise_algos(d: _Draft, value: str) -> None:
    algos = tuple(value.split(","))
    for a in algos:
        if a not in _KERNEL_HASHES:
            raise _RuleError(f"unknown hash algorithm {a!r} in appraise_algos")
    _once(d, "appraise_algos", algos)
    d.flags |= Flag.VALIDATE_ALGOS


def _pcr(d: _Draft, value: str) -> None:
    body = value[1:] if value[:1] in "+-" else value
    if not body.isdigit() or value.startswith("-") or int(body) >= _PCR_LIMIT:
        raise _RuleError(f"pcr={value} is not a PCR index (0-63)")
    if int(body) >= NUM_PCRS:
        # the kernel accepts 24-63 but cannot extend them into a TPM; a list entry that names
        # one is refused by every reader, ours included
        raise _RuleError(
            f"pcr={value}: a measurement list holds PCRs 0-{NUM_PCRS - 1}",
            remedy="use a PCR below 24 (the default is 10)",
        )
    d.fields["pcr"] = int(body)  # the kernel keeps the last pcr=
    d.flags |= Flag.PCR


def _template(d: _Draft, value: str) -> None:
    if d.action is not Action.MEASURE:
        raise _RuleError("template= must follow the 'measure' action")
    if value not in TEMPLATE_FIELDS:
        raise _RuleError(f"unknown template {value!r}")
    _once(d, "template", value)


def _path(d: _Draft, value: str) -> None:
    if not value:
        raise _RuleError("path= needs a glob")
    try:
        compile_glob(value)
    except ValueError as exc:
        raise _RuleError(f"path=: {exc}") from None
    _once(d, "path", value)
    d.flags |= Flag.PATH


def _keyring(d: _Draft, value: str) -> None:
    if not value:
        raise _RuleError("keyring= needs a directory")
    _once(d, "keyring", value)
    d.flags |= Flag.KEYRING


_HANDLERS = {
    "func": _func,
    "mask": _mask,
    "fsmagic": _fsmagic,
    "fsname": _fsname,
    "fsuuid": _fsuuid,
    "keyrings": _list_option(Flag.KEYRINGS, "keyrings", "keyrings"),
    "label": _list_option(Flag.LABEL, "label", "labels"),
    "digest_type": _digest_type,
    "appraise_type": _appraise_type,
    "appraise_flag": _appraise_flag,
    "appraise_algos": _appraise_algos,
    "pcr": _pcr,
    "template": _template,
    "path": _path,
    "keyring": _keyring,
}


def _validate(d: _Draft) -> None:
    """``ima_validate_rule``, plus the constraints of our extensions."""
    action, flags = d.action, d.flags
    if action is None:
        raise _RuleError("the rule has no action (measure, dont_measure, appraise, dont_appraise)")
    if action is not Action.MEASURE and flags & Flag.PCR:
        raise _RuleError("pcr= is only for measure rules")
    if action is not Action.APPRAISE and flags & (
        Flag.DIGSIG_REQUIRED | Flag.MODSIG_ALLOWED | Flag.VALIDATE_ALGOS | Flag.KEYRING
    ):
        raise _RuleError("appraise_type=, appraise_algos= and keyring= are only for appraise rules")
    func = d.fields.get("func")
    measure_only = (Action.MEASURE, Action.DONT_MEASURE)
    if func is None or func in FILE_FUNCS:
        allowed = _COMMON_CONDS | Flag.VERITY_REQUIRED
    elif func in MODSIG_FUNCS:
        allowed = _COMMON_CONDS | Flag.MODSIG_ALLOWED
        allowed &= ~(Flag.PATH | Flag.KEYRING)
    elif func is Func.KEXEC_CMDLINE:
        if action not in measure_only:
            raise _RuleError("func=KEXEC_CMDLINE rules can only measure")
        allowed = _ID_CONDS & ~(Flag.MASK | Flag.INMASK)
    elif func in (Func.KEY_CHECK, Func.CRITICAL_DATA):
        if action not in measure_only:
            raise _RuleError(f"func={func.value} rules can only measure")
        allowed = Flag.FUNC | Flag.UID | Flag.GID | Flag.PCR
        allowed |= Flag.KEYRINGS if func is Func.KEY_CHECK else Flag.LABEL
    else:  # SETXATTR_CHECK
        if action is not Action.APPRAISE or not flags & Flag.VALIDATE_ALGOS:
            raise _RuleError("func=SETXATTR_CHECK needs 'appraise' and appraise_algos=")
        allowed = Flag.FUNC | Flag.VALIDATE_ALGOS
    extra = flags & ~allowed
    if extra:
        names = ", ".join(sorted(f.name.lower() for f in Flag if f in extra and f.name))
        where = f"func={func.value}" if isinstance(func, Func) else "rules without func="
        raise _RuleError(f"{names} not allowed in {where}")
    if (
        action is Action.APPRAISE
        and flags & Flag.VERITY_REQUIRED
        and not flags & Flag.DIGSIG_REQUIRED
    ):
        raise _RuleError("an appraise rule with digest_type=verity needs appraise_type=sigv3")
    template = d.fields.get("template")
    if (
        isinstance(template, str)
        and template not in WRITABLE_TEMPLATES
        and (func is None or func in FILE_FUNCS)
    ):
        raise _RuleError(
            f"template={template} cannot record file accesses in pyverity",
            remedy="use " + ", ".join(WRITABLE_TEMPLATES),
        )


def _parse_line(text: str, source: str, lineno: int) -> Rule | None:
    stripped = text.lstrip(" \t")
    if not stripped or stripped.startswith("#"):
        return None
    d = _Draft()
    col = 0
    try:
        for token_col, tok in _tokens(text):
            col = token_col
            _token(d, tok)
        col = len(text) - len(stripped) + 1
        _validate(d)
    except _RuleError as exc:
        raise PolicyError(f"{source}:{lineno}:{col}: {exc}", remedy=exc.remedy) from None
    rule = Rule(
        action=d.action or Action.MEASURE,  # _validate made sure there is one
        flags=d.flags,
        source=source,
        line=lineno,
        text=" ".join(t for _, t in _tokens(text)),
    )
    rule = replace(rule, **d.fields)  # type: ignore[arg-type]
    if rule.action in _IGNORED_ACTIONS:
        logger.info(
            "policy %s:%d: '%s' rules are accepted and ignored", source, lineno, rule.action.value
        )
    if (
        rule.flags & Flag.VERITY_REQUIRED
        and rule.action is Action.MEASURE
        and rule.template
        and "d-ngv2" not in TEMPLATE_FIELDS[rule.template]
    ):
        logger.warning(
            "policy %s:%d: verity rules should include d-ngv2 (template=ima-ngv2 or ima-sigv2)",
            source,
            lineno,
        )
    return rule


def _tokens(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(text):
        if text[i] in " \t":
            i += 1
            continue
        j = i
        while j < len(text) and text[j] not in " \t":
            j += 1
        out.append((i + 1, text[i:j]))
        i = j
    return out


def parse_rules(text: str, source: str = "<policy>") -> list[Rule]:
    """All rules of ``text``; :class:`PolicyError` (naming line and column) on the first bad one."""
    if len(text) > MAX_POLICY_SIZE:
        raise PolicyError(f"{source}: policy is larger than {MAX_POLICY_SIZE} bytes")
    if "\0" in text:
        raise PolicyError(f"{source}: policy contains a NUL byte")
    rules: list[Rule] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if len(line) > MAX_LINE:
            raise PolicyError(f"{source}:{lineno}:1: line longer than {MAX_LINE} characters")
        rule = _parse_line(line, source, lineno)
        if rule is None:
            continue
        rules.append(rule)
        if len(rules) > MAX_RULES:
            raise PolicyError(f"{source}:{lineno}:1: more than {MAX_RULES} rules")
    return rules
