"""Reading and checking the attribute pair (DESIGN.md §2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.errors import FormatError
from pyverity.format import SHA256, SHA512, Descriptor, TreeParams
from pyverity.format.ima import ImaHash, ImaSignature
from pyverity.protect import (
    InvalidProtectionError,
    ProtectionKind,
    fingerprint,
    parse_protection,
    read_protection,
)

ROOT = bytes(range(32))


def _desc(size: int = 5000, block: int = 4096, alg: int = 1, salt: bytes = b"") -> bytes:
    root = ROOT if alg == 1 else bytes(64)
    log = block.bit_length() - 1
    return Descriptor(alg, log, size, root, salt).to_bytes()


SIG3 = ImaSignature.v3(4, 0x11223344, b"\x01" * 256).to_bytes()
SIG2 = ImaSignature.v2(4, 0x11223344, b"\x01" * 256).to_bytes()
HASH = ImaHash(4, bytes(32)).to_bytes()


def test_kinds() -> None:
    assert parse_protection(None, None, 1).kind is ProtectionKind.NONE
    p = parse_protection(_desc(), None, 5000)
    assert p.kind is ProtectionKind.VERITY
    assert p.unverified_descriptor is not None
    assert p.tree_params() == TreeParams(SHA256, 4096)
    p = parse_protection(_desc(block=1024, salt=b"ab"), SIG3, 5000)
    assert p.kind is ProtectionKind.VERITY_SIGNED
    assert p.tree_params() == TreeParams(SHA256, 1024, b"ab")
    assert p.signature is not None
    p = parse_protection(None, SIG3, 5000)
    assert p.kind is ProtectionKind.VERITY_SIGNED
    assert p.tree_params() == TreeParams(SHA256, 4096)  # defaults: 4 KiB, no salt
    sig512 = ImaSignature.v3(6, 1, b"x").to_bytes()
    assert parse_protection(None, sig512, 1).tree_params() == TreeParams(SHA512, 4096)
    assert parse_protection(None, SIG2, 1).kind is ProtectionKind.CLASSIC
    assert parse_protection(None, HASH, 1).kind is ProtectionKind.CLASSIC
    with pytest.raises(FormatError, match="no Merkle tree"):
        parse_protection(None, HASH, 1).tree_params()


@pytest.mark.parametrize(
    ("desc", "ima", "size", "message"),
    [
        (_desc(block=512), None, 5000, "out of bounds"),
        (_desc(block=131072), None, 5000, "out of bounds"),
        (_desc(size=4999), None, 5000, "not the file's size 5000"),
        (_desc()[:255], None, 5000, "255 bytes"),
        (_desc()[:-1] + b"\x01", None, 5000, "reserved"),
        (_desc(), SIG2, 5000, "classic"),
        (_desc(), HASH, 5000, "classic"),
        (_desc(), ImaSignature.v3(6, 1, b"x").to_bytes(), 5000, "descriptor uses sha256"),
        (None, b"\x02" + bytes(20), 5000, "EVM-only"),
        (None, SIG3[:-1], 5000, "sig_size"),
        (None, SIG3 + b"\0", 5000, "sig_size"),
        (None, b"\x03\x03" + SIG3[2:], 5000, "v3 signature in a type 0x03"),
    ],
)
def test_invalid_pairs(desc: bytes | None, ima: bytes | None, size: int, message: str) -> None:
    with pytest.raises(InvalidProtectionError, match=message) as e:
        parse_protection(desc, ima, size)
    assert e.value.fingerprint == fingerprint(desc, ima)
    assert e.value.reason == "malformed"


def test_too_many_levels() -> None:
    # sha512 with 1 KiB blocks: 16 hashes per block; 16**8 blocks need 9 levels.
    size = 1024 * 16**8 + 1
    desc = Descriptor(2, 10, size, bytes(64)).to_bytes()
    with pytest.raises(InvalidProtectionError, match="levels"):
        parse_protection(desc, None, size)


def test_fingerprint_distinguishes() -> None:
    fps = {
        fingerprint(None, None),
        fingerprint(b"", None),
        fingerprint(None, b""),
        fingerprint(b"a", b"b"),
        fingerprint(b"ab", None),
        fingerprint(b"a", None),
    }
    assert len(fps) == 6
    assert parse_protection(_desc(), None, 5000).fingerprint == fingerprint(_desc(), None)


@pytest.mark.parametrize("ns", ["user", "security"])
def test_read_from_fd(tmp_path: Path, ns: str) -> None:
    if ns == "security" and os.geteuid() != 0:
        pytest.skip("security.* attributes need root")
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    os.setxattr(f, f"{ns}.verity", _desc())
    os.setxattr(f, f"{ns}.ima", SIG3)
    fd = os.open(f, os.O_RDONLY)
    try:
        p = read_protection(fd, ns)
        assert p.kind is ProtectionKind.VERITY_SIGNED
        assert p.raw_ima == SIG3
        assert p.data_size == 5000
        other = "security" if ns == "user" else "user"
        if other == "user" or os.geteuid() == 0:
            assert read_protection(fd, other).kind is ProtectionKind.NONE
        os.setxattr(f, f"{ns}.ima", b"\x07")
        with pytest.raises(InvalidProtectionError, match="unknown type"):
            read_protection(fd, ns)
        os.setxattr(f, f"{ns}.ima", b"\x06\x03\x04" + b"\x06" * 3000)
        with pytest.raises(InvalidProtectionError, match="sig_size"):
            read_protection(fd, ns)
        os.setxattr(f, f"{ns}.ima", SIG3)
        os.setxattr(f, f"{ns}.verity", _desc(size=4999))
        with pytest.raises(InvalidProtectionError, match="file's size"):
            read_protection(fd, ns)
    finally:
        os.close(fd)
