"""Running ``evmctl`` (ima-evm-utils) as the tests do."""

from __future__ import annotations

import subprocess

__all__ = ["TOOL_TIMEOUT", "evmctl"]

TOOL_TIMEOUT = 120


def evmctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``evmctl ARGS`` with text output captured; the caller checks the return code."""
    return subprocess.run(
        ["evmctl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
