"""IMA-style policy: which accesses are measured and appraised, with the kernel's meaning.

API (spec/ima.md §3.3–§3.7; DESIGN.md §7; the grammar and our extensions in docs/policy.md)::

    policy = Policy.load("/etc/pyverity/policy", mode="enforce")   # or Policy.parse(text, ...)
    ctx = context_for_fd(fd, path=resolved_path, uid=caller_uid, mask=MAY_READ,
                         func=Func.FILE_CHECK, policy=policy)
    # or AccessContext(uid=, fowner=, fgroup=, mask=, func=, fsmagic=, fsuuid=, path=)
    d = policy.decide(ctx)
    d.measure, d.measure_rule       # measure? and the rule that decided it (or dont_measure)
    d.template, d.pcr               # template= of the measure rule (else the default), pcr=
    d.appraise, d.appraise_rule     # appraise? (False in mode off) and the deciding rule
    d.verity, d.sigv3_required      # digest_type=verity; appraise_type=sigv3
    d.signature_required            # any appraise_type= (imasig: a v2 signature)
    d.keyring                       # keyring= of the appraise rule (our extension), or default
    d.enforce                       # appraise and mode enforce: a failure is EACCES
    d.fix                           # appraise and mode fix
    Policy.builtin("tcb|appraise_tcb")  # the kernel's ima_policy= sets

Each action family is decided by its own first matching rule, as in the kernel's
``ima_match_policy``: a ``measure`` rule never hides a later ``appraise`` rule, and a
``dont_measure`` placed first wins over a later ``measure``.

Modes (:class:`Mode`, the kernel's ``ima_appraise=``): ``enforce`` denies a failed appraisal,
``log`` allows and logs it, ``fix`` allows and logs (the daemon may write missing descriptors
for files it hashed itself), ``off`` appraises nothing. The mode is not a policy line, as in
the kernel it is a boot parameter: pass it to :meth:`Policy.parse`/:meth:`Policy.load` (the
CLI: ``--appraise-mode``).

Bounds: a policy file is at most 1 MiB, 10,000 rules, 8,192 characters a line.
"""

from pyverity.policy.context import context_for_fd
from pyverity.policy.engine import AccessContext, Decision, Policy, rule_matches
from pyverity.policy.parser import parse_rules
from pyverity.policy.rules import (
    MAY_APPEND,
    MAY_EXEC,
    MAY_READ,
    MAY_WRITE,
    Action,
    Flag,
    Func,
    IdCondition,
    Mode,
    Rule,
)

__all__ = [
    "MAY_APPEND",
    "MAY_EXEC",
    "MAY_READ",
    "MAY_WRITE",
    "AccessContext",
    "Action",
    "Decision",
    "Flag",
    "Func",
    "IdCondition",
    "Mode",
    "Policy",
    "Rule",
    "context_for_fd",
    "parse_rules",
    "rule_matches",
]
