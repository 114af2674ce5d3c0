"""Regenerate ``spec11_worked_cases.json`` with the real ``fsverity digest`` (by hand, not in CI).

    .venv/bin/python tests/vectors/generate_spec11.py

Each case of spec/fsverity.md §11 is written to a temp file, digested by ``fsverity digest
--out-merkle-tree --out-descriptor``, and recorded: the printed line, the 256 descriptor bytes
(hex), the tree's size and SHA-256. The tests then need no ``fsverity`` to check these.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from contents import content

SALT32 = bytes(range(32)).hex()
#: (id, content, size, fsverity options) — the order and options of spec §11 (T1–T6, plus
#: the 100000-zero-byte, 1 KiB-block case).
CASES = [
    ("T1-empty", "zeros", 0, []),
    ("T2-a1", "letter_a", 1, []),
    ("T2-a1-sha512", "letter_a", 1, ["--hash-alg=sha512"]),
    ("T3-zero4096", "zeros", 4096, []),
    ("T3-zero4096-sha512", "zeros", 4096, ["--hash-alg=sha512"]),
    ("T4-y4097", "yes_abcdefg", 4097, []),
    (
        "T4-y4097-sha512-1k-salt",
        "yes_abcdefg",
        4097,
        ["--hash-alg=sha512", "--block-size=1024", "--salt=ab"],
    ),
    ("T5-pat1m", "mod251", 1 << 20, []),
    ("T5-pat1m-salt", "mod251", 1 << 20, ["--salt=deadbeef"]),
    ("T5-pat1m-sha512", "mod251", 1 << 20, ["--hash-alg=sha512"]),
    ("T5-pat1m-1k", "mod251", 1 << 20, ["--block-size=1024"]),
    ("T5-pat1m-64k", "mod251", 1 << 20, ["--block-size=65536"]),
    (
        "T5-pat1m-sha512-1k-salt32",
        "mod251",
        1 << 20,
        ["--hash-alg=sha512", "--block-size=1024", f"--salt={SALT32}"],
    ),
    ("T6-pattern1000000", "pattern_11_439_1103", 1000000, []),
    ("T6-pattern1000000-salt", "pattern_11_439_1103", 1000000, ["--salt=61626364"]),
    (
        "T6-pattern1000000-sha512-salt",
        "pattern_11_439_1103",
        1000000,
        ["--hash-alg=sha512", "--salt=61626364"],
    ),
    ("T6-pattern1000000-1k", "pattern_11_439_1103", 1000000, ["--block-size=1024"]),
    ("T6-pattern1000000-64k", "pattern_11_439_1103", 1000000, ["--block-size=65536"]),
    ("T6-zeros100000-1k", "zeros", 100000, ["--block-size=1024"]),
]


def main() -> None:
    version = subprocess.run(["fsverity", "--version"], capture_output=True, text=True, check=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case_id, name, size, opts in CASES:
            f = work / "file"
            f.write_bytes(content(name, size))
            line = subprocess.run(
                ["fsverity", "digest", "file", *opts, "--out-merkle-tree=t", "--out-descriptor=d"],
                cwd=work,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            tree = (work / "t").read_bytes()
            out.append(
                {
                    "id": case_id,
                    "content": name,
                    "data_size": size,
                    "options": opts,
                    "line": line.replace(" file\n", ""),
                    "descriptor_hex": (work / "d").read_bytes().hex(),
                    "tree_size": len(tree),
                    "tree_sha256_hex": hashlib.sha256(tree).hexdigest(),
                }
            )
    doc = {
        "source": "spec/fsverity.md §11 worked cases, recorded with "
        + version.stdout.strip()
        + " (Debian 12) by tests/vectors/generate_spec11.py",
        "cases": out,
    }
    target = Path(__file__).with_name("spec11_worked_cases.json")
    target.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
