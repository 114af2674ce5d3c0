"""Stopping a process a test started: the one place for "SIGTERM, wait, then SIGKILL"."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["stop"]


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> int:
    """Send ``proc`` SIGTERM if it still runs, wait up to ``timeout`` seconds, then SIGKILL it;
    its exit status (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
