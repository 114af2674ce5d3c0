"""Per-open policy decision cost with many rules, by hand (not CI).

    .venv/bin/python bench/policy.py [--rules 10000] [--runs 200]

A policy of ``--rules`` measure/appraise rules, each with a ``path=`` glob (stars, ``**``,
sets) and some with ``fowner=``/``func=`` conditions, none of which matches the path opened,
so every decision walks every rule (the worst case for a policy of that size). Figures are
CPU time per call (``time.process_time``), which a shared machine's load does not inflate:

* ``decide``: :meth:`Policy.decide` on a ready context, per call;
* ``open``: ``context_for_fd`` on an open file plus ``decide``, per call (what the mount and
  ``pyverity.open`` pay per open);
* ``hostile``: ``decide`` for a 4,096-byte name against the same rules plus eight rules with
  eight stars each (the case a backtracking matcher takes hours on).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from pyverity.policy import AccessContext, Policy, context_for_fd


def _policy(n: int) -> Policy:
    lines = []
    for i in range(n):
        action = "measure" if i % 2 else "appraise"
        kind = i % 4
        if kind == 0:
            cond = f"path=/srv/app{i}/**/*.so"
        elif kind == 1:
            cond = f"path=/opt/*/v{i}/[a-f]*.bin fowner={1000 + i}"
        elif kind == 2:
            cond = f"func=FILE_CHECK path=/usr/lib/**/lib{i}-*.so.?"
        else:
            cond = f"path=/home/*/data{i}/*"
        lines.append(f"{action} {cond}")
    return Policy.parse("\n".join(lines) + "\n")


def _per_call(fn: object, runs: int) -> float:
    """CPU seconds per call (process time: on a shared machine, wall time measures the load)."""
    assert callable(fn)
    fn()
    t0 = time.process_time()
    for _ in range(runs):
        fn()
    return (time.process_time() - t0) / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    policy = _policy(args.rules)
    path = "/srv/application/lib/x86_64-linux-gnu/libexample.so.1"
    ctx = AccessContext(uid=1000, fowner=1000, fgroup=1000, path=path)
    decision = policy.decide(ctx)
    assert not decision.measure  # every rule walked
    assert not decision.appraise
    decide = _per_call(lambda: policy.decide(ctx), args.runs)

    with tempfile.NamedTemporaryFile() as f:
        fd = f.fileno()
        open_cost = _per_call(lambda: policy.decide(context_for_fd(fd, path=path)), args.runs)

    star8 = "\n".join(f"measure path=/*a*a*a*a*a*a*a*a{c}" for c in "bcdefghi")
    hostile = Policy(policy.rules + Policy.parse(star8 + "\n").rules)
    long_ctx = AccessContext(uid=1000, fowner=1000, fgroup=1000, path="/" + "a" * 4095)
    hostile_cost = _per_call(lambda: hostile.decide(long_ctx), max(1, args.runs // 20))

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"CPU: {cpu}; Python {platform.python_version()}; pid {os.getpid()}")
    print(f"{args.rules} rules, none matching ({len(path)}-byte path):")
    print(f"  decide            {decide * 1e6:9.0f} us CPU per call")
    print(f"  open (ctx+decide) {open_cost * 1e6:9.0f} us CPU per call")
    print(
        f"  hostile: 4096-byte name, + 8 rules of 8 stars: {hostile_cost * 1e3:.1f} ms CPU per call"
    )


if __name__ == "__main__":
    main()
