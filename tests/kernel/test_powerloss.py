"""A daemon build cut by a real power loss (hard reset of the VM), then finished after reboot.

``kill -9`` leaves the page cache alone; a reset does not: whatever the daemon had not made
durable (fsync, or ext4's journal commit every 5 s) is gone when the machine comes back. Two
boots of one disk (see ``guest_powerloss.py``): the first starts a build of a large sparse file
(1 KiB blocks, sha512, so that it is slow under TCG) and resets the machine with ``sysrq b``
mid-build; the second looks at what survived, then finishes with ``crash_policy = resume`` and,
on a copy of the state, with ``restart``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyverity.format.digest import parse_digest
from pyverity.store.cache import TreeCache
from tests.kernel import harness
from tests.kernel.cases import GUEST_PY, HOST_ENTER, HOST_LEAVE
from tests.kernel.conftest import _TIMING, _need_vm

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

#: Sparse (all zeros): nothing to store, and hashing dominates; about 8 s of hashing under TCG
#: (about 45 MiB/s), of which some 3 s run before the reset.
BIG_SIZE = 384 << 20
PARAMS = ("--hash-alg=sha512", "--block-size=1024", "--salt=" + "5a" * 32)


@dataclass
class PowerLoss:
    first: harness.VMRun
    second: harness.VMRun
    facts: dict[str, str]
    expected_digest: str
    expected_tree: bytes
    results: Path

    def tree_in_cache(self, state: str) -> bytes:
        entry = TreeCache(self.results / state / "cache").get(*parse_digest(self.expected_digest))
        assert entry is not None, f"no cache object for {self.expected_digest} in {state}"
        return bytes(entry.unverified_tree)


def _guest_script() -> str:
    py = GUEST_PY
    return (
        "\n".join(
            [
                "R=/mnt/results",
                HOST_ENTER,
                "if [ -e /mnt/pl/phase1 ]; then",
                f"  {py} /mnt/guest_powerloss.py phase2 /mnt/pl /mnt/pl-state $R",
                "  echo phase2 $?",
                "else",
                "  vhelper setxattr /mnt/pl/big user.verity /mnt/pl-big.desc",
                "  touch /mnt/pl/phase1; sync",  # the last sync: from here on, nothing is flushed
                f"  {py} /mnt/guest_powerloss.py phase1 /mnt/pl /mnt/pl-state > /dev/console 2>&1",
                "fi",
                HOST_LEAVE,
            ]
        )
        + "\n"
    )


@pytest.fixture(scope="module")
def powerloss(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> PowerLoss:
    _need_vm()
    kernel = harness.find_kernel()
    assert kernel is not None
    initramfs = harness.initramfs_for(kernel)
    base = tmp_path_factory.mktemp("powerloss")
    stage = base / "stage"
    (stage / "pl").mkdir(parents=True)
    big = stage / "pl" / "big"
    with big.open("wb") as f:
        f.truncate(BIG_SIZE)
    desc, tree = base / "big.desc", base / "big.tree"
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "digest", *PARAMS, f"--out-descriptor={desc}",
         f"--out-merkle-tree={tree}", str(big)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = proc.stdout.split()[0]
    shutil.copyfile(desc, stage / "pl-big.desc")
    shutil.copyfile(Path(__file__).with_name("guest_powerloss.py"), stage / "guest_powerloss.py")
    (stage / "run.sh").write_text(_guest_script())
    disk = base / "disk.img"
    harness.make_disk(stage, disk, 320)
    first = harness.run_vm(kernel, initramfs, disk, timeout=180, share_host_root=True)
    (base / "console1.txt").write_text(first.console)
    second = harness.run_vm(kernel, initramfs, disk, timeout=420, share_host_root=True)
    (base / "console2.txt").write_text(second.console)
    if not second.finished:
        pytest.fail(f"the second boot did not finish; console tail:\n{second.console[-4000:]}")
    out = base / "out"
    results = harness.read_back(disk, "/results", out)
    for state in ("pl-state", "pl-state-restart"):
        harness.read_back(disk, f"/{state}", results)
    disk.unlink()
    request.config.stash.setdefault(_TIMING, []).append(
        f"power-loss case: boot cut by sysrq-b {first.seconds:.1f} s, "
        f"boot that resumes and restarts {second.seconds:.1f} s"
    )
    facts = {}
    for line in (results / "powerloss.out").read_text().splitlines():
        key, _, value = line.partition(" ")
        facts[key] = value
    return PowerLoss(first, second, facts, expected, tree.read_bytes(), results)


def _console_facts(run: harness.VMRun) -> dict[str, str]:
    out = {}
    for line in run.console.splitlines():
        if line.startswith("@@PL "):
            key, _, value = line[5:].partition(" ")
            out[key] = value
    return out


def test_reset_cut_the_build(powerloss: PowerLoss) -> None:
    seen = _console_facts(powerloss.first)
    assert int(seen["first-checkpoint"].split()[0]) > 0, powerloss.first.console[-3000:]
    assert "still-running-after-reset" not in seen
    assert not powerloss.first.finished  # no clean shutdown: init.sh never reached its end


def test_nothing_partial_was_published_and_the_database_opens(powerloss: PowerLoss) -> None:
    f = powerloss.facts
    assert f["survived-integrity"] == "ok"
    assert f["survived-objects"] == "[]"  # the unfinished build published no cache object
    assert "/mnt/pl/big" in f["survived-rows"]


def test_the_checkpoint_was_durable(powerloss: PowerLoss) -> None:
    """The leaf hashes are fsync'ed before their row, and each commit of the state database is
    durable (``synchronous=FULL``): after three checkpoints were committed (seen by another
    process), the reset must find a checkpoint, the build's row and enough saved leaf hashes."""
    f = powerloss.facts
    offset = int(f["survived-checkpoint"])
    at_reset = int(_console_facts(powerloss.first)["reset-at-checkpoint"].split()[0])
    assert 0 < offset <= at_reset < BIG_SIZE
    assert int(_console_facts(powerloss.first)["checkpoints-seen"]) >= 3
    assert f["survived-rows"] == "[(b'/mnt/pl/big', 'BUILDING')]"
    assert int(f["survived-leaves"]) >= offset // 1024 * 64


