"""A writer killed (SIGKILL) in the middle of appending loses nothing it acknowledged."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from pyverity.measure import MeasurementLog, read_list, verify_list
from tests.support.polling import wait_until

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


def _await_acknowledged(out: IO[bytes], buffer: bytearray, count: int) -> None:
    """Read the writer's acknowledgements into ``buffer`` until it holds ``count`` lines (the
    writer has then done that many appends); AssertionError if not within 30 s."""
    fd = out.fileno()
    os.set_blocking(fd, False)

    def enough() -> bool:
        with contextlib.suppress(BlockingIOError):
            buffer.extend(os.read(fd, 1 << 16))
        return buffer.count(b"\n") >= count

    wait_until(enough, timeout=30, interval=0.001, what=f"{count} acknowledged appends")


def test_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "list"
    acknowledged = 0
    # Killed after this many acknowledged appends of one run: the kill lands at a different
    # point of the append under way each time (instead of after a chosen delay).
    for appends in (5, 20, 1):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        seen = bytearray()
        try:
            _await_acknowledged(child.stdout, seen, appends)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        os.set_blocking(child.stdout.fileno(), True)
        seen += child.stdout.read()
        child.stdout.close()
        lines = seen.split()
        assert len(lines) >= appends
        acknowledged = int(lines[-1])
        with MeasurementLog.open(path) as log:  # repairs whatever the kill left
            assert len(log) >= acknowledged
            assert len(log) <= acknowledged + 1
        snap = read_list(path)
        assert snap.tail_problem is None
        assert verify_list(snap.records, expected=snap.pcrs).ok
    assert acknowledged > 3
