"""The C library, loaded once per process for the few calls Python's ``os`` lacks
(``prctl``, ``ioprio_set``, ``inotify_*``, ``fstatfs``, ``syncfs``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL:
    """``libc`` with ``use_errno``; cached, as ``find_library`` may run ``ldconfig``."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
