"""store.kernel on the host: version rules and refusals that need no fs-verity filesystem.

Enabling for real, and the refusal of files that changed since they were hashed, are tested
inside the VM (tests/kernel/test_backend.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyverity.format.params import TreeParams
from pyverity.fs import ioctl
from pyverity.fs.openfile import identity
from pyverity.hashing import build_tree
from pyverity.store import kernel


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
