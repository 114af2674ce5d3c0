"""Tree parameters and geometry: spec/fsverity.md §1-§2 size table."""

from __future__ import annotations

import pytest

from pyverity.errors import FormatError
from pyverity.format import SHA256, SHA512, TreeParams

GIB = 1 << 30


@pytest.mark.parametrize(
    ("size", "alg", "bs", "counts", "tree_bytes"),
    [
        (0, SHA256, 4096, (), 0),
        (4096, SHA256, 4096, (), 0),
        (4097, SHA256, 4096, (1,), 4096),
        (524288, SHA256, 4096, (1,), 4096),
        (524289, SHA256, 4096, (2, 1), 12288),
        (GIB, SHA256, 4096, (2048, 16, 1), 8_458_240),
        (GIB, SHA512, 4096, (4096, 64, 1), 17_043_456),
        (GIB, SHA256, 1024, (32768, 1024, 32, 1), 34_636_800),
    ],
)
def test_geometry_matches_spec_table(
    size: int, alg: object, bs: int, counts: tuple[int, ...], tree_bytes: int
) -> None:
    geo = TreeParams(alg, bs).geometry(size)  # type: ignore[arg-type]
    assert geo.level_counts == counts
    assert geo.tree_size == tree_bytes


def test_level_start_is_root_first() -> None:
    geo = TreeParams(SHA256, 1024).geometry(GIB)
    assert geo.level_start == (1 + 32 + 1024, 1 + 32, 1, 0)


@pytest.mark.parametrize("bs", [0, 3, 1000, 4095, -4096])
def test_block_size_must_be_power_of_two(bs: int) -> None:
    with pytest.raises(FormatError, match="power of 2"):
        TreeParams(SHA256, bs)


def test_block_size_at_least_two_digests() -> None:
    TreeParams(SHA256, 64)
    with pytest.raises(FormatError, match="too small"):
        TreeParams(SHA512, 64)


def test_salt_bound_and_padding() -> None:
    assert TreeParams(SHA256, salt=b"ab").padded_salt == b"ab" + bytes(62)
    assert TreeParams(SHA512, salt=bytes(32)).padded_salt == bytes(128)
    assert TreeParams().padded_salt == b""
    with pytest.raises(FormatError, match="salt size"):
        TreeParams(salt=bytes(33))


def test_bounded_parameters() -> None:
    TreeParams(SHA256, 1024).geometry(1 << 40).check_bounded()
    with pytest.raises(FormatError, match="out of bounds"):
        TreeParams(SHA256, 512).check_bounded()
    with pytest.raises(FormatError, match="out of bounds"):
        TreeParams(SHA256, 131072).check_bounded()
    with pytest.raises(FormatError, match="levels"):
        TreeParams(SHA512, 1024).geometry(1 << 62).check_bounded()
