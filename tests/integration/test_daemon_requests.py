"""Control requests answer what is true (issue 9, item 7): denied callers are told so, missing
paths are missing, a dead daemon builds nothing, repeated rebuilds are one build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import Daemon, protect, pyverity, write_file

MiB = 1 << 20
#: Slow parameters (as in test_daemon_crash): the build lasts long enough to be caught.
OPTS = ("--hash-alg=sha512", "--block-size=1024", "--salt=0102")
NOBODY = 65534


def _building(d: Daemon, f: Path) -> None:
    assert str(d.wait_progress(f).state) == "BUILDING"


def test_rebuild_of_a_missing_path_says_so(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    missing = d.root / "no-such.bin"
    r = pyverity("rebuild", "--state-dir", str(d.state), str(missing))
    assert r.returncode == 1
    assert r.stdout.strip() == f"{missing}: no such file or directory"
    reply = d.request({"op": "rebuild", "path": str(missing)})
    assert reply["error"] == "no such file or directory"
    # Outside the roots it stays "permission denied", existing or not.
    assert d.request({"op": "rebuild", "path": "/no/such"})["error"] == "permission denied"


def test_a_denied_caller_is_told_so_not_that_no_daemon_runs(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    python = shutil.which("python3", path="/usr/bin")
    if python is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root and /usr/bin/python3 to run a client as nobody")
        pytest.skip("needs root and /usr/bin/python3 to run a client as nobody")
    d = make_daemon().start()
    f = d.root / "f.bin"
    write_file(f, MiB)
    src = Path(__file__).resolve().parents[2] / "src"
    cmd = [python, "-m", "pyverity.cli", "status", "--state-dir", str(d.state), str(f)]
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}

    def as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    r = as_nobody()
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"ERROR: permission denied: uid {NOBODY} may not use"), r.stderr
    assert "not running" not in r.stderr
    # Whether one runs, a caller who may not reach the socket is told it is denied.
    d.stop()
    r = as_nobody()
    assert r.returncode == 1
    assert r.stderr.startswith("ERROR: permission denied"), r.stderr


def test_a_dead_daemon_is_not_running_and_builds_nothing(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--workers", "1").start()
    f = d.root / "big.bin"
    # 8 GiB (sparse): with SHA-512 in vector lanes a 256 MiB build ended before it was seen.
    write_file(f, 8192 * MiB, sparse=True)
    protect(f, tmp_path, *OPTS, ns=d.ns)
    _building(d, f)
    run = ["status", "--state-dir", str(d.state)]
    assert "daemon: not running" not in pyverity(*run).stdout
    d.kill9()
    assert str(d.record(f).state) == "BUILDING"  # type: ignore[union-attr] # what the row says
    table = pyverity(*run).stdout
    line = next(x for x in table.splitlines() if x.endswith("(" + _not_running() + ")"))
    assert line.startswith("PENDING")
    assert "BUILDING" not in table
    assert table.splitlines()[-1] == "daemon: not running"
    out = pyverity(*run, "--json").stdout.splitlines()
    assert json.loads(out[0])["state"] == "PENDING"
    last = json.loads(out[-1])
    assert last["daemon"] == "not running"
    assert "BUILDING" not in last["totals"]


def _not_running() -> str:
    from pyverity.cli.status import _NOT_RUNNING

    return _NOT_RUNNING


def test_duplicate_rebuild_requests_are_one_build(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--workers", "1").start()
    f = d.root / "big.bin"
    write_file(f, 64 * MiB, sparse=True)
    digest, _, _ = protect(f, tmp_path, *OPTS, ns=d.ns)
    assert d.wait_state(f, "READY", timeout=120).digest == digest
    started = d.metrics()["pyverity_builds_started_total"]
    first = d.request({"op": "rebuild", "path": str(f)})
    assert first["state"] in ("PENDING", "BUILDING")
    for _ in range(3):
        again = d.request({"op": "rebuild", "path": str(f)})
        assert again["ok"]
        assert again["state"] in ("PENDING", "BUILDING")
    assert d.wait_state(f, "READY", timeout=120).digest == digest
    m = d.metrics()
    assert m["pyverity_rebuilds_coalesced_total"] == 3
    assert m["pyverity_builds_started_total"] == started + 1
    assert m["pyverity_builds_cancelled_total"] == 0
