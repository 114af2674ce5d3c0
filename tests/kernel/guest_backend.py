"""Run inside the test VM (host's Python over 9p, chrooted): the ``kernel`` backend.

``python guest_backend.py DIR RESULTS CASES.json``: runs ``pyverity enable --kernel`` for each
case of CASES.json (``{case: [file, [options...]]}``, see ``cases.BACKEND_CLI``) in this one
process (an interpreter start costs seconds under TCG), writing ``RESULTS/<case>.out``, then
the library checks. Prints one line per check, ``<check> <result>``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyverity.cli import main as cli_main
from pyverity.errors import Error
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.store import kernel


def outcome(fn: Callable[[], object]) -> str:
    try:
        result = fn()
    except Error as e:
        return f"{type(e).__name__}: {e.message}"
    return f"ok {result}"


def run_cli(d: Path, results: Path, cases: dict[str, tuple[str, list[str]]]) -> None:
    for case, (name, options) in cases.items():
        out = io.StringIO()
        writer = None
        if case == "busy":  # this process holds the file open for writing meanwhile
            writer = (d / name).open("ab")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                rc = cli_main(["enable", "--kernel", *options, str(d / name)])
        finally:
            if writer is not None:
                writer.close()
        (results / f"{case}.out").write_text(out.getvalue())
        print("cli", case, rc)


def run_library(d: Path) -> None:
    # A descriptor written for the content, then the file appended to: must not be enabled.
    changed = d / "changed"
    desc = build_tree(changed, TreeParams()).descriptor
    with changed.open("ab") as f:
        f.write(b"more")
    print("changed-size", outcome(lambda: kernel.enable(changed, desc)))
    print("changed-verity", kernel.kernel_digest(changed))
    # Same size, other content: found by hashing again (no identity given).
    same = d / "samesize"
    desc = build_tree(same, TreeParams()).descriptor
    data = bytearray(same.read_bytes())
    data[0] ^= 1
    same.write_bytes(bytes(data))
    print("samesize", outcome(lambda: kernel.enable(same, desc)))
    print("samesize-verity", kernel.kernel_digest(same))
    # Enable, idempotent again, read the kernel's tree back, refuse another descriptor.
    lib = d / "lib"
    ours = build_tree(lib, TreeParams(), keep_tree=True)
    print("lib-enable", outcome(lambda: kernel.enable(lib, ours.descriptor).digest))
    print("lib-again", outcome(lambda: kernel.enable(lib, ours.descriptor).digest))
    print("lib-tree", outcome(lambda: kernel.read_tree(lib, ours.descriptor) == ours))
    other = build_tree(same, TreeParams()).descriptor
    print("lib-other", outcome(lambda: kernel.enable(lib, other)))
    fd = os.open(lib, os.O_RDONLY)
    try:
        verity = kernel.kernel_digest(fd)
    finally:
        os.close(fd)
    print("lib-measure", verity.digest if verity else None)


def main(directory: str, results: str, cases_json: str) -> None:
    cases = json.loads(Path(cases_json).read_text())
    run_cli(Path(directory), Path(results), cases)
    run_library(Path(directory))


if __name__ == "__main__":
    main(*sys.argv[1:4])
