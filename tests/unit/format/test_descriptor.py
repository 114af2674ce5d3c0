"""The descriptor layout of spec/fsverity.md §3-§4, byte for byte."""

from __future__ import annotations

import hashlib

import pytest

from pyverity.errors import FormatError
from pyverity.format import SHA256, SHA512, Descriptor, FormattedDigest, TreeParams

ROOT_A1 = bytes.fromhex("344bcc8eac81250e918967cb0ba2d1cd1ea9d548141cf318f2025c2ba93b6ed2")
DIGEST_A1 = "bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557"


def test_descriptor_of_one_byte_file_matches_spec_dump() -> None:
    d = Descriptor.for_tree(TreeParams(), 1, ROOT_A1)
    raw = d.to_bytes()
    assert len(raw) == 256
    assert raw[:16] == bytes.fromhex("01010c00000000000100000000000000")
    assert raw[16:48] == ROOT_A1
    assert not any(raw[48:])
    assert d.digest().hex() == DIGEST_A1
    assert hashlib.sha256(raw).hexdigest() == DIGEST_A1


def test_round_trip_with_salt_and_sha512() -> None:
    params = TreeParams(SHA512, 1024, b"\x01\x02\x03")
    d = Descriptor.for_tree(params, 123456, bytes(range(64)))
    assert Descriptor.from_bytes(d.to_bytes()) == d
    assert d.params == params


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (0, "version"),
        (4, "sig_size"),
        (200, "reserved"),
        (16 + 32, "root padding"),
        (80 + 5, "salt padding"),
    ],
)
def test_strict_parse_rejects_nonzero_fields(offset: int, what: str) -> None:
    raw = bytearray(Descriptor.for_tree(TreeParams(), 1, ROOT_A1).to_bytes())
    raw[offset] ^= 0x40
    with pytest.raises(FormatError):
        Descriptor.from_bytes(bytes(raw))
    assert what  # names the case in the test id


@pytest.mark.parametrize("size", [0, 255, 257, 16384])
def test_wrong_length_rejected(size: int) -> None:
    with pytest.raises(FormatError, match="256"):
        Descriptor.from_bytes(bytes(size))


def test_unknown_algorithm_rejected() -> None:
    raw = bytearray(Descriptor.for_tree(TreeParams(), 1, ROOT_A1).to_bytes())
    raw[1] = 3
    with pytest.raises(FormatError, match="unknown hash algorithm"):
        Descriptor.from_bytes(bytes(raw))


def test_formatted_digest_matches_spec() -> None:
    fd = FormattedDigest(SHA256.number, bytes.fromhex(DIGEST_A1))
    assert fd.to_bytes().hex() == "465356657269747901002000" + DIGEST_A1
    assert FormattedDigest.from_bytes(fd.to_bytes()) == fd
