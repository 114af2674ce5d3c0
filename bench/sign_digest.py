"""Signatures per second of ``pyverity sign-digest``: a key file against a SoftHSM2 token.

    .venv/bin/python bench/sign_digest.py [--lines 2000] [--runs 2]

Signs ``--lines`` sha256sum lines (v2, RSA-2048) in one ``sign-digest`` process, with the same
key from a PEM file and from a SoftHSM2 token (made as in the interop tests:
``tests/interop/softhsm.py``); prints the best wall time of ``--runs`` and the rate (process
start-up and the token login included). Needs softhsm2 and python-pkcs11.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.softhsm import softhsm

_CODE = "import sys; from pyverity.cli import main; sys.exit(main(sys.argv[1:]))"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    token = softhsm()
    lines = "".join(
        f"{hashlib.sha256(str(i).encode()).hexdigest()}  file{i}\n" for i in range(args.lines)
    ).encode()
    keys = {
        "key file": ["--key", str(token.rsa.key_path), "--cert", str(token.rsa.cert_path)],
        "SoftHSM2": ["--key", token.uri("rsa", pin=True)],
    }
    for name, key in keys.items():
        best = float("inf")
        for _ in range(args.runs):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CODE, "sign-digest", "--hash-alg", "sha256", *key],
                input=lines, capture_output=True, env=token.env(), check=False,
            )  # fmt: skip
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(proc.stderr.decode(errors="replace"))
            best = min(best, elapsed)
        rate = args.lines / best
        print(f"{name:9} {best:6.2f} s for {args.lines} RSA-2048 signatures: {rate:5.0f}/s")


if __name__ == "__main__":
    main()
