"""The C library, loaded once per process for the few calls Python's ``os`` lacks
(``prctl``, ``ioprio_set``, ``inotify_*``, ``fstatfs``, ``syncfs``)."""

from __future__ import annotations

import ctypes
import functools

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL:
    """``libc`` with ``use_errno``; cached. The process's own symbols (``dlopen(NULL)``), which
    hold the C library Python runs on: no ``ctypes.util.find_library``, whose import costs
    about 10 ms of every command's start-up and which may run ``ldconfig``."""
    return ctypes.CDLL(None, use_errno=True)
