"""cluster.plan, cluster.tasks, cluster.connect without a cluster; dask stays unimported."""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.cluster.connect import parse_target
from pyverity.cluster.plan import Cut, batches, jobs_for
from pyverity.cluster.tasks import Kind, load_replies, run_jobs, run_packed, run_unit
from pyverity.errors import UsageError
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.hashing.subtree import fold_roots


def test_big_file_cut_into_subtree_ranges_and_folded(tmp_path: Path) -> None:
    params = TreeParams()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(3 * (512 << 10) + 777))
    cut = Cut(task_bytes=1 << 20)  # height 1 (512 KiB subtrees), two per task
    jobs = jobs_for(0, str(f), f.stat().st_size, cut, params=params)
    assert [j.kind for j in jobs] == [Kind.RANGE, Kind.RANGE]
    assert [list(b) for b in batches(jobs, cut)] == [[jobs[0]], [jobs[1]]]
    results = run_jobs(jobs)
    assert all(r.error is None and r.seen is not None for r in results)
    assert [len(r.value) for r in results] == [2, 2]  # type: ignore[arg-type]
    roots: list[bytes] = []
    for r in results:
        assert isinstance(r.value, tuple)
        roots += r.value
    desc = fold_roots(params, f.stat().st_size, jobs[0].height, roots)
    assert desc == build_tree(str(f), params, keep_tree=False).descriptor


def test_small_files_batched_whole_and_hash_jobs_sequential(tmp_path: Path) -> None:
    cut = Cut(task_bytes=10_000, files=3)
    jobs = [jobs_for(i, f"p{i}", 4000, cut, params=TreeParams())[0] for i in range(5)]
    assert [len(b) for b in batches(jobs, cut)] == [3, 2]
    big = jobs_for(0, "x", 10 << 30, cut, params=None, hashes=("sha256",))
    assert [j.kind for j in big] == [Kind.HASH]


def test_changed_and_missing_files_come_back_as_values(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    job = jobs_for(0, str(f), 4, Cut(), params=TreeParams())[0]  # listed at 4 bytes
    (changed,) = run_jobs([job])
    assert changed.changed
    assert changed.value is None
    (missing,) = run_jobs([jobs_for(0, str(tmp_path / "nope"), 1, Cut(), params=TreeParams())[0]])
    assert missing.error is not None
    assert not missing.changed


def test_a_units_replies_go_back_as_plain_data(tmp_path: Path) -> None:
    """run_packed's bytes hold only tuples, ints, bytes, strings and None (no class to look up
    per file: a Seen or a Descriptor in a reply would cost a reduce per file both ways)."""
    (tmp_path / "a").write_bytes(os.urandom(5000))
    (tmp_path / "b").write_bytes(os.urandom(70_000))
    cut = Cut(task_bytes=1 << 20)
    jobs = [
        jobs_for(0, "a", 5000, cut, params=TreeParams(), hashes=("sha256",), root=str(tmp_path))[0],
        jobs_for(1, "b", 70_000, cut, params=TreeParams(), root=str(tmp_path))[0],
        jobs_for(2, "nope", 1, cut, params=TreeParams(), root=str(tmp_path))[0],
    ]
    blob = run_packed(jobs)
    assert isinstance(blob, bytes)
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"}
    replies = load_replies(blob)
    assert replies == run_unit(jobs)
    assert [r[2] is None for r in replies] == [True, True, False]
    assert type(replies[0][0]) is tuple


def test_targets() -> None:
    assert parse_target("local:3").workers == 3
    assert parse_target("local").workers >= 1
    assert parse_target("tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    assert parse_target("tls://scheduler.example:8786").address is not None
    with pytest.raises(UsageError, match="off loopback"):
        parse_target("tcp://192.0.2.1:8786")
    assert parse_target("tcp://192.0.2.1:8786", insecure=True).insecure
    for bad in ("local:0", "udp://x:1", "tcp://host", "nonsense"):
        with pytest.raises(UsageError, match="invalid --cluster"):
            parse_target(bad)


def test_dask_not_imported_by_other_verbs() -> None:
    code = (
        "import sys; from pyverity.cli import main\n"
        "try:\n    main(['sign', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "import pyverity.cluster.plan, pyverity.cluster.tasks\n"
        "assert 'distributed' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
