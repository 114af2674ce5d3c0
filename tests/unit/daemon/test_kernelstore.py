"""daemon.kernelstore on the host: what the kernel backend decides from the kernel's answers.

Enabling for real is tested inside the VM (tests/kernel/test_daemon_backend.py); here the
kernel's answers are substituted where a filesystem with fs-verity would be needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.daemon import kernelstore
from pyverity.daemon.config import load_config
from pyverity.errors import Error, FormatError, IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.hashing import build_tree
from pyverity.keys import Keyring, load_signer
from pyverity.protect import read_protection, sign_file
from pyverity.protect.attrs import parse_protection
from pyverity.store import kernel
from tests.support.fakekernel import FakeKernel
from tests.unit.keys.keyhelpers import keyring_dir, make_key


@pytest.fixture
def described(tmp_path: Path) -> Iterator[tuple[int, Descriptor]]:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(9000))
    descriptor = build_tree(f, TreeParams()).descriptor
    fd = os.open(f, os.O_RDONLY)
    try:
        yield fd, descriptor
    finally:
        os.close(fd)


def test_backend_kernel_is_a_config_value(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('roots = ["/a"]\nbackend = "kernel"\n')
    assert load_config(cfg).backend == "kernel"


def test_without_fs_verity_the_file_is_built_and_falls_back(
    described: tuple[int, Descriptor],
) -> None:
    fd, descriptor = described
    protection = parse_protection(descriptor.to_bytes(), None, descriptor.data_size)
    assert kernelstore.adopt(fd, protection, None) is None
    reason = kernelstore.hand_over(fd, "f", descriptor, identity(os.fstat(fd)))
    if reason == "":
        pytest.skip("this filesystem has fs-verity: the file was enabled (tested in the VM)")
    assert "can't enable fs-verity on 'f'" in reason


def test_already_enabled_with_the_declared_digest_is_ready(
    described: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = described
    # btrfs on 6.12 (READ_VERITY_METADATA: ENOTTY) as ext4: the kernel's digest decides, and
    # the declared descriptor is not read back from the kernel (nor the file hashed).
    for readable in (True, False):
        fake = FakeKernel(readable=readable).install(monkeypatch)
        fake.enforce(fd, descriptor)
        monkeypatch.setattr(kernel, "build_tree", _no_build)
        protection = parse_protection(descriptor.to_bytes(), None, descriptor.data_size)
        result = kernelstore.adopt(fd, protection, None)
        assert result is not None
        assert (result.state, result.ok) == ("READY", True)  # the gate's verdict
        assert result.digest == f"sha256:{descriptor.digest().hex()}"
        assert fake.calls == {"measure": 1}


def test_enabled_with_another_digest_is_mismatch(
    described: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = described
    other = build_tree(fd, TreeParams(block_size=1024)).descriptor
    FakeKernel(readable=False).install(monkeypatch).enforce(fd, other)
    protection = parse_protection(descriptor.to_bytes(), None, descriptor.data_size)
    result = kernelstore.adopt(fd, protection, None)
    assert result is not None
    assert result.state == "MISMATCH"
    assert result.message.startswith(
        f"fs-verity is enabled in the kernel with digest sha256:{other.digest().hex()}, not the"
    )


@pytest.fixture
def signed_only(tmp_path: Path) -> Iterator[tuple[int, Descriptor, Keyring]]:
    """A file with a v3 signature alone (no descriptor declared), its descriptor and keyring."""
    key = make_key("ecdsa", "P-256")
    f = tmp_path / "s"
    f.write_bytes(os.urandom(5 * 4096 + 11))
    try:
        done = sign_file(f, load_signer(str(key.key_path), cert=key.cert_path), namespace="user")
    except Error as e:
        pytest.skip(f"no user xattrs on {tmp_path}: {e}")
    os.removexattr(f, "user.verity")
    assert done.descriptor is not None
    fd = os.open(f, os.O_RDONLY)
    try:
        yield fd, done.descriptor, Keyring.from_directory(keyring_dir(key))
    finally:
        os.close(fd)


@pytest.mark.parametrize("readable", [True, False], ids=["ext4", "btrfs"])
def test_signature_alone_on_kernel_verity_is_ready(
    signed_only: tuple[int, Descriptor, Keyring], monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    fd, descriptor, keyring = signed_only
    fake = FakeKernel(readable=readable).install(monkeypatch)
    fake.enforce(fd, descriptor)
    if readable:  # read back from the kernel, not hashed (btrfs: ENOTTY, rebuilt from the file)
        monkeypatch.setattr(kernel, "build_tree", _no_build)
    protection = read_protection(fd, "user")
    assert protection.unverified_descriptor is None
    result = kernelstore.adopt(fd, protection, keyring)
    assert result is not None
    assert (result.state, result.ok) == ("READY", True)  # the signature verified over it
    assert result.digest == f"sha256:{descriptor.digest().hex()}"
    assert fake.calls["read"] > 0


@pytest.mark.parametrize("readable", [True, False], ids=["ext4", "btrfs"])
def test_signature_alone_on_kernel_verity_with_other_params_is_mismatch(
    signed_only: tuple[int, Descriptor, Keyring], monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    fd, _, keyring = signed_only
    other = build_tree(fd, TreeParams(block_size=1024), keep_tree=False).descriptor
    FakeKernel(readable=readable).install(monkeypatch).enforce(fd, other)
    result = kernelstore.adopt(fd, read_protection(fd, "user"), keyring)
    assert result is not None
    assert result.state == "MISMATCH"
    assert result.message == (
        f"fs-verity is enabled in the kernel with other tree parameters"
        f" (sha256:{other.digest().hex()})"
    )


def test_not_verity_or_no_fs_verity_is_built(
    signed_only: tuple[int, Descriptor, Keyring], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, _, keyring = signed_only
    fake = FakeKernel(readable=False).install(monkeypatch)
    monkeypatch.setattr(kernel, "build_tree", _no_build)
    assert kernelstore.adopt(fd, read_protection(fd, "user"), keyring) is None
    fake.has_verity = False
    assert kernelstore.adopt(fd, read_protection(fd, "user"), keyring) is None
    assert fake.calls == {"measure": 2}


def _no_build(*args: object, **kw: object) -> None:
    raise AssertionError("the file was hashed")


def test_refusals_fall_back_but_conflicts_do_not(
    described: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = described
    snap = identity(os.fstat(fd))

    def refuse(*args: object, **kw: object) -> None:
        raise FormatError("kernel 6.1 accepts only block sizes 4096")

    monkeypatch.setattr(kernelstore.kernel, "enable_fd", refuse)
    assert kernelstore.hand_over(fd, "f", descriptor, snap) == (
        "kernel 6.1 accepts only block sizes 4096"
    )

    def conflict(*args: object, **kw: object) -> None:
        raise IntegrityError("'f' already has fs-verity with digest x")

    monkeypatch.setattr(kernelstore.kernel, "enable_fd", conflict)
    with pytest.raises(IntegrityError):
        kernelstore.hand_over(fd, "f", descriptor, snap)
