"""The kernel's fs-verity digests, trees and descriptors equal pyverity's (kernel 6.1, ext4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from tests.kernel.cases import DIGEST_CASES, DigestCase
from tests.kernel.conftest import KernelRun

pytestmark = pytest.mark.kernel

ACCEPTED = [c for c in DIGEST_CASES if c.kernel_accepts]
REFUSED = [c for c in DIGEST_CASES if not c.kernel_accepts]


def _params(case: DigestCase) -> TreeParams:
    return TreeParams(hashalg.by_name(case.algorithm), case.block_size, case.salt)


def lines_of(run: KernelRun, what: str, case: DigestCase) -> str:
    return run.lines[(what, case.name)]


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_kernel_digest_tree_and_descriptor_equal_pyverity(
    kernel61_run: KernelRun, case: DigestCase
) -> None:
    lines = kernel61_run.lines
    assert lines[("enable", case.name)] == "OK"
    ours = build_tree(kernel61_run.stage / "digest" / case.name, _params(case), keep_tree=True)
    digest = ours.file_digest()
    assert lines[("measure", case.name)] == f"{case.number} {digest.hex()}"
    kernel_desc = (kernel61_run.results / "digest" / f"{case.name}.desc").read_bytes()
    kernel_tree = (kernel61_run.results / "digest" / f"{case.name}.tree").read_bytes()
    assert kernel_desc == ours.descriptor.to_bytes()
    assert kernel_tree == ours.tree
    # The kernel read the whole file back through its own verification.
    assert lines[("read", case.name)] == str(case.size)


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_kernel_61_refuses_block_size_other_than_page_size(
    kernel61_run: KernelRun, case: DigestCase
) -> None:
    assert lines_of(kernel61_run, "enable", case) == "ERR 22 Invalid argument"
    assert lines_of(kernel61_run, "measure", case).startswith("ERR 61 ")  # ENODATA: not verity
    # pyverity itself computes these digests (as `fsverity digest` does); the parameters are
    # within the bounds it accepts from attributes, only this kernel cannot enable them.
    params = _params(case)
    params.check_bounded()
    assert build_tree(kernel61_run.stage / "digest" / case.name, params).file_digest().digest


def test_pyverity_digest_cli_prints_the_kernel_digests(
    kernel61_run: KernelRun, tmp_path: Path
) -> None:
    groups: dict[tuple[str, bytes], list[DigestCase]] = {}
    for case in ACCEPTED:
        groups.setdefault((case.algorithm, case.salt), []).append(case)
    for (alg, salt), cases in groups.items():
        cmd = [sys.executable, "-m", "pyverity.cli", "digest", f"--hash-alg={alg}"]
        cmd += [f"--salt={salt.hex()}"] if salt else []
        cmd += [str(kernel61_run.stage / "digest" / c.name) for c in cases]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
        for case, line in zip(cases, out, strict=True):
            _number, hexdigest = kernel61_run.lines[("measure", case.name)].split()
            assert line == f"{alg}:{hexdigest} {kernel61_run.stage / 'digest' / case.name}"
    # The tree and descriptor files of the largest (3-level) case, as written by the CLI.
    big = max(ACCEPTED, key=lambda c: c.size)
    tree, desc = tmp_path / "tree", tmp_path / "desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pyverity.cli",
            "digest",
            f"--hash-alg={big.algorithm}",
            f"--out-merkle-tree={tree}",
            f"--out-descriptor={desc}",
            str(kernel61_run.stage / "digest" / big.name),
        ],
        capture_output=True,
        check=True,
    )
    results = kernel61_run.results / "digest"
    assert tree.read_bytes() == (results / f"{big.name}.tree").read_bytes()
    assert desc.read_bytes() == (results / f"{big.name}.desc").read_bytes()
