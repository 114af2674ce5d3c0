"""A tool or service a test needs: skipped with the reason where it is missing, a failure
under ``CI=true`` (CI installs everything, so a missing piece there is a broken set-up)."""

from __future__ import annotations

import os

import pytest

__all__ = ["need"]


def need(what: str, present: bool) -> None:
    """Skip without ``what`` (with the reason), or fail under ``CI=true``."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing (CI=true: a missing tool fails)", pytrace=False)
    pytest.skip(f"{what} is missing")
