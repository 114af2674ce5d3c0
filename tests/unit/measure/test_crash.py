"""A writer killed (SIGKILL) in the middle of appending loses nothing it acknowledged."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from pyverity.measure import MeasurementLog, read_list, verify_list

_CHILD = """
import sys
from pyverity.measure import DigestField, MeasurementLog
log = MeasurementLog.open(sys.argv[1], default_template="ima-sigv2")
start = len(log)
i = 0
while True:
    log.append(DigestField("sha256", i.to_bytes(32, "big"), "verity"), f"/run{start}/{i}",
               signature=bytes(300))
    print(start + i + 1, flush=True)  # acknowledged: this many entries are in the list
    i += 1
"""


def test_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "list"
    acknowledged = 0
    for delay in (0.05, 0.2, 0.01):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        line = child.stdout.readline()  # at least one append done
        assert line
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        lines = [line, *out.split()]
        acknowledged = int(lines[-1].strip())
        with MeasurementLog.open(path) as log:  # repairs whatever the kill left
            assert len(log) >= acknowledged
            assert len(log) <= acknowledged + 1
        snap = read_list(path)
        assert snap.tail_problem is None
        assert verify_list(snap.records, expected=snap.pcrs).ok
    assert acknowledged > 3
