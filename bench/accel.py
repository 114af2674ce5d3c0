#!/usr/bin/env python3
"""Per-core speed of the compiled hashing accelerator, by hand (not CI).

CPU time (``time.process_time``, best of 5) of ``_accel.sha256_blocks`` hashing a 1 MiB run of
4 KiB blocks (``--block-size``), for every interleave width the accelerator takes here (1-4:
SHA-NI streams; 16: AVX-512 lanes) and its default, unsalted and with a 32-byte salt; then
``hashlib`` block by block, and the cost of one call on a single block (the per-call overhead).

    .venv/bin/python bench/accel.py [--block-size 4096]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable

from pyverity.hashing.runhash import accelerator

RUN = 1 << 20


def rate(fn: Callable[[], object], size: int, reps: int) -> float:
    """GB/s of CPU time: the best of five rounds of ``reps`` calls hashing ``size`` bytes each."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, time.process_time() - start)
    return size * reps / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-size", type=int, default=4096)
    args = parser.parse_args()
    bs: int = args.block_size
    accel = accelerator()
    if accel is None:
        sys.exit("the accelerator is not built, is disabled, or this CPU lacks SHA-NI")
    data = os.urandom(RUN - RUN % bs)
    print(
        f"{len(data)} bytes of {bs}-byte blocks, CPU time, one core; default width "
        f"{accel.default_width()}"
    )
    for salt_len, salt in ((0, b""), (32, b"s" * 32 + b"\0" * 32)):
        for width in (*accel.widths(), 0):

            def run(width: int = width, salt: bytes = salt) -> object:
                return accel.sha256_blocks(data, bs, salt, width)

            name = f"width {width}" if width else "default"
            speed = rate(run, len(data), 40)
            print(f"  salt {salt_len:2d} B, {name:9s} {speed:6.2f} GB/s")
    view = memoryview(data)

    def per_block() -> object:
        return b"".join(
            [hashlib.sha256(view[o : o + bs]).digest() for o in range(0, len(view), bs)]
        )

    print(f"  hashlib, block by block     {rate(per_block, len(data), 10):6.2f} GB/s")
    one = data[:bs]
    calls = 100_000
    start = time.process_time()
    for _ in range(calls):
        accel.sha256_blocks(one, bs, b"")
    print(f"  one block per call: {(time.process_time() - start) / calls * 1e6:.2f} µs a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
