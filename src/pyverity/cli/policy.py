"""``pyverity policy check FILE [PATH...]``: parse a policy and show what it decides.

Without paths, the policy is only parsed and its rules listed. For each path, the file is
opened (read-only, not followed if it is a symlink's target that cannot be read), and the
access ``--func`` with ``--mask`` by ``--uid`` is evaluated: which rules match, which rule
decides measurement and which decides appraisal, and what would happen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pyverity.cli._common import ArgumentParser
from pyverity.errors import InputError, UsageError

if TYPE_CHECKING:
    from pyverity.policy import Decision, Policy, Rule

__all__ = ["main"]

_MASKS = ("MAY_READ", "MAY_WRITE", "MAY_EXEC", "MAY_APPEND")


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="pyverity policy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="check")
    c = sub.add_parser(
        "check",
        help="parse a policy; show what it decides for paths",
        description=__doc__.split("\n\n")[1],
    )
    c.add_argument(
        "policy",
        metavar="FILE",
        help="the policy file, or ima_policy=NAMES for the kernel's built-in sets "
        "(tcb, appraise_tcb, secure_boot, critical_data; joined by '|')",
    )
    c.add_argument("paths", nargs="*", metavar="PATH", help="files to evaluate")
    c.add_argument(
        "--uid",
        type=int,
        default=None,
        help="the accessing user (default: you); also used as euid/gid/egid",
    )
    c.add_argument(
        "--mask",
        default="MAY_READ",
        help="the access: MAY_READ, MAY_WRITE, MAY_EXEC, MAY_APPEND, or several "
        "joined by '|' (default MAY_READ)",
    )
    c.add_argument("--func", default="FILE_CHECK", help="the hook (default FILE_CHECK)")
    c.add_argument(
        "--appraise-mode",
        default="enforce",
        metavar="MODE",
        help="enforce, log, fix or off (default enforce)",
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    return p


def _mask(text: str) -> int:
    from pyverity.policy.rules import MASKS

    value = 0
    for part in text.split("|"):
        if part not in MASKS:
            raise UsageError(f"--mask: unknown {part!r}", remedy="use " + ", ".join(_MASKS))
        value |= MASKS[part]
    return value


def _outcome(d: Decision) -> str:
    parts = []
    if d.measure:
        kind = "fs-verity digest" if d.verity else "file hash"
        parts.append(f"measured ({kind}, template {d.template}, PCR {d.pcr})")
    else:
        parts.append("not measured")
    if d.appraise:
        need = (
            {"sigv3": "a v3 fs-verity signature", "imasig": "a v2 signature"}.get(
                d.appraise_rule.appraise_type or "", "a valid hash or signature"
            )
            if d.appraise_rule
            else ""
        )
        keyring = f" from keyring {d.keyring}" if d.keyring else ""
        what = "denied (EACCES)" if d.enforce else "allowed and logged"
        parts.append(f"appraised: needs {need}{keyring}; otherwise {what} [{d.mode.value}]")
    elif d.appraise_rule is not None and d.mode.value == "off":
        parts.append("not appraised (mode off)")
    else:
        parts.append("not appraised")
    return "; ".join(parts)


def _check_path(policy: Policy, path: str, args: argparse.Namespace) -> dict[str, object]:
    from pyverity.fs.openfile import open_regular
    from pyverity.policy import Func, context_for_fd

    try:
        func = Func.parse(args.func)
    except ValueError:
        raise UsageError(f"--func: unknown hook {args.func!r}") from None
    resolved = os.path.realpath(path)
    fd = open_regular(resolved)
    try:
        ctx = context_for_fd(
            fd,
            path=resolved,
            uid=args.uid,  # None: this process's ids
            mask=_mask(args.mask),
            func=func,
            policy=policy,
            euid=args.uid,
            gid=args.uid,
            egid=args.uid,
        )
    finally:
        os.close(fd)
    d = policy.decide(ctx)
    matching = policy.matching_rules(ctx)
    return {
        "path": path,
        "resolved": resolved,
        "uid": ctx.uid,
        "fowner": ctx.fowner,
        "fgroup": ctx.fgroup,
        "matching_rules": [
            {"line": r.line, "rule": r.text, "decides": r is d.measure_rule or r is d.appraise_rule}
            for r in matching
        ],
        "decision": d.as_dict(),
        "outcome": _outcome(d),
    }


def _rule_line(r: Rule) -> str:
    return f"{r.line:>5}  {r.text}"


def main(argv: list[str]) -> int:
    from pyverity.policy import Mode, Policy

    args = _parser().parse_args(argv)
    mode = Mode.parse(args.appraise_mode)
    if args.policy.startswith("ima_policy="):
        policy = Policy.builtin(args.policy.removeprefix("ima_policy="), mode=mode)
    else:
        policy = Policy.load(args.policy, mode=mode)
    results = []
    failures = 0
    for path in args.paths:
        try:
            results.append(_check_path(policy, path, args))
        except InputError as exc:
            failures += 1
            results.append({"path": path, "error": str(exc)})
    if args.json:
        json.dump(
            {
                "policy": str(Path(args.policy)),
                "mode": policy.mode.value,
                "rules": [{"line": r.line, "rule": r.text} for r in policy.rules],
                "paths": results,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"{args.policy}: {len(policy.rules)} rules, mode {policy.mode.value}\n")
        if not args.paths:
            for r in policy.rules:
                sys.stdout.write(_rule_line(r) + "\n")
        for res in results:
            if "error" in res:
                sys.stdout.write(f"\n{res['path']}: ERROR {res['error']}\n")
                continue
            sys.stdout.write(f"\n{res['path']}: {res['outcome']}\n")
            for m in res["matching_rules"]:  # type: ignore[attr-defined]
                mark = "*" if m["decides"] else " "
                sys.stdout.write(f"  {mark}{m['line']:>4}  {m['rule']}\n")
    return 1 if failures else 0
