#!/usr/bin/env python3
"""Per-core speed of the compiled hashing accelerator and the width it chose, by hand (not CI).

First the width this process uses for each algorithm (``runhash.accel_choice``: from
``PYVERITY_HASH_WIDTH``, the per-machine cache, or measured now) and what a fresh calibration
costs and picks (with an empty cache directory). Then CPU time (``time.thread_time``) of hashing
a 1 MiB run of 4 KiB blocks (``--block-size``) with every width the accelerator takes here and
with ``hashlib`` block by block, unsalted and with a 32-byte salt: the widths are interleaved
(one measurement of each per round, so that a change of load hits all of them alike) and each
keeps its best of ``--rounds`` (5). It prints the chosen width's speed as a fraction of the
best one measured (the target is at least 95 %), and the cost of one call on a single block.

    .venv/bin/python bench/accel.py [--block-size 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable

from pyverity.format.hashalg import by_name
from pyverity.format.params import TreeParams
from pyverity.hashing import runhash

RUN = 1 << 20
HASHLIB = "hashlib"


def best_rates(
    fns: dict[str, Callable[[], object]], size: int, reps: int, rounds: int
) -> dict[str, float]:
    """GB/s of CPU time of each function, interleaved, best of ``rounds`` of ``reps`` calls."""
    best = dict.fromkeys(fns, float("inf"))
    for r in range(rounds + 1):  # round 0 warms up (and wakes the vector units)
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(reps):
                fn()
            took = time.thread_time() - start
            if r:
                best[name] = min(best[name], took)
    return {name: size * reps / t / 1e9 for name, t in best.items()}


def fresh_calibration() -> tuple[runhash._widths.Choice | None, float, float]:
    """What a first process on this machine measures (empty cache directory), and its wall
    clock and CPU seconds."""
    saved = (
        dict(runhash._CHOICE),
        os.environ.get("XDG_CACHE_HOME"),
        os.environ.get("PYVERITY_HASH_WIDTH"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp
        os.environ.pop("PYVERITY_HASH_WIDTH", None)
        runhash._CHOICE.clear()
        start, cpu = time.perf_counter(), time.thread_time()
        choice = runhash.accel_choice()
        took, cpu = time.perf_counter() - start, time.thread_time() - cpu
    runhash._CHOICE.clear()
    runhash._CHOICE.update(saved[0])
    for name, value in (("XDG_CACHE_HOME", saved[1]), ("PYVERITY_HASH_WIDTH", saved[2])):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return choice, took, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bs: int = args.block_size
    accel = runhash.accelerator()
    if accel is None:
        sys.exit("the accelerator is not built, is disabled, or this CPU lacks SHA-NI and AVX-512")
    choice = runhash.accel_choice()
    assert choice is not None
    fresh, took, cpu = fresh_calibration()
    assert fresh is not None
    print(f"CPU: {accel.cpu_signature()}")
    print(f"chosen here: {dict(choice.widths)} ({choice.source}); 0 = hashlib")
    print(
        f"a fresh calibration: {cpu * 1e3:.1f} ms of CPU ({took * 1e3:.1f} ms wall clock), "
        f"picks {dict(fresh.widths)}"
    )
    data = os.urandom(RUN - RUN % bs)
    view = memoryview(data)
    print(f"{len(data)} bytes of {bs}-byte blocks, CPU time of one thread, best of {args.rounds}")
    status = 0
    for alg in ("sha256", "sha512"):
        widths = runhash._accel_widths(accel)[alg]
        for salt_len in (0, 32):
            params = TreeParams(by_name(alg), bs, b"s" * salt_len)
            salt = params.padded_salt
            blocks = getattr(accel, f"{alg}_blocks")
            fns: dict[str, Callable[[], object]] = {
                str(w): (lambda w=w, f=blocks, s=salt: f(data, bs, s, w)) for w in widths
            }
            ctor = getattr(hashlib, alg)
            base = ctor(salt)

            def per_block(ctor: Callable[..., object] = ctor, base: object = base) -> object:
                out = []
                for o in range(0, len(view), bs):
                    h = base.copy()  # type: ignore[attr-defined]
                    h.update(view[o : o + bs])
                    out.append(h.digest())
                return out

            fns[HASHLIB] = per_block
            rates = best_rates(fns, len(data), 20, args.rounds)
            chosen = str(choice.widths.get(alg, 0) or HASHLIB)
            best = max(rates, key=rates.__getitem__)
            cells = "  ".join(
                f"{name}{'*' if name == chosen else ''} {rate:.2f}" for name, rate in rates.items()
            )
            frac = rates[chosen] / rates[best]
            verdict = "ok" if frac >= 0.95 else "BELOW 95 %"
            print(
                f"  {alg} salt {salt_len:2d} B: {cells} GB/s; chosen {chosen} = "
                f"{frac:.1%} of the best ({best}) {verdict}; accel/hashlib "
                f"{max(rates[str(w)] for w in widths) / rates[HASHLIB]:.2f}x"
                if widths
                else f"  {alg} salt {salt_len:2d} B: {cells} GB/s (no accelerated path)"
            )
            if widths and frac < 0.95:
                status = 1
    one = data[:bs]
    calls = 100_000
    start = time.thread_time()
    for _ in range(calls):
        accel.sha256_blocks(one, bs, b"")
    print(f"  one block per call: {(time.thread_time() - start) / calls * 1e6:.2f} µs a call")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
