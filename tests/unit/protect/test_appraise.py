"""Appraisal states and reasons (DESIGN.md §3), and signing's write order."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pyverity.errors import FileChangedError, IntegrityError
from pyverity.format import TreeParams
from pyverity.format.ima import ImaHash, ImaSignature, parse_ima_value
from pyverity.hashing import build_tree
from pyverity.keys import BadSignatureError, Keyring, UnknownKeyError, load_signer, sign_v2
from pyverity.protect import (
    AppraisalState,
    ContentMismatchError,
    MissingKeyringError,
    NotProtectedError,
    ProtectionKind,
    Reason,
    appraisal_result,
    appraise_file,
    enable_file,
    hash_file,
    imasign_file,
    parse_protection,
    sign_file,
    verify_file,
    verify_protection,
    write_hashed,
)
from pyverity.protect import sign as sign_module
from tests.unit.keys.keyhelpers import keyring_dir, make_key

NS = "user"


@pytest.fixture(scope="module")
def signer_and_ring() -> tuple[object, Keyring]:
    k = make_key()
    return load_signer(str(k.key_path), cert=k.cert_path), Keyring.from_directory(keyring_dir(k))


def _file(tmp_path: Path, data: bytes = b"hello world\n", name: str = "f") -> Path:
    f = tmp_path / name
    f.write_bytes(data)
    return f


def test_signed_file_ready_then_mismatch(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, ring = signer_and_ring
    f = _file(tmp_path)
    done = sign_file(f, signer, TreeParams(block_size=1024, salt=b"\x01\x02"), namespace=NS)
    assert done.signature is not None
    r = appraise_file(f, ring, namespace=NS)
    assert r.state is AppraisalState.READY
    assert r.reason is Reason.OK
    assert r.kind is ProtectionKind.VERITY_SIGNED
    assert r.digest == f"sha256:{done.descriptor.digest().hex()}"  # type: ignore[union-attr]
    verify_file(f, ring, namespace=NS)
    f.write_bytes(b"hello World\n")  # same size, other content
    r = appraise_file(f, ring, namespace=NS)
    assert r.state is AppraisalState.MISMATCH
    assert r.reason is Reason.CONTENT_MISMATCH
    with pytest.raises(ContentMismatchError):
        verify_file(f, ring, namespace=NS)
    assert appraise_file(f, None, namespace=NS).reason is Reason.NO_KEYRING


def test_signature_only_uses_default_params(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, ring = signer_and_ring
    f = _file(tmp_path, os.urandom(10000))
    sign_file(f, signer, namespace=NS)
    os.removexattr(f, "user.verity")
    assert appraise_file(f, ring, namespace=NS).state is AppraisalState.READY
    f.write_bytes(os.urandom(10000))
    r = appraise_file(f, ring, namespace=NS)
    assert r.state is AppraisalState.MISMATCH  # signature over the computed digest fails
    assert r.reason is Reason.BAD_SIGNATURE


def test_bad_declared_signature_is_invalid(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, ring = signer_and_ring
    f = _file(tmp_path)
    sign_file(f, signer, namespace=NS)
    sig = parse_ima_value(os.getxattr(f, "user.ima"))
    assert isinstance(sig, ImaSignature)
    flipped = bytearray(sig.signature)
    flipped[10] ^= 1
    os.setxattr(f, "user.ima", ImaSignature.v3(4, sig.keyid, bytes(flipped)).to_bytes())
    r = appraise_file(f, ring, namespace=NS)
    assert r.state is AppraisalState.INVALID
    assert r.reason is Reason.BAD_SIGNATURE
    with pytest.raises(BadSignatureError):
        verify_file(f, ring, namespace=NS)
    os.setxattr(f, "user.ima", ImaSignature.v3(4, sig.keyid ^ 1, sig.signature).to_bytes())
    r = appraise_file(f, ring, namespace=NS)
    assert (r.state, r.reason) == (AppraisalState.INVALID, Reason.UNKNOWN_KEY)
    with pytest.raises(UnknownKeyError):
        verify_file(f, ring, namespace=NS)


def test_unsigned_and_none_and_malformed(tmp_path: Path) -> None:
    f = _file(tmp_path)
    r = appraise_file(f, None, namespace=NS)
    assert (r.state, r.reason) == (AppraisalState.NONE, Reason.NO_ATTRIBUTE)
    with pytest.raises(NotProtectedError):
        verify_file(f, None, namespace=NS)
    enable_file(f, namespace=NS)
    assert appraise_file(f, None, namespace=NS).state is AppraisalState.READY
    with open(f, "ab") as fh:
        fh.write(b"more")
    r = appraise_file(f, None, namespace=NS)
    assert (r.state, r.reason) == (AppraisalState.INVALID, Reason.MALFORMED)
    assert "file's size" in r.message


def test_classic_hash_and_signature(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, ring = signer_and_ring
    f = _file(tmp_path, b"classic")
    os.setxattr(f, "user.ima", ImaHash(4, hashlib.sha256(b"classic").digest()).to_bytes())
    r = appraise_file(f, None, namespace=NS)
    assert (r.state, r.kind) == (AppraisalState.READY, ProtectionKind.CLASSIC)
    os.setxattr(f, "user.ima", ImaHash(4, hashlib.sha256(b"other").digest()).to_bytes())
    assert appraise_file(f, None, namespace=NS).state is AppraisalState.MISMATCH
    from pyverity.format.ima import algo_by_id

    os.setxattr(f, "user.verity", b"junk")
    done = imasign_file(f, signer, algo_by_id(6), namespace=NS)  # removes the descriptor
    assert done.signature is not None
    assert done.signature.hash_algo == 6
    assert os.getxattr(f, "user.ima") == done.signature.to_bytes()
    assert appraise_file(f, ring, namespace=NS).state is AppraisalState.READY
    f.write_bytes(b"classiC")
    r = appraise_file(f, ring, namespace=NS)
    assert (r.state, r.reason) == (AppraisalState.MISMATCH, Reason.BAD_SIGNATURE)


def test_enable_drops_stale_verity_signature(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, _ = signer_and_ring
    f = _file(tmp_path)
    sign_file(f, signer, namespace=NS)
    enable_file(f, TreeParams(block_size=2048), namespace=NS)
    with pytest.raises(OSError, match="No data"):
        os.getxattr(f, "user.ima")
    os.setxattr(f, "user.ima", sign_v2(signer, 4, bytes(32)).to_bytes())  # classic stays
    assert appraise_file(f, None, namespace=NS).reason is Reason.MALFORMED  # but conflicts


def test_descriptor_written_before_signature(
    tmp_path: Path, signer_and_ring, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    signer, _ = signer_and_ring
    f = _file(tmp_path)
    calls: list[str] = []
    real = sign_module.set_attr

    def record(target: object, name: str, value: bytes) -> None:
        calls.append(name)
        real(target, name, value)  # type: ignore[arg-type]

    monkeypatch.setattr(sign_module, "set_attr", record)
    sign_file(f, signer, namespace=NS)
    assert calls == ["user.verity", "user.ima"]


def test_changed_file_is_not_written(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    signer, _ = signer_and_ring
    f = _file(tmp_path)
    hashed = hash_file(f)
    f.write_bytes(b"changed content\n")
    with pytest.raises(FileChangedError):
        write_hashed(hashed, signer, namespace=NS)
    assert os.listxattr(f) == []


def test_result_and_verify_agree_on_wrong_inputs(tmp_path: Path) -> None:
    f = _file(tmp_path)
    tree = build_tree(f)
    p = parse_protection(tree.descriptor.to_bytes(), None, 12)
    assert appraisal_result(p, tree.descriptor, None).ok
    other = build_tree(f, TreeParams(block_size=1024)).descriptor
    assert appraisal_result(p, other, None).reason is Reason.MALFORMED  # caller error reported
    sig = parse_protection(None, ImaSignature.v3(4, 1, b"x").to_bytes(), 12)
    with pytest.raises(MissingKeyringError):
        verify_protection(sig, tree.descriptor, None)
    with pytest.raises(IntegrityError):
        verify_protection(parse_protection(None, None, 12), None, None)


def test_failed_signature_write_restores_descriptor(
    tmp_path: Path, signer_and_ring, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from pyverity.errors import StorageError

    signer, _ = signer_and_ring
    f = _file(tmp_path)
    enable_file(f, TreeParams(block_size=1024), namespace=NS)
    before = os.getxattr(f, "user.verity")
    real = sign_module.set_attr

    def fail_ima(target: object, name: str, value: bytes) -> None:
        if name.endswith(".ima"):
            raise StorageError("cannot write attribute user.ima: No space left on device")
        real(target, name, value)  # type: ignore[arg-type]

    monkeypatch.setattr(sign_module, "set_attr", fail_ima)
    with pytest.raises(StorageError):
        sign_file(f, signer, namespace=NS)
    assert os.getxattr(f, "user.verity") == before
    g = _file(tmp_path, name="g")
    with pytest.raises(StorageError):
        sign_file(g, signer, namespace=NS)
    assert os.listxattr(g) == []


def test_imasign_hashed_writes_what_imasign_file_writes(tmp_path: Path, signer_and_ring) -> None:  # type: ignore[no-untyped-def]
    from pyverity.format.ima import algo_by_id
    from pyverity.fs.openfile import identity

    signer, ring = signer_and_ring
    alg = algo_by_id(4)  # sha256
    a, b = _file(tmp_path, b"same", "a"), _file(tmp_path, b"same", "b")
    for f in (a, b):
        os.setxattr(f, "user.verity", b"stale")
    imasign_file(a, signer, alg, namespace=NS)
    hashed = sign_module.FileHash(str(b), identity(b.stat()), alg, hashlib.sha256(b"same").digest())
    done = sign_module.imasign_hashed(hashed, signer, namespace=NS)
    assert done.signature is not None
    assert sorted(os.listxattr(b)) == sorted(os.listxattr(a)) == ["user.ima"]
    assert os.getxattr(b, "user.ima") == os.getxattr(a, "user.ima")  # RSA: deterministic
    assert appraise_file(b, ring, namespace=NS).state is AppraisalState.READY
    # changed since it was hashed: nothing written
    c = _file(tmp_path, b"same", "c")
    stale = sign_module.FileHash(str(c), identity(c.stat()), alg, hashed.digest)
    c.write_bytes(b"other!")
    with pytest.raises(FileChangedError):
        sign_module.imasign_hashed(stale, signer, namespace=NS)
    assert os.listxattr(c) == []
    # write=False: the signature only
    d = _file(tmp_path, b"same", "d")
    only = sign_module.imasign_hashed(
        sign_module.FileHash(str(d), identity(d.stat()), alg, hashed.digest),
        signer,
        namespace=NS,
        write=False,
    )
    assert only.signature == done.signature
    assert os.listxattr(d) == []
