"""Property tests: every security.ima value round-trips; any flipped bit fails verification."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.errors import FormatError
from pyverity.format.ima import (
    HASH_ALGOS,
    ImaHash,
    ImaSignature,
    XattrType,
    parse_ima_value,
)
from pyverity.keys import (
    BadSignatureError,
    Keyring,
    load_certificate,
    load_signer,
    sign_v2,
    sign_v3,
)
from pyverity.keys.signer import FileSigner
from tests.unit.keys.keyhelpers import make_key

hash_values = st.one_of(
    st.sampled_from(HASH_ALGOS).flatmap(
        lambda a: st.builds(
            ImaHash, st.just(a.id), st.binary(min_size=a.digest_size, max_size=a.digest_size)
        )
    ),
    st.sampled_from([1, 2]).flatmap(
        lambda i: st.builds(
            ImaHash,
            st.just(i),
            st.binary(min_size=HASH_ALGOS[i].digest_size, max_size=HASH_ALGOS[i].digest_size),
            st.just(XattrType.IMA_XATTR_DIGEST),
        )
    ),
)
signatures = st.one_of(
    st.builds(
        ImaSignature.v2,
        st.integers(0, len(HASH_ALGOS) - 1),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=1, max_size=1024),
    ),
    st.builds(
        ImaSignature.v3,
        st.sampled_from([4, 6]),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=1, max_size=1024),
    ),
)


@given(st.one_of(hash_values, signatures))
def test_round_trip(value: ImaHash | ImaSignature) -> None:
    raw = value.to_bytes()
    assert parse_ima_value(raw) == value
    assert parse_ima_value(raw).to_bytes() == raw


@given(st.binary(max_size=80))
def test_parse_never_crashes(data: bytes) -> None:
    try:
        value = parse_ima_value(data)
    except FormatError:
        return
    assert value.to_bytes() == data  # what parses, serializes back to the same bytes


@given(signatures, st.binary(min_size=1, max_size=4))
def test_trailing_or_missing_bytes_refused(sig: ImaSignature, extra: bytes) -> None:
    raw = sig.to_bytes()
    with pytest.raises(FormatError):
        parse_ima_value(raw + extra)
    with pytest.raises(FormatError):
        parse_ima_value(raw[:-1])


def _setup(kind: str, size: str) -> tuple[FileSigner, Keyring]:
    k = make_key(kind, size)
    signer = load_signer(str(k.key_path), cert=k.cert_path)
    return signer, Keyring.from_certificates([load_certificate(k.cert_path)])


KEYS = [("rsa", "2048"), ("ecdsa", "P-256")]


@pytest.mark.parametrize(("kind", "size"), KEYS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_flipped_bit_in_signature_fails(kind: str, size: str, data: st.DataObject) -> None:
    signer, ring = _setup(kind, size)
    digest = hashlib.sha256(data.draw(st.binary(max_size=64))).digest()
    v3 = data.draw(st.booleans())
    sig = sign_v3(signer, 1, digest) if v3 else sign_v2(signer, 4, digest)
    ring.verify_ima_signature(sig, digest)
    # ECDSA signatures vary in length (random k): draw from a fixed range, then reduce
    bit = data.draw(st.integers(0, 8 * 1024 - 1)) % (len(sig.signature) * 8)
    flipped = bytearray(sig.signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    bad = ImaSignature(sig.xattr_type, sig.version, sig.hash_algo, sig.keyid, bytes(flipped))
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(bad, digest)


@pytest.mark.parametrize(("kind", "size"), KEYS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_flipped_bit_in_digest_fails(kind: str, size: str, data: st.DataObject) -> None:
    signer, ring = _setup(kind, size)
    digest = hashlib.sha512(data.draw(st.binary(max_size=64))).digest()
    v3 = data.draw(st.booleans())
    sig = sign_v3(signer, 2, digest) if v3 else sign_v2(signer, 6, digest)
    ring.verify_ima_signature(sig, digest)
    bits = len(digest) * 8
    if kind == "ecdsa" and not v3:
        # ECDSA uses only the leftmost curve-size bits of the digest it signs (SEC 1 §4.1.4;
        # the kernel truncates the same way): a v2 SHA-512 digest under P-256 is checked on
        # its first 256 bits. v3 signs H(file id), so there every digest bit counts.
        bits = 256
    bit = data.draw(st.integers(0, len(digest) * 8 - 1)) % bits
    flipped = bytearray(digest)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadSignatureError):
        ring.verify_ima_signature(sig, bytes(flipped))


@given(
    st.one_of(st.none(), st.binary(min_size=250, max_size=260)),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.integers(0, 2**40),
)
def test_parse_protection_never_crashes(desc: bytes | None, ima: bytes | None, size: int) -> None:
    from pyverity.protect import InvalidProtectionError, ProtectionKind, parse_protection

    try:
        p = parse_protection(desc, ima, size)
    except InvalidProtectionError as e:
        assert e.fingerprint  # noqa: PT017 - the error must identify the values
        return
    assert (p.kind is ProtectionKind.NONE) == (desc is None and ima is None)
