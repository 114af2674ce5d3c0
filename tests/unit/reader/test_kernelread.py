"""Reads of files the kernel verifies: chosen only when the kernel's digest is the appraised one.

A real fs-verity file is read inside the VM (tests/kernel/test_daemon_backend.py); here the
kernel's answer is substituted, to check which verifier ``pyverity.open`` picks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pyverity
from pyverity.errors import IntegrityError
from pyverity.format.digest import FileDigest
from pyverity.format.params import TreeParams
from pyverity.reader import kernelread
from pyverity.reader.verifier import BlockVerifier
from pyverity.store.kernel import KernelVerity
from tests.unit.reader.helpers import OPTIONS, flip, protect


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
