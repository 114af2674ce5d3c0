"""``pyverity digest`` against the real ``fsverity digest`` (fsverity-utils 1.5).

Both run as command-line processes on the same files; the digest lines, the
``--out-merkle-tree`` bytes and the ``--out-descriptor`` bytes must be identical, for random
files and parameters (hypothesis) and for sizes around every level boundary under 256 MiB.
Error cases compare exit codes and the ``ERROR:`` lines on stderr.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyverity.format import hashalg
from pyverity.format.params import TreeParams

FSVERITY = shutil.which("fsverity")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        FSVERITY is None,
        reason="the real `fsverity` (Debian package fsverity) is missing; .ci/run installs it",
    ),
]

PYVERITY = [sys.executable, "-m", "pyverity.cli"]
DIGEST_SIZES = {"sha256": 32, "sha512": 64}
BLOCK_SIZES = [1 << k for k in range(10, 17)]
LIMIT = 256 << 20


def run(cmd: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def real(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert FSVERITY is not None
    return run([FSVERITY, "digest", *args], cwd)


def ours(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([*PYVERITY, "digest", *args], cwd)


def compare_outputs(path: Path, opts: list[str], work: Path) -> tuple[str, int]:
    """Run both tools (ours with --jobs=1 and the default); all outputs must be identical."""
    ref = real(
        [str(path), *opts, f"--out-merkle-tree={work}/t.ref", f"--out-descriptor={work}/d.ref"],
        work,
    )
    assert ref.returncode == 0, ref.stderr
    ref_tree = (work / "t.ref").read_bytes()
    ref_desc = (work / "d.ref").read_bytes()
    assert len(ref_desc) == 256
    for jobs in (["--jobs=1"], []):
        got = ours(
            [
                str(path),
                *opts,
                *jobs,
                "--out-merkle-tree",
                f"{work}/t",
                "--out-descriptor",
                f"{work}/d",
            ],
            work,
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout == ref.stdout, (opts, jobs)
        assert got.stderr == ""
        assert (work / "t").read_bytes() == ref_tree, (opts, jobs, "tree")
        assert (work / "d").read_bytes() == ref_desc, (opts, jobs, "descriptor")
    for name in ("t", "d", "t.ref", "d.ref"):
        (work / name).unlink()
    return ref.stdout, len(ref_tree)


def tree_opts(alg: str, block_size: int, salt: bytes) -> list[str]:
    return [f"--hash-alg={alg}", f"--block-size={block_size}", f"--salt={salt.hex()}"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.one_of(st.integers(0, 3 * 65536), st.integers(0, 400 * 1024)),
    seed=st.integers(0, 2**32 - 1),
    alg=st.sampled_from(sorted(DIGEST_SIZES)),
    block_size=st.sampled_from(BLOCK_SIZES),
    salt=st.binary(max_size=32),
    output=st.sampled_from(
        [[], ["--compact"], ["--for-builtin-sig"], ["--compact", "--for-builtin-sig"]]
    ),
)
def test_random_files_and_parameters(
    *, size: int, seed: int, alg: str, block_size: int, salt: bytes, output: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        f = work / "data"
        f.write_bytes(random.Random(seed).randbytes(size))
        compare_outputs(f, tree_opts(alg, block_size, salt) + output, work)


def boundaries() -> list[tuple[str, int, int, int]]:
    """``(alg, block size, level, data blocks)`` for every level 1–3 boundary under 256 MiB.

    Each is tested at ``blocks - 1``, ``blocks`` and ``blocks + 1`` data blocks (the last both
    as one byte past the boundary and as a whole extra block).

    A tree over ``A**k`` data blocks (``A = B / D``) has ``k`` levels; one block more needs
    ``k + 1``.
    """
    out = []
    for alg, dsize in DIGEST_SIZES.items():
        for bs in BLOCK_SIZES:
            arity = bs // dsize
            for level in (1, 2, 3):
                blocks = arity**level
                if blocks * bs + 1 < LIMIT:
                    out.append((alg, bs, level, blocks))
    return out


def make_patterned(path: Path, size: int, block_size: int) -> None:
    """A sparse file whose every block differs: its index in the first 8 bytes, zeros after."""
    with path.open("wb") as f:
        f.truncate(size)
        fd = f.fileno()
        for index in range(-(-size // block_size)):
            off = index * block_size
            stamp = index.to_bytes(8, "little")[: size - off]
            os.pwrite(fd, stamp, off)


BOUNDARIES = boundaries()


def _boundary_id(case: tuple[str, int, int, int]) -> str:
    alg, bs, level, blocks = case
    return f"{alg}-{bs}-L{level}-{blocks}blocks"


SLOW_BYTES = 8 << 20


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c, id=_boundary_id(c), marks=[pytest.mark.slow] if c[1] * c[3] > SLOW_BYTES else []
        )
        for c in BOUNDARIES
    ],
)
def test_level_boundaries(case: tuple[str, int, int, int], tmp_path: Path) -> None:
    alg, bs, level, blocks = case
    params = TreeParams(hashalg.by_name(alg), bs, b"\n\v")
    for size, levels in (
        ((blocks - 1) * bs, level),
        (blocks * bs, level),
        (blocks * bs + 1, level + 1),
        ((blocks + 1) * bs, level + 1),
    ):
        f = tmp_path / "data"
        make_patterned(f, size, bs)
        line, tree_size = compare_outputs(
            f, [f"--hash-alg={alg}", f"--block-size={bs}", "--salt=0a0b"], tmp_path
        )
        assert line.startswith(f"{alg}:")
        geometry = params.geometry(size)
        assert geometry.num_levels == levels
        assert tree_size == geometry.tree_size
        f.unlink()


def test_boundary_list_is_complete() -> None:
    """The brief's example (1 KiB blocks, sha256: 32, 1024, 32768 blocks) is covered."""
    got = {(a, b, n) for a, b, _lvl, n in BOUNDARIES}
    assert {("sha256", 1024, 32), ("sha256", 1024, 1024), ("sha256", 1024, 32768)} <= got
    assert ("sha256", 4096, 128**3) not in got  # 8 GiB: over the limit
    assert all(n * b < LIMIT for _a, b, _l, n in BOUNDARIES)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "a1").write_bytes(b"a")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    return tmp_path


