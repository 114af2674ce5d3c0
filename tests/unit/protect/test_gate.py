"""The appraisal gate: every protection kind x match / mismatch / untrusted / malformed, the
declared-only verdicts, the signature demands, and the result and raising forms agreeing."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pytest

from pyverity.errors import FormatError, Reason
from pyverity.format import TreeParams
from pyverity.format.descriptor import Descriptor
from pyverity.format.hashalg import SHA512
from pyverity.format.ima import ImaHash
from pyverity.hashing import build_tree
from pyverity.keys import Keyring, load_signer
from pyverity.keys.signer import Signer, sign_v2, sign_v3
from pyverity.protect import (
    InvalidProtectionError,
    ProtectionKind,
    SignatureCheck,
    Verdict,
    VerdictState,
    appraisal_result,
    builtin_signature_result,
    failure_result,
    parse_protection,
    verify_protection,
)
from pyverity.protect.attrs import Protection
from pyverity.store.statedb import State
from tests.unit.keys.keyhelpers import keyring_dir, make_key

DATA = b"the content that was protected\n" * 300
OTHER = b"the content that was protected\n" * 299 + b"the content that was CHANGED!!\n"
SIZE = len(DATA)
assert len(OTHER) == SIZE


@dataclass(frozen=True)
class Keys:
    signer: Signer
    ring: Keyring
    stranger: Signer


@pytest.fixture(scope="module")
def keys() -> Keys:
    k, s = make_key("ecdsa", "P-256"), make_key("ecdsa", "P-384")  # two distinct keys
    return Keys(
        load_signer(str(k.key_path), cert=k.cert_path),
        Keyring.from_directory(keyring_dir(k)),
        load_signer(str(s.key_path), cert=s.cert_path),
    )


def _desc(data: bytes, params: TreeParams | None = None) -> Descriptor:
    return build_tree(io.BytesIO(data), params or TreeParams()).descriptor


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _verity(data: bytes = DATA) -> Protection:
    return parse_protection(_desc(data).to_bytes(), None, SIZE)


def _signed(signer: Signer, *, descriptor: bool = True) -> Protection:
    d = _desc(DATA)
    sig = sign_v3(signer, d.hash_algorithm, d.digest()).to_bytes()
    return parse_protection(d.to_bytes() if descriptor else None, sig, SIZE)


def _classic_hash() -> Protection:
    return parse_protection(None, ImaHash(4, _sha256(DATA)).to_bytes(), SIZE)


def _classic_sig(signer: Signer) -> Protection:
    return parse_protection(None, sign_v2(signer, 4, _sha256(DATA)).to_bytes(), SIZE)


def _agree(protection: Protection, computed: Descriptor | bytes | None, ring: Keyring | None,
           **kw: object) -> Verdict:  # fmt: skip
    """The result form, checked against the raising form: same state, same error."""
    verdict = appraisal_result(protection, computed, ring, **kw)  # type: ignore[arg-type]
    if verdict.failed:
        assert verdict.error is not None
        with pytest.raises(type(verdict.error)) as e:
            verify_protection(protection, computed, ring, **kw)  # type: ignore[arg-type]
        assert e.value.reason is verdict.reason
        assert str(e.value) == verdict.message
    else:
        assert verify_protection(protection, computed, ring, **kw) is verdict.state  # type: ignore[arg-type]
    return verdict


def _state(v: Verdict) -> tuple[VerdictState, Reason]:
    return v.state, v.reason


# -- descriptor only (VERITY) ----------------------------------------------------------------
def test_descriptor_match_and_mismatch() -> None:
    p = _verity()
    assert p.kind is ProtectionKind.VERITY
    ready = _agree(p, _desc(DATA), None)
    assert _state(ready) == (VerdictState.READY, Reason.OK)
    assert ready.digest == f"sha256:{_desc(DATA).digest().hex()}"
    mismatch = _agree(p, _desc(OTHER), None)
    assert _state(mismatch) == (VerdictState.MISMATCH, Reason.CONTENT_MISMATCH)
    assert mismatch.message.startswith("content does not match: root hash ")
    named = appraisal_result(p, _desc(OTHER), None, name="/x")
    assert named.message.startswith("'/x': content does not match its descriptor: ")
    assert _state(_agree(p, None, None)) == (VerdictState.PENDING, Reason.OK)


def test_descriptor_untrusted_means_unsigned() -> None:
    p = _verity()
    # no signature: nothing to trust unless one is required
    assert _agree(p, _desc(DATA), None, signature=SignatureCheck.IF_KEYRING).ok
    required = _agree(p, _desc(DATA), None, signature=SignatureCheck.REQUIRE)
    assert _state(required) == (VerdictState.INVALID, Reason.NO_SIGNATURE)
    assert "the policy requires one" in required.message


def test_descriptor_malformed() -> None:
    with pytest.raises(InvalidProtectionError) as e:
        parse_protection(b"\x01" * 256, None, SIZE)
    assert e.value.bad_descriptor
    assert e.value.verity is None
    verdict = failure_result(e.value)
    assert _state(verdict) == (VerdictState.INVALID, Reason.MALFORMED)
    with pytest.raises(InvalidProtectionError):
        verdict.raise_if_failed()
    # a descriptor of other parameters than the declared ones is the caller's error
    wrong = _agree(_verity(), _desc(DATA, TreeParams(block_size=1024)), None)
    assert _state(wrong) == (VerdictState.INVALID, Reason.MALFORMED)


# -- descriptor and v3 signature (VERITY_SIGNED) ---------------------------------------------
def test_signed_descriptor_match_mismatch_untrusted(keys: Keys) -> None:
    p = _signed(keys.signer)
    assert p.kind is ProtectionKind.VERITY_SIGNED
    ready = _agree(p, _desc(DATA), keys.ring)
    assert _state(ready) == (VerdictState.READY, Reason.OK)
    assert ready.keyid == keys.signer.keyid
    assert _state(_agree(p, _desc(OTHER), keys.ring)) == (
        VerdictState.MISMATCH,
        Reason.CONTENT_MISMATCH,
    )
    stranger = _signed(keys.stranger)
    assert _state(_agree(stranger, _desc(DATA), keys.ring)) == (
        VerdictState.INVALID,
        Reason.UNKNOWN_KEY,
    )
    # the signature of other content over this descriptor: the attribute is bad, not the data
    forged = parse_protection(_desc(DATA).to_bytes(), _signed_other(keys.signer), SIZE)
    assert _state(_agree(forged, _desc(DATA), keys.ring)) == (
        VerdictState.INVALID,
        Reason.BAD_SIGNATURE,
    )
    # declared only: the signature is judged before anything is hashed
    assert _state(_agree(p, None, keys.ring)) == (VerdictState.PENDING, Reason.OK)
    assert _agree(forged, None, keys.ring).reason is Reason.BAD_SIGNATURE


def _signed_other(signer: Signer) -> bytes:
    d = _desc(OTHER)
    return sign_v3(signer, d.hash_algorithm, d.digest()).to_bytes()


def test_signed_descriptor_keyring_demands(keys: Keys) -> None:
    p = _signed(keys.stranger)
    assert _agree(p, _desc(DATA), None).reason is Reason.NO_KEYRING  # VERIFY (the default)
    # IF_KEYRING without a keyring: the descriptor is checked alone; with one, the signature
    assert _agree(p, _desc(DATA), None, signature=SignatureCheck.IF_KEYRING).ok
    untrusted = _agree(p, _desc(DATA), keys.ring, signature=SignatureCheck.IF_KEYRING)
    assert untrusted.reason is Reason.UNKNOWN_KEY
    # IGNORE: only the content against the descriptor (the fs-verity layer)
    assert _agree(p, _desc(DATA), None, signature=SignatureCheck.IGNORE).ok
    ignored = _agree(p, _desc(OTHER), None, signature=SignatureCheck.IGNORE)
    assert ignored.state is VerdictState.MISMATCH


def test_signed_descriptor_malformed(keys: Keys) -> None:
    d = _desc(DATA, TreeParams(SHA512))
    sig = sign_v3(keys.signer, 1, _desc(DATA).digest()).to_bytes()  # a sha256 signature
    with pytest.raises(InvalidProtectionError, match="signature is over a") as e:
        parse_protection(d.to_bytes(), sig, SIZE)
    assert not e.value.bad_descriptor
    assert e.value.verity is not None  # the descriptor alone still holds
    assert e.value.verity.unverified_descriptor == d
    with pytest.raises(InvalidProtectionError) as e:
        parse_protection(_desc(DATA).to_bytes(), sig[:9], SIZE)
    assert failure_result(e.value).reason is Reason.MALFORMED


# -- v3 signature alone ----------------------------------------------------------------------
def test_signature_only_match_mismatch_untrusted(keys: Keys) -> None:
    p = _signed(keys.signer, descriptor=False)
    assert (p.kind, p.unverified_descriptor) == (ProtectionKind.VERITY_SIGNED, None)
    assert _agree(p, _desc(DATA), keys.ring).ok
    # over the computed digest, a failing signature means the content differs
    assert _state(_agree(p, _desc(OTHER), keys.ring)) == (
        VerdictState.MISMATCH,
        Reason.BAD_SIGNATURE,
    )
    stranger = _signed(keys.stranger, descriptor=False)
    assert _agree(stranger, _desc(DATA), keys.ring).reason is Reason.UNKNOWN_KEY
    # without a keyring nothing vouches for the content, even if the caller is lenient
    lenient = _agree(p, _desc(DATA), None, signature=SignatureCheck.IF_KEYRING)
    assert _state(lenient) == (VerdictState.INVALID, Reason.NO_KEYRING)
    assert _agree(p, None, keys.ring).state is VerdictState.PENDING
    assert _agree(p, _desc(OTHER), None, signature=SignatureCheck.IGNORE).state is (
        VerdictState.PENDING  # nothing declared to compare the content with
    )


def test_signature_only_malformed(keys: Keys) -> None:
    good = _signed(keys.signer, descriptor=False).raw_ima
    assert good is not None
    sig = good[:-1]  # one byte short of its declared length
    with pytest.raises(InvalidProtectionError) as e:
        parse_protection(None, sig, SIZE)
    assert (e.value.bad_descriptor, e.value.verity) == (False, None)
    assert failure_result(e.value).state is VerdictState.INVALID


# -- classic (whole-file hash, 0x03 signature) -----------------------------------------------
def test_classic_hash_match_mismatch_malformed() -> None:
    p = _classic_hash()
    assert p.kind is ProtectionKind.CLASSIC
    assert _agree(p, _sha256(DATA), None).ok
    assert _state(_agree(p, _sha256(OTHER), None)) == (
        VerdictState.MISMATCH,
        Reason.CONTENT_MISMATCH,
    )
    assert _agree(p, None, None).state is VerdictState.CLASSIC  # judged without its content
    required = _agree(p, _sha256(DATA), None, signature=SignatureCheck.REQUIRE)
    assert required.reason is Reason.NO_SIGNATURE
    not_verity = _agree(p, _sha256(DATA), None, verity=True)
    assert _state(not_verity) == (VerdictState.INVALID, Reason.NOT_VERITY)
    assert "verity-signature-required" in not_verity.message
    with pytest.raises(InvalidProtectionError):
        parse_protection(None, b"\x04\x04" + bytes(5), SIZE)
    assert _agree(p, _desc(DATA), None).reason is Reason.MALFORMED  # caller error


def test_classic_signature_match_mismatch_untrusted(keys: Keys) -> None:
    p = _classic_sig(keys.signer)
    assert _agree(p, _sha256(DATA), keys.ring).ok
    assert _state(_agree(p, _sha256(OTHER), keys.ring)) == (
        VerdictState.MISMATCH,
        Reason.BAD_SIGNATURE,
    )
    assert _agree(_classic_sig(keys.stranger), _sha256(DATA), keys.ring).reason is (
        Reason.UNKNOWN_KEY
    )
    assert _agree(p, _sha256(DATA), None).reason is Reason.NO_KEYRING
    # a descriptor beside a classic value: invalid, but the descriptor alone still holds
    with pytest.raises(InvalidProtectionError, match="classic") as e:
        parse_protection(_desc(DATA).to_bytes(), p.raw_ima, SIZE)
    assert e.value.verity is not None


# -- no protection, states, built-in signatures ----------------------------------------------
def test_none_and_state_names() -> None:
    p = parse_protection(None, None, SIZE)
    verdict = _agree(p, None, None)
    assert _state(verdict) == (VerdictState.NONE, Reason.NO_ATTRIBUTE)
    assert "not protected" in verdict.message
    # every verdict but NONE (no record at all) is a state of the daemon, by name and value
    for state in VerdictState:
        if state is not VerdictState.NONE:
            assert State(state) is State[state.name]
    assert str(Reason.NO_KEYRING) == "no keyring"  # formats as the text verify prints


def test_builtin_signature_reasons(keys: Keys) -> None:
    from cryptography import x509

    from pyverity.format.formatted_digest import FormattedDigest
    from pyverity.keys.builtin_sig import builtin_signature
    from pyverity.keys.signer import load_private_key

    k = make_key("rsa", "2048")
    ring = Keyring.from_directory(keyring_dir(k))
    d = _desc(DATA)
    cert = x509.load_pem_x509_certificate(k.cert_path.read_bytes())
    key = load_private_key(k.key_path)

    def sig(digest: bytes) -> bytes:
        return builtin_signature(FormattedDigest(1, digest), key, cert)  # type: ignore[arg-type]

    assert builtin_signature_result(d, sig(d.digest()), ring).ok
    cases = [
        (sig(d.digest()), None, Reason.NO_KEYRING),
        (b"\x30\x03junk", ring, Reason.MALFORMED),
        (sig(bytes(32)), ring, Reason.BAD_SIGNATURE),
        (sig(d.digest()), keys.ring, Reason.UNKNOWN_KEY),
    ]
    for signature, keyring, reason in cases:
        verdict = builtin_signature_result(d, signature, keyring)
        assert _state(verdict) == (VerdictState.INVALID, reason), reason
        assert verdict.error is not None


def test_caller_errors_are_format_errors() -> None:
    with pytest.raises(FormatError, match="caller error"):
        verify_protection(_verity(), _sha256(DATA), None)
