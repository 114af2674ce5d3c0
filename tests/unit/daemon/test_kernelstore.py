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
from pyverity.errors import FormatError, IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import identity
from pyverity.hashing import build_tree
from pyverity.protect.attrs import parse_protection


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
    monkeypatch.setattr(kernelstore.kernel, "kernel_descriptor", lambda fd: descriptor)
    protection = parse_protection(descriptor.to_bytes(), None, descriptor.data_size)
    result = kernelstore.adopt(fd, protection, None)
    assert result is not None
    assert (result.state, result.ok) == ("READY", True)  # the gate's verdict
    assert result.digest == f"sha256:{descriptor.digest().hex()}"


def test_enabled_with_another_digest_is_mismatch(
    described: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = described
    other = build_tree(fd, TreeParams(block_size=1024)).descriptor
    monkeypatch.setattr(kernelstore.kernel, "kernel_descriptor", lambda fd: other)
    protection = parse_protection(descriptor.to_bytes(), None, descriptor.data_size)
    result = kernelstore.adopt(fd, protection, None)
    assert result is not None
    assert result.state == "MISMATCH"
    assert result.message.startswith(
        f"fs-verity is enabled in the kernel with digest sha256:{other.digest().hex()}, not the"
    )


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
