"""security.ima values: strict parsing, serialization, ima_file_id (spec/ima.md §1, §2)."""

from __future__ import annotations

import hashlib

import pytest

from pyverity.errors import FormatError, UsageError
from pyverity.format.ima import (
    HASH_ALGOS,
    HashAlgoId,
    ImaHash,
    ImaSignature,
    XattrType,
    algo_by_id,
    algo_by_name,
    file_id_hash,
    ima_file_id,
    kernel_algo_for_verity,
    parse_ima_value,
    verity_number_for_kernel,
)

HELLO = b"hello world\n"
HELLO_VERITY = bytes.fromhex("37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92")


def test_kernel_ids_and_verity_mapping() -> None:
    assert algo_by_id(4).name == "sha256"
    assert algo_by_id(6).digest_size == 64
    assert len(HASH_ALGOS) == 23
    assert [a.id for a in HASH_ALGOS] == list(range(23))
    assert kernel_algo_for_verity(1).id == 4
    assert kernel_algo_for_verity(2).id == 6
    assert verity_number_for_kernel(4) == 1
    assert verity_number_for_kernel(6) == 2
    with pytest.raises(FormatError, match="cannot be used with fs-verity"):
        verity_number_for_kernel(HashAlgoId.SHA1)
    with pytest.raises(FormatError, match="unknown IMA hash algorithm id 23"):
        algo_by_id(23)
    with pytest.raises(FormatError):
        kernel_algo_for_verity(3)
    assert algo_by_name("SHA512").id == 6
    with pytest.raises(UsageError):
        algo_by_name("wp256")  # known to the kernel, not computable here


