"""Probes for extended attributes where a test writes its files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["require_user_xattrs", "user_xattrs_work"]


def user_xattrs_work(directory: Path) -> bool:
    """Whether ``user.*`` attributes can be set on a file in ``directory``."""
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def require_user_xattrs(directory: Path) -> None:
    """Skip (fail under CI=true) when ``directory`` has no ``user.*`` attributes."""
    if not user_xattrs_work(directory):
        message = f"no user.* extended attributes on {directory}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
