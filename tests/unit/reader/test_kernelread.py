"""Reads of files the kernel verifies: chosen only when the kernel's digest is the appraised one.

A real fs-verity file is read inside the VM (tests/kernel/test_daemon_backend.py); here the
kernel's answer is substituted, to check which verifier ``pyverity.open`` picks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pyverity
from pyverity.errors import Error, IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import FileDigest
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.keys import Keyring, load_signer
from pyverity.protect import sign_file
from pyverity.reader import kernelread
from pyverity.reader.verifier import BlockVerifier
from pyverity.store import kernel
from pyverity.store.kernel import KernelVerity
from tests.support.fakekernel import FakeKernel
from tests.unit.keys.keyhelpers import keyring_dir, make_key
from tests.unit.reader.helpers import NS, OPTIONS, flip, protect


def _kernel_says(monkeypatch: pytest.MonkeyPatch, digest: FileDigest | None) -> None:
    verity = KernelVerity(digest) if digest is not None else None
    monkeypatch.setattr(kernelread, "kernel_digest", lambda fd: verity)


def test_no_fs_verity_here_is_verified_block_by_block(tmp_path: Path) -> None:
    tree = protect(tmp_path / "f", os.urandom(10_000))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert not kernelread.kernel_enforces(fd, tree.descriptor)
        assert kernelread.kernel_descriptor_of(fd) is None
    finally:
        os.close(fd)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert type(f.raw.verifier) is BlockVerifier  # type: ignore[attr-defined]


def test_kernel_digest_equal_to_the_descriptor_reads_by_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(20_000)
    tree = protect(tmp_path / "f", data)
    _kernel_says(monkeypatch, tree.file_digest())
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert isinstance(f.raw.verifier, kernelread.KernelVerified)  # type: ignore[attr-defined]
        assert f.read() == data


def test_other_kernel_digest_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protect(tmp_path / "f", os.urandom(20_000))
    other = protect(tmp_path / "g", os.urandom(20_000), TreeParams(block_size=1024))
    _kernel_says(monkeypatch, other.file_digest())
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert type(f.raw.verifier) is BlockVerifier  # type: ignore[attr-defined]
    flip(tmp_path / "f", 5000)  # hashed by pyverity itself, so the change is found
    with pytest.raises(IntegrityError, match="content does not match its descriptor"):
        pyverity.open(tmp_path / "f", options=OPTIONS)


def _signed_only(tmp_path: Path, data: bytes) -> tuple[Path, Descriptor, Keyring]:
    """A file with a v3 signature alone (no ``user.verity``), its descriptor and keyring."""
    key = make_key("ecdsa", "P-256")
    f = tmp_path / "s"
    f.write_bytes(data)
    try:
        done = sign_file(f, load_signer(str(key.key_path), cert=key.cert_path), namespace=NS)
    except Error as e:
        pytest.skip(f"no user xattrs on {tmp_path}: {e}")
    os.removexattr(f, f"{NS}.verity")
    assert done.descriptor is not None
    return f, done.descriptor, Keyring.from_directory(keyring_dir(key))


def _enforce(fake: FakeKernel, path: Path, descriptor: Descriptor) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fake.enforce(fd, descriptor)
    finally:
        os.close(fd)


@pytest.mark.parametrize("readable", [True, False], ids=["ext4", "btrfs"])
def test_signature_alone_on_kernel_verity_reads_by_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    """btrfs (6.12) measures but cannot give the descriptor back: it is rebuilt at open."""
    data = os.urandom(30_000)
    f, descriptor, keyring = _signed_only(tmp_path, data)
    fake = FakeKernel(readable=readable).install(monkeypatch)
    _enforce(fake, f, descriptor)
    with pyverity.open(f, keyring=keyring, options=OPTIONS) as r:
        assert isinstance(r.raw.verifier, kernelread.KernelVerified)  # type: ignore[attr-defined]
        assert r.raw.digest.digest == descriptor.digest()  # type: ignore[attr-defined]
        assert r.read() == data
    assert fake.calls["read"] > 0


@pytest.mark.parametrize("readable", [True, False], ids=["ext4", "btrfs"])
def test_signature_alone_on_kernel_verity_of_other_params_is_verified_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    f, _, keyring = _signed_only(tmp_path, os.urandom(30_000))
    other = build_tree(f, TreeParams(block_size=1024), keep_tree=False).descriptor
    _enforce(FakeKernel(readable=readable).install(monkeypatch), f, other)
    with pyverity.open(f, keyring=keyring, options=OPTIONS) as r:
        assert type(r.raw.verifier) is BlockVerifier  # type: ignore[attr-defined]


def test_signature_alone_not_verity_is_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kernel digest, no rebuild: the one tree build is the open's own."""
    f, _, keyring = _signed_only(tmp_path, os.urandom(30_000))
    fake = FakeKernel(readable=False).install(monkeypatch)
    monkeypatch.setattr(kernel, "build_tree", _no_build)
    with pyverity.open(f, keyring=keyring, options=OPTIONS) as r:
        assert type(r.raw.verifier) is BlockVerifier  # type: ignore[attr-defined]
    assert fake.calls["read"] == 0


def _no_build(*args: object, **kw: object) -> None:
    raise AssertionError("the file was hashed for the kernel's descriptor")