S33 = "ab" * 33
ERROR_CASES = [
    [],
    ["--block-size=3", "a1"],
    ["--block-size=0", "a1"],
    ["--block-size=abc", "a1"],
    ["--block-size=-1024", "a1"],
    ["--block-size=4294967296", "a1"],
    ["--block-size=32", "a1"],
    ["--block-size=64", "--hash-alg=sha512", "a1"],
    ["--block-size=32", "empty"],
    ["--block-size=32", "dir"],
    ["--block-size=32", "missing"],
    ["--salt=zz", "a1"],
    ["--salt=abc", "a1"],
    [f"--salt={S33}", "a1"],
    [f"--salt={S33}", "--hash-alg=3", "--block-size=32", "a1"],
    ["--hash-alg=md5", "a1"],
    ["--hash-alg=SHA256", "a1"],
    ["--hash-alg=0", "a1"],
    ["--hash-alg=", "a1"],
    ["--hash-alg=3", "a1"],
    ["--hash-alg=3", "--block-size=32", "a1"],
    ["missing"],
    ["dir"],
    ["a1", "missing", "a1"],
    ["--hash-alg=sha256", "--hash-alg=sha512", "a1"],
    ["--block-size=4096", "--block-size=4096", "a1"],
    ["--salt=ab", "--salt=ab", "a1"],
    ["--salt=", "--salt=", "a1"],
    ["--out-descriptor=x", "--out-descriptor=y", "a1"],
    ["--out-merkle-tree=/nonexistent/t", "a1"],
    ["--out-descriptor=dir", "a1"],
    ["--bogus", "a1"],
    ["--bogus=3", "a1"],
    ["--out", "a1"],
    ["--o=x", "a1"],
    ["--he", "a1"],
    ["-h", "a1"],
    ["-ab", "a1"],
    ["--compact=1", "a1"],
    ["--for-builtin-sig=", "a1"],
    ["a1", "--salt"],
    ["--sa"],
    ["--salt", "--compact", "a1"],
    ["--h", "a1"],
    ["a1", "--", "--compact"],
    ["--", "--help"],
]