def test_evmctl_ima_hash_values_parse() -> None:
    """Values `evmctl ima_hash` wrote for hello world (spec §1.2, verified there)."""
    sha256 = hashlib.sha256(HELLO).digest()
    v = parse_ima_value(b"\x04\x04" + sha256)
    assert v == ImaHash(4, sha256)
    assert v.to_bytes() == b"\x04\x04" + sha256
    sha1 = hashlib.sha1(HELLO).digest()  # noqa: S324
    v1 = parse_ima_value(b"\x01" + sha1)
    assert v1 == ImaHash(2, sha1, XattrType.IMA_XATTR_DIGEST)
    assert ImaHash.for_digest(2, sha1).to_bytes() == b"\x01" + sha1
    assert ImaHash.for_digest(6, hashlib.sha512(HELLO).digest()).to_bytes()[:2] == b"\x04\x06"
    md5 = parse_ima_value(b"\x01" + bytes(16))
    assert isinstance(md5, ImaHash)
    assert md5.hash_algo == HashAlgoId.MD5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty"),
        (b"\x02" + bytes(20), "EVM-only type 0x02"),
        (b"\x05\x02\x04" + bytes(6), "EVM-only type 0x05"),
        (b"\x07\x00", "unknown type 0x07"),
        (b"\x00\x00", "unknown type 0x00"),
        (b"\x01" + bytes(19), "length 20"),
        (b"\x04", "truncated"),
        (b"\x04\x04" + bytes(31), "length 33, expected 34"),
        (b"\x04\x04" + bytes(33), "length 35, expected 34"),
        (b"\x04\x17" + bytes(32), "unknown IMA hash algorithm id 23"),
        (b"\x03\x02\x04\x00\x00\x00\x01\x00", "no longer than its 9-byte header"),
        (b"\x03\x02\x04\x00\x00\x00\x01\x00\x00", "no longer than its 9-byte header"),
        (b"\x03\x02\x04\x00\x00\x00\x01\x00\x02\xaa", "sig_size 2, but 1 bytes follow"),
        (b"\x03\x02\x04\x00\x00\x00\x01\x00\x01\xaa\xbb", "sig_size 1, but 2 bytes follow"),
        (b"\x03\x02\x04\x00\x00\x00\x01\x01\x00\xaa", "sig_size 256, but 1 bytes follow"),
        (b"\x03\x03\x04\x00\x00\x00\x01\x00\x01\xaa", "v3 signature in a type 0x03"),
        (b"\x03\x01" + bytes(30), "legacy v1"),
        (b"\x03\x04\x04\x00\x00\x00\x01\x00\x01\xaa", "unsupported IMA signature version 4"),
        (b"\x06\x02\x04\x00\x00\x00\x01\x00\x01\xaa", "must be version 3, not 2"),
        (b"\x06\x03\x02\x00\x00\x00\x01\x00\x01\xaa", "sha1 cannot be used with fs-verity"),
        (b"\x03\x02\x17\x00\x00\x00\x01\x00\x01\xaa", "unknown IMA hash algorithm id 23"),
        (b"\x06", "truncated"),
    ],
)
def test_malformed_values_refused(value: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_ima_value(value)


def test_signature_round_trip_and_header_layout() -> None:
    sig = ImaSignature.v3(4, 0x459481DD, bytes(range(256)))
    raw = sig.to_bytes()
    assert raw[:9] == bytes.fromhex("0603044594 81dd 0100".replace(" ", ""))
    assert parse_ima_value(raw) == sig
    assert sig.keyid_hex == "459481dd"
    assert sig.is_verity
    v2 = ImaSignature.v2(6, 1, b"\x30" * 72)
    assert parse_ima_value(v2.to_bytes()) == v2
    assert not v2.is_verity
    with pytest.raises(FormatError, match="out of bounds"):
        ImaSignature.v2(4, 1, b"")
    with pytest.raises(FormatError, match="out of bounds"):
        ImaSignature.v2(4, 1, bytes(1025))
    with pytest.raises(FormatError, match="keyid"):
        ImaSignature.v2(4, 1 << 32, b"x")


def test_ima_file_id_vectors() -> None:
    """spec/ima.md §2.3 test vectors."""
    fid = ima_file_id(4, HELLO_VERITY)
    assert fid == b"\x06\x04" + HELLO_VERITY
    assert len(fid) == 34
    assert (
        file_id_hash(4, HELLO_VERITY).hex()
        == "47869ba41183247480c56c1c1a5bc65eb0e7578758cad0fccd46f31100fd4c44"
    )
    assert (
        file_id_hash(4, bytes(range(32))).hex()
        == "9b303486322dd28c2f7f7d80cf811cec14b75d19edd59d261cc4cf0dc644a8ee"
    )
    sig = ImaSignature.v3(4, 1, b"x")
    assert sig.signed_digest(HELLO_VERITY) == file_id_hash(4, HELLO_VERITY)
    with pytest.raises(FormatError, match="32 bytes"):
        ima_file_id(4, bytes(31))
    with pytest.raises(FormatError, match="only fs-verity"):
        ima_file_id(4, HELLO_VERITY, XattrType.EVM_IMA_XATTR_DIGSIG)
    assert ImaSignature.v2(4, 1, b"x").signed_digest(HELLO_VERITY) == HELLO_VERITY


def test_sha512_file_id_prefix() -> None:
    d = hashlib.sha512(b"x").digest()
    fid = ima_file_id(6, d)
    assert fid[:2] == b"\x06\x06"
    assert len(fid) == 66
    assert file_id_hash(6, d) == hashlib.sha512(fid).digest()


def test_hash_type_checks() -> None:
    with pytest.raises(FormatError, match="only md5 or sha1"):
        ImaHash(4, bytes(32), XattrType.IMA_XATTR_DIGEST)
    with pytest.raises(FormatError, match="not an IMA hash type"):
        ImaHash(4, bytes(32), XattrType.IMA_VERITY_DIGSIG)
    with pytest.raises(FormatError, match="not an IMA signature type"):
        ImaSignature(XattrType.IMA_XATTR_DIGEST_NG, 2, 4, 1, b"x")
    with pytest.raises(FormatError, match="not supported"):
        algo_by_id(0).hash(b"")
