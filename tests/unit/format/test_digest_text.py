"""format.digest: a digest's alg:hex text, written and parsed in one place."""

from __future__ import annotations

import pytest

from pyverity.errors import FormatError
from pyverity.format.digest import FileDigest, format_digest, parse_digest


def test_round_trip() -> None:
    text = format_digest("sha256", bytes(range(4)))
    assert text == "sha256:00010203"
    assert parse_digest(text) == ("sha256", bytes(range(4)))
    assert str(FileDigest("sha512", b"\xff", 2)) == "sha512:ff"


@pytest.mark.parametrize("bad", ["sha256", ":00", "sha256:", "sha256:0g", "sha256:123"])
def test_refusals(bad: str) -> None:
    with pytest.raises(FormatError):
        parse_digest(bad)
