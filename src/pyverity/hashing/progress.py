"""Progress reporting and cancellation hooks shared by the builders."""

from __future__ import annotations

from collections.abc import Callable

from pyverity.errors import CancelledError

__all__ = ["CancelCheck", "ProgressFn", "check_cancel"]

#: Called with the number of data bytes hashed so far.
ProgressFn = Callable[[int], None]
#: Returns True when the build should stop.
CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("tree build cancelled")
