"""Known-answer tests: the 12 libfsverity vectors and the worked cases of spec §11.

Provenance of every value is in ``tests/vectors/README.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyverity.format import hashalg
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.hashing import MerkleTree, build_tree
from tests.vectors.contents import content

HERE = Path(__file__).parent
LIBFSVERITY: dict[str, Any] = json.loads((HERE / "libfsverity_compute_digest.json").read_text())
SPEC11: dict[str, Any] = json.loads((HERE / "spec11_worked_cases.json").read_text())

#: Root hashes printed in the text of spec/fsverity.md §3 and §11 ("for debugging").
SPEC_ROOT_HASHES = {
    "T2-a1": "344bcc8eac81250e918967cb0ba2d1cd1ea9d548141cf318f2025c2ba93b6ed2",
    "T4-y4097": "ad7c67076d9b8b0045c6fbd6678c7f0bbbff44544cc1ef39660574f68ee30702",
    "T5-pat1m": "2741efefc98f2dbd797ca3c2b25241acaed1b3d21bf0ee20b633fe4a5051f20c",
    "T5-pat1m-salt": "9bda1a0a9a55e49a679147de0dee0fdc56a6e405f89b3b323bac88e9d1c6ea06",
    "T5-pat1m-1k": "224efe953ae2c1b1601d52c6a025965a3a3d93dc0e44adcf296fa271efceae39",
    "T5-pat1m-64k": "dcf2aa49501f6b64414e683060fcfb0f4233d6cf8dceb035cacf0ee90beea425",
    "T3-zero4096": "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7",
    "T1-empty": "00" * 32,
}


def _params_from_options(options: list[str]) -> TreeParams:
    alg, block_size, salt = hashalg.SHA256, 4096, b""
    for opt in options:
        name, _, value = opt.partition("=")
        if name == "--hash-alg":
            alg = hashalg.by_name(value)
        elif name == "--block-size":
            block_size = int(value)
        elif name == "--salt":
            salt = bytes.fromhex(value)
        else:
            raise AssertionError(f"unexpected option {opt}")
    return TreeParams(alg, block_size, salt)


def _build_all_ways(data: bytes, params: TreeParams, tmp_path: Path) -> list[MerkleTree]:
    """The tree from a stream (reference path) and from a file (default and one job)."""
    f = tmp_path / "data"
    f.write_bytes(data)
    return [
        build_tree(io.BytesIO(data), params),
        build_tree(f, params),
        build_tree(f, params, jobs=1),
    ]


@pytest.mark.parametrize("vector", LIBFSVERITY["vectors"], ids=lambda v: v["name"])
def test_libfsverity_vector(vector: dict[str, Any], tmp_path: Path) -> None:
    params = TreeParams(
        hashalg.by_number(vector["hash_algorithm"]),
        vector["block_size"],
        bytes.fromhex(vector["salt_hex"]),
    )
    data = content(vector["content"], vector["data_size"])
    for tree in _build_all_ways(data, params, tmp_path):
        digest = tree.file_digest()
        assert digest.algorithm_number == vector["hash_algorithm"]
        assert digest.hex() == vector["digest_hex"]
        if "tree_block_sha256_hex" in vector:
            assert tree.tree is not None
            assert len(tree.tree) == vector["tree_size"]
            bs = vector["block_size"]
            blocks = [tree.tree[i : i + bs] for i in range(0, len(tree.tree), bs)]
            got = [hashlib.sha256(b).hexdigest() for b in blocks]
            assert got == vector["tree_block_sha256_hex"]


def test_there_are_twelve_libfsverity_vectors() -> None:
    assert len(LIBFSVERITY["vectors"]) == 12


@pytest.mark.parametrize("case", SPEC11["cases"], ids=lambda c: c["id"])
def test_spec11_worked_case(case: dict[str, Any], tmp_path: Path) -> None:
    params = _params_from_options(case["options"])
    data = content(case["content"], case["data_size"])
    for tree in _build_all_ways(data, params, tmp_path):
        assert str(tree.file_digest()) == case["line"]
        assert tree.descriptor.to_bytes().hex() == case["descriptor_hex"]
        assert Descriptor.from_bytes(bytes.fromhex(case["descriptor_hex"])) == tree.descriptor
        assert tree.tree is not None
        assert len(tree.tree) == case["tree_size"]
        assert hashlib.sha256(tree.tree).hexdigest() == case["tree_sha256_hex"]
    if case["id"] in SPEC_ROOT_HASHES:
        assert tree.root_hash.hex() == SPEC_ROOT_HASHES[case["id"]]


def test_spec_root_hashes_name_real_cases() -> None:
    assert set(SPEC_ROOT_HASHES) <= {c["id"] for c in SPEC11["cases"]}


@pytest.mark.interop
@pytest.mark.skipif(
    shutil.which("fsverity") is None,
    reason="the real `fsverity` (Debian package fsverity) is missing; .ci/run installs it",
)
@pytest.mark.parametrize("case", SPEC11["cases"], ids=lambda c: c["id"])
def test_spec11_against_real_fsverity_now(case: dict[str, Any], tmp_path: Path) -> None:
    """Byte-compare with tree and descriptor files the real tool writes during the test."""
    data = content(case["content"], case["data_size"])
    (tmp_path / "file").write_bytes(data)
    subprocess.run(
        [
            "fsverity",
            "digest",
            "file",
            *case["options"],
            "--out-merkle-tree=t",
            "--out-descriptor=d",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    tree = build_tree(tmp_path / "file", _params_from_options(case["options"]))
    assert tree.tree == (tmp_path / "t").read_bytes()
    assert tree.descriptor.to_bytes() == (tmp_path / "d").read_bytes()


def _kept_lists() -> list[Any]:
    """(vector, list file) for every list of the kept kernel runs whose bank the kernel
    extended with that bank's own hash (tests/kernel/imarun.py)."""
    from tests.kernel.cases import list_bank
    from tests.kernel.imarun import VECTOR_ROOT, VECTORS, load_vector

    params = []
    for vector in VECTORS:
        if not (VECTOR_ROOT / vector / "kernel.txt").exists():
            params.append(pytest.param(vector, "(missing)", id=f"{vector}-missing"))
            continue
        run = load_vector(vector)
        for name in run.lists():
            if list_bank(name) in run.facts.hashed_banks:
                params.append(pytest.param(vector, name, id=f"{vector}-{name}"))
    return params


@pytest.mark.parametrize(("vector", "name"), _kept_lists())
def test_kept_kernel_list_replays_to_its_banks_pcr10(
    vector: str, name: str, tmp_path: Path
) -> None:
    """``pyverity log verify`` of each kept list (binary and ascii, per bank, the unsuffixed
    names through their symlinks): the replay equals the recorded PCR 10 of its bank, and the
    signatures fail exactly where they do not verify. Provenance: tests/vectors/README.md."""
    from tests.kernel.imarun import check_log_verify, load_vector

    run = load_vector(vector)
    check_log_verify(run, name, tmp_path)
