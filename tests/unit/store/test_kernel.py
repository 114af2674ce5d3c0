"""store.kernel on the host: version rules and refusals that need no fs-verity filesystem.

Enabling for real, and the refusal of files that changed since they were hashed, are tested
inside the VM (tests/kernel/test_backend.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs import ioctl
from pyverity.fs.openfile import identity
from pyverity.hashing import build_tree
from pyverity.store import kernel
from tests.support.fakekernel import FakeKernel


@pytest.mark.parametrize(
    ("release", "expected"),
    [("6.1.0-56-amd64", (6, 1)), ("6.18.44-fc-v657", (6, 18)), ("5.4", (5, 4)), ("x", (0, 0))],
)
def test_kernel_version(release: str, expected: tuple[int, int]) -> None:
    assert kernel.kernel_version(release) == expected


def test_supported_block_sizes_before_and_after_6_3() -> None:
    assert kernel.supported_block_sizes(4096, release="6.1.0", page_size=4096) == (4096,)
    assert kernel.supported_block_sizes(4096, release="6.2.9", page_size=65536) == (65536,)
    assert kernel.supported_block_sizes(4096, release="6.3.0", page_size=4096) == (
        1024,
        2048,
        4096,
    )
    # Also bounded by the filesystem block size.
    assert kernel.supported_block_sizes(2048, release="6.8", page_size=65536) == (1024, 2048)


def _is_verity_fs(path: Path) -> bool:
    try:
        kernel.kernel_digest(path)
    except ioctl.VerityUnsupportedError:
        return False
    return True


def test_kernel_digest_on_a_filesystem_without_fs_verity(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    if _is_verity_fs(f):
        assert kernel.kernel_digest(f) is None  # a verity-capable fs, the file is not verity
    else:
        with pytest.raises(ioctl.VerityUnsupportedError, match="does not support fs-verity"):
            kernel.kernel_digest(f)


def test_enable_on_a_filesystem_without_fs_verity_names_the_path(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * 5000)
    if _is_verity_fs(f):
        pytest.skip("tmp is on a filesystem with fs-verity: the VM suite covers enabling")
    desc = build_tree(f, TreeParams()).descriptor
    with pytest.raises(
        ioctl.VerityUnsupportedError,
        match=f"can't enable fs-verity on '{f}': this filesystem does not support it",
    ):
        kernel.enable(f, desc, unchanged_since=identity(f.stat()))


# --- kernel_descriptor: read back, or rebuilt where the filesystem cannot give it (btrfs) ----


@pytest.fixture
def verity_file(tmp_path: Path) -> Iterator[tuple[int, Descriptor]]:
    """An open file and its descriptor (4 KiB blocks, sha256)."""
    f = tmp_path / "f"
    f.write_bytes(os.urandom(3 * 4096 + 77))
    fd = os.open(f, os.O_RDONLY)
    try:
        yield fd, build_tree(fd, TreeParams(), keep_tree=False).descriptor
    finally:
        os.close(fd)


def test_descriptor_read_back_is_not_rebuilt(
    verity_file: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = verity_file
    fake = FakeKernel().install(monkeypatch)
    fake.enforce(fd, descriptor)
    monkeypatch.setattr(kernel, "build_tree", _no_build)
    assert kernel.kernel_descriptor(fd, TreeParams()) == descriptor
    assert fake.calls["read"] > 0


def test_descriptor_unreadable_without_params_is_unsupported(
    verity_file: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = verity_file
    FakeKernel(readable=False).install(monkeypatch).enforce(fd, descriptor)
    with pytest.raises(ioctl.VerityUnsupportedError, match="does not let fs-verity metadata"):
        kernel.kernel_descriptor(fd)


def test_descriptor_unreadable_is_rebuilt_with_the_params_and_checked_by_the_kernel_digest(
    verity_file: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, descriptor = verity_file
    FakeKernel(readable=False).install(monkeypatch).enforce(fd, descriptor)
    assert kernel.kernel_descriptor(fd, TreeParams()) == descriptor
    other = TreeParams(block_size=1024)
    with pytest.raises(
        kernel.OtherTreeParamsError,
        match=f"with digest sha256:{descriptor.digest().hex()}, which is not",
    ):
        kernel.kernel_descriptor(fd, other)


def test_no_rebuild_when_the_file_is_not_verity(
    verity_file: tuple[int, Descriptor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, _ = verity_file
    fake = FakeKernel(readable=False).install(monkeypatch)
    monkeypatch.setattr(kernel, "build_tree", _no_build)
    assert kernel.kernel_descriptor(fd, TreeParams()) is None  # ENODATA from MEASURE
    assert fake.calls == {"measure": 1}
    fake.has_verity = False
    with pytest.raises(ioctl.VerityUnsupportedError, match="does not support fs-verity"):
        kernel.kernel_descriptor(fd, TreeParams())


def _no_build(*args: object, **kw: object) -> None:
    raise AssertionError("the file was hashed")
