"""Where the real kernel's measurement list lives (tests/vectors, else the shared copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[3]
_CANDIDATES = (
    _REPO / "tests" / "vectors" / "kernel-6.1-ima",
    Path("/work/shared/vectors/kernel-6.1-ima"),
)


def kernel_vectors_dir() -> Path:
    """The kernel 6.1 IMA vectors; skip (saying why) if neither copy exists."""
    for candidate in _CANDIDATES:
        if (candidate / "binary_runtime_measurements").is_file():
            return candidate
    pytest.skip("kernel-6.1-ima vectors not found in tests/vectors or /work/shared/vectors")
