"""Files beyond 8 GiB (sparse): the digest equals ``fsverity digest``; memory stays bounded.

The files are made with ``truncate`` on tmpfs (``/dev/shm``) when it exists: reading the holes
of a sparse tmpfs file copies the shared zero page and fills no page cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.hashing import compute_digest

GIB = 1 << 30
FSVERITY = shutil.which("fsverity")
SHM = Path("/dev/shm")


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Iterator[Path]:
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        work = SHM / f"pyverity-test-{os.getpid()}"
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work)
    else:
        yield tmp_path


def make_sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)
        for offset in (0, 4 * GIB - 100, 8 * GIB - 5, size - 12345):
            f.seek(offset)
            f.write(os.urandom(8192)[: size - offset])


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.skipif(FSVERITY is None, reason="the real `fsverity` is missing; .ci/run installs it")
def test_over_8_gib_matches_fsverity(sparse_dir: Path) -> None:
    path = sparse_dir / "big"
    make_sparse(path, 8 * GIB + 12345)
    assert FSVERITY is not None
    theirs = subprocess.run(
        [FSVERITY, "digest", "--compact", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert compute_digest(path).hex() == theirs


def _rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def _process_tree(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        try:
            pids.extend(int(c) for c in children.read_text().split())
        except OSError:
            continue
    return pids


def peak_anon_memory(cmd: list[str], timeout: float = 600) -> int:
    """Run ``cmd``; the peak, over samples, of RssAnon summed over it and its children.

    A sample every 5 ms until the process exits (waiting on its exit, not sleeping), or
    ``timeout`` seconds (it is killed, and the test fails).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        total = 0
        for pid in _process_tree(proc.pid):
            try:
                total += _rss_anon(pid)
            except OSError:
                continue
        peak = max(peak, total)
        try:
            proc.wait(timeout=0.005)
        except subprocess.TimeoutExpired:
            if time.monotonic() < deadline:
                continue
            proc.kill()
            proc.wait()
            pytest.fail(f"{cmd[:3]} did not finish within {timeout} s")
        break
    assert proc.returncode == 0
    return peak


@pytest.mark.slow
def test_16_gib_digest_memory_stays_under_64_mib(sparse_dir: Path) -> None:
    path = sparse_dir / "huge"
    make_sparse(path, 16 * GIB)
    code = "import sys; from pyverity import compute_digest; print(compute_digest(sys.argv[1]))"
    peak = peak_anon_memory([sys.executable, "-c", code, str(path)])
    assert 0 < peak < 64 << 20, f"peak anonymous memory {peak >> 20} MiB"


@pytest.mark.slow
def test_16_gib_kept_tree_costs_the_tree_plus_under_64_mib(sparse_dir: Path) -> None:
    path = sparse_dir / "huge"
    make_sparse(path, 16 * GIB)
    code = (
        "import sys; from pyverity import build_tree; t = build_tree(sys.argv[1]);"
        " assert len(t.tree) == t.params.geometry(16 << 30).tree_size"
    )
    peak = peak_anon_memory([sys.executable, "-c", code, str(path)])
    tree_size = 135_278_592  # 4 KiB blocks, SHA-256: 32768 + 256 + 2 + 1 blocks
    assert tree_size < peak < tree_size + (64 << 20), f"peak anonymous memory {peak >> 20} MiB"


@pytest.mark.interop
@pytest.mark.skipif(FSVERITY is None, reason="the real `fsverity` is missing; .ci/run installs it")
@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("block_size", [1024, 4096, 65536])
@pytest.mark.parametrize("salt", ["", "00" * 32])
def test_forked_path_matches_fsverity(tmp_path: Path, alg: str, block_size: int, salt: str) -> None:
    """A file above the fork threshold, built with the default options (workers, accelerator)."""
    from pyverity.format.hashalg import by_name
    from pyverity.format.params import TreeParams
    from pyverity.hashing import build_tree

    path = tmp_path / "f"
    path.write_bytes(os.urandom((20 << 20) + 123))
    assert FSVERITY is not None
    subprocess.run(
        [
            FSVERITY,
            "digest",
            str(path),
            f"--hash-alg={alg}",
            f"--block-size={block_size}",
            f"--salt={salt}",
            f"--out-merkle-tree={tmp_path / 't'}",
            f"--out-descriptor={tmp_path / 'd'}",
        ],
        capture_output=True,
        check=True,
    )
    params = TreeParams(by_name(alg), block_size, bytes.fromhex(salt))
    ours = build_tree(path, params, jobs=2)
    assert ours.tree == (tmp_path / "t").read_bytes()
    assert ours.descriptor.to_bytes() == (tmp_path / "d").read_bytes()
