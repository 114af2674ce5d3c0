"""Attribute helpers on a real filesystem (user.* works unprivileged on tmpfs and ext4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyverity.errors import FormatError
from pyverity.fs.xattr import attr_name, get_attr, remove_attr, set_attr


def test_round_trip_and_absence(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    name = attr_name("user", "verity")
    try:
        set_attr(f, name, b"abc")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no user xattrs on {tmp_path}: {e}")
    assert get_attr(f, name) == b"abc"
    with pytest.raises(FormatError, match="more than 2"):
        get_attr(f, name, limit=2)
    assert remove_attr(f, name) is True
    assert get_attr(f, name) is None
    assert remove_attr(f, name) is False


def test_unknown_namespace() -> None:
    with pytest.raises(FormatError, match="namespace"):
        attr_name("trusted", "ima")
