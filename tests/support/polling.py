"""Waiting for a condition with a deadline: the one place a test may sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 30, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; AssertionError (with
    ``what`` and the last value) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what or probe} (last: {value!r})")
        time.sleep(interval)