def test_resume_continues_from_the_durable_checkpoint(powerloss: PowerLoss) -> None:
    f = powerloss.facts
    offset = int(f["survived-checkpoint"])
    leaves = int(f["survived-leaves"])
    log = (powerloss.results / "pl-resume.log").read_text()
    assert f["resume-state"] == f"READY {powerloss.expected_digest}", log
    assert f["resume-exit"] == "0"
    hashed = int(float(f["resume-bytes_hashed"]))
    if offset and leaves >= offset // 1024 * 64:
        # The checkpoint row and its leaf hashes were durable: only the rest is hashed.
        assert f"resuming build at offset {offset}" in log
        assert hashed == BIG_SIZE - offset
    else:  # (test_the_checkpoint_was_durable fails then): at worst, a clean restart
        assert "building from offset 0" in log
        assert hashed == BIG_SIZE
    # The resumed tree (saved leaf hashes + the rest) is byte for byte `pyverity digest`'s.
    assert powerloss.tree_in_cache("pl-state") == powerloss.expected_tree


def test_restart_discards_and_completes(powerloss: PowerLoss) -> None:
    f = powerloss.facts
    log = (powerloss.results / "pl-restart.log").read_text()
    assert f["restart-state"] == f"READY {powerloss.expected_digest}", log
    assert "building from offset 0" in log
    assert int(float(f["restart-bytes_hashed"])) == BIG_SIZE
    assert powerloss.tree_in_cache("pl-state-restart") == powerloss.expected_tree