def _error_lines(stderr: str) -> list[str]:
    """The diagnostic lines (before the usage text, which names the tool)."""
    lines = stderr.splitlines()
    return lines[: lines.index("Usage:")] if "Usage:" in lines else lines


@pytest.mark.parametrize("args", ERROR_CASES, ids=[" ".join(a) or "(none)" for a in ERROR_CASES])
def test_errors_match(args: list[str], files: Path) -> None:
    ref = real(args, files)
    got = ours(args, files)
    assert ref.returncode != 0
    assert got.returncode == ref.returncode, got.stderr
    assert _error_lines(got.stderr) == _error_lines(ref.stderr)
    assert ("Usage:" in got.stderr) == ("Usage:" in ref.stderr)
    assert got.stdout == ref.stdout
    assert "Traceback" not in got.stderr


OK_CASES = [
    ["a1"],
    ["--b", "1024", "a1"],
    ["--ha", "sha512", "a1"],
    ["--h", "2", "a1"],
    ["--hash-alg= 2", "a1"],
    ["--hash-alg=+1", "a1"],
    ["--block-size=+1024", "a1"],
    ["--block-size", " 2048", "a1"],
    ["--salt=AB", "a1"],
    ["--salt=", "a1"],
    ["--c", "a1"],
    ["--for", "a1"],
    ["a1", "--compact", "--compact"],
    ["--compact", "--for-builtin-sig", "a1", "empty"],
    ["--help"],
    ["a1", "--help"],
    ["--salt", "--help"],
]


@pytest.mark.parametrize("args", OK_CASES, ids=[" ".join(a) for a in OK_CASES])
def test_successes_match(args: list[str], files: Path) -> None:
    ref = real(args, files)
    got = ours(args, files)
    assert ref.returncode == 0
    assert got.returncode == 0, got.stderr
    assert got.stdout == ref.stdout.replace("fsverity digest", "pyverity digest").replace(
        "[--compact] [--for-builtin-sig]\n", "[--compact] [--for-builtin-sig] [--jobs=N]\n"
    )
    assert got.stderr == ""


def test_stdin_matches_file(files: Path) -> None:
    data = random.Random(7).randbytes(300_000)
    (files / "f").write_bytes(data)
    ref = real(["--block-size=1024", "f"], files)
    got = subprocess.run(
        [*PYVERITY, "digest", "--block-size=1024", "-"],
        cwd=files,
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert got.returncode == 0
    assert got.stdout.decode() == ref.stdout.replace(" f\n", " -\n")


def test_multiple_files_with_outputs(files: Path) -> None:
    """fsverity writes every descriptor one after another, and each tree over offset 0."""
    make_patterned(files / "big", 600_000, 4096)
    (files / "small").write_bytes(bytes(10_000))
    names = ["big", "small", "a1"]
    ref = real([*names, "--out-merkle-tree=t.ref", "--out-descriptor=d.ref"], files)
    got = ours([*names, "--out-merkle-tree=t", "--out-descriptor=d"], files)
    assert got.returncode == ref.returncode == 0
    assert got.stdout == ref.stdout
    assert (files / "t").read_bytes() == (files / "t.ref").read_bytes()
    assert (files / "d").read_bytes() == (files / "d.ref").read_bytes()


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0,
    reason="needs root and setpriv (util-linux) to run both tools as an unprivileged user",
)
def test_unreadable_file_matches() -> None:
    """A file the caller cannot read: same message and exit code, run as user nobody."""
    assert SETPRIV is not None
    assert FSVERITY is not None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        secret = work / "secret"
        secret.write_bytes(b"x")
        secret.chmod(0)
        drop = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
        ref = run([*drop, FSVERITY, "digest", "secret"], work)
        got = run([*drop, *PYVERITY, "digest", "secret"], work)
    assert ref.returncode == 1
    assert ref.stderr == "ERROR: can't open 'secret' for reading: Permission denied\n"
    assert (got.returncode, got.stderr, got.stdout) == (ref.returncode, ref.stderr, ref.stdout)
