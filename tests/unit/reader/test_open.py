"""``pyverity.open``: byte-identical reads, EIO for the corrupt blocks only, never wrong bytes."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest

import pyverity
from pyverity.errors import FormatError, InputError, IntegrityError, SignatureError
from pyverity.format.ima import ImaHash
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.policy.engine import Policy
from pyverity.reader import ReaderOptions, open_fd
from pyverity.reader.options import Access
from tests.unit.reader.helpers import NS, OPTIONS, flip, protect

SIZES = [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 300 * 4096 + 123]


@pytest.mark.parametrize("size", SIZES)
def test_reads_back_identical(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    tree = protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert f.read() == data
        assert f.raw.digest == tree.file_digest()
        f.seek(size // 2)
        assert f.read(10) == data[size // 2 : size // 2 + 10]
        assert f.seek(0, os.SEEK_END) == size
        assert f.read(1) == b""


def test_salted_small_blocks(tmp_path: Path) -> None:
    data = os.urandom(40000)
    protect(tmp_path / "f", data, TreeParams(block_size=1024, salt=b"pepper"))
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert f.read() == data


def test_file_object_shape(tmp_path: Path) -> None:
    protect(tmp_path / "f", b"hello world")
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert isinstance(f, io.BufferedReader)
        assert f.readable()
        assert f.seekable()
        assert not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
        assert f.read(5) == b"hello"
        assert f.tell() == 5
    assert f.closed


def test_flipped_data_byte_gives_eio_for_that_block_only(tmp_path: Path) -> None:
    data = os.urandom(4096 * 20)
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS, buffering=4096) as f:
        assert f.read(4096) == data[:4096]  # opened and partly read, then tampered
        flip(tmp_path / "f", 9 * 4096 + 1)
        f.seek(9 * 4096 + 100)
        with pytest.raises(OSError, match="data block 9") as e:
            f.read(10)
        assert e.value.errno == errno.EIO
        f.seek(10 * 4096)
        assert f.read() == data[10 * 4096 :]
        raw = f.raw
        assert isinstance(raw, pyverity.reader.VerifiedRawIO)
        assert raw.pread(4096, 8 * 4096) == data[8 * 4096 : 9 * 4096]
        with pytest.raises(OSError, match="data block 9"):
            raw.pread(2, 9 * 4096 + 4095)


def test_truncation_gives_eio_never_wrong_bytes(tmp_path: Path) -> None:
    data = os.urandom(4096 * 8) + b"\xff" * 100
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        os.truncate(tmp_path / "f", 4096 * 3)
        assert f.raw.pread(4096, 0) == data[:4096]
        with pytest.raises(OSError, match="data block 5") as e:
            f.raw.pread(4096, 5 * 4096)
        assert e.value.errno == errno.EIO


def test_growth_past_protected_size(tmp_path: Path) -> None:
    data = b"z" * 5000
    protect(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        with (tmp_path / "f").open("ab") as w:
            w.write(b"more")
        # The tail of the last block is no longer zero: EIO, as the kernel does.
        with pytest.raises(OSError, match="data block 1"):
            f.raw.pread(10, 4096)
        assert f.raw.pread(10, 0) == data[:10]


def test_attribute_change_does_not_affect_open_handle(tmp_path: Path) -> None:
    data = os.urandom(10000)
    tree = protect(tmp_path / "f", data)
    other = protect(tmp_path / "g", os.urandom(10000))
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        set_attr(tmp_path / "f", attr_name(NS, "verity"), other.descriptor.to_bytes())
        assert f.raw.digest == tree.file_digest()
        assert f.read() == data
    with pytest.raises(IntegrityError, match="does not match"):
        pyverity.open(tmp_path / "f", options=OPTIONS)


def test_unprotected_symlink_and_bad_attribute(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="not protected"):
        pyverity.open(tmp_path / "plain", options=OPTIONS)
    protect(tmp_path / "f", b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(InputError, match="symbolic link"):
        pyverity.open(tmp_path / "link", options=OPTIONS)
    with pytest.raises(InputError, match="Is a directory"):
        pyverity.open(tmp_path, options=OPTIONS)
    set_attr(tmp_path / "f", attr_name(NS, "verity"), b"\x01" * 256)
    with pytest.raises(FormatError, match="sig_size"):
        pyverity.open(tmp_path / "f", options=OPTIONS)


def test_size_changed_since_protection(tmp_path: Path) -> None:
    protect(tmp_path / "f", b"abc")
    (tmp_path / "f").write_bytes(b"abcd")
    with pytest.raises(FormatError, match="is not the file's size 4"):
        pyverity.open(tmp_path / "f", options=OPTIONS)


class DictStore:
    def __init__(self) -> None:
        self.trees: dict[bytes, MerkleTree] = {}
        self.discarded: list[bytes] = []

    def get(self, algorithm: str, digest: bytes) -> MerkleTree | None:
        del algorithm
        t = self.trees.get(digest)
        return None if t is None else _Entry(t)  # type: ignore[return-value]

    def put(self, tree: MerkleTree) -> None:
        self.trees[tree.descriptor.digest()] = tree

    def discard(self, algorithm: str, digest: bytes) -> None:
        del algorithm
        self.discarded.append(digest)


class _Entry:
    def __init__(self, tree: MerkleTree) -> None:
        self.descriptor = tree.descriptor
        self.unverified_tree = tree.tree or b""


def test_store_is_used_and_poison_gives_eio(tmp_path: Path) -> None:
    data = os.urandom(4096 * 200)
    tree = protect(tmp_path / "f", data)
    store = DictStore()
    builds: list[float] = []
    opts = ReaderOptions(xattr_ns=NS, store=store, on_inline_build=builds.append)  # type: ignore[arg-type]
    with pyverity.open(tmp_path / "f", options=opts) as f:
        assert f.read() == data
    assert len(builds) == 1
    assert tree.descriptor.digest() in store.trees
    poisoned = bytearray(tree.tree or b"")
    poisoned[-1] ^= 1  # last level-0 block
    store.trees[tree.descriptor.digest()] = MerkleTree(tree.descriptor, bytes(poisoned))
    with pyverity.open(tmp_path / "f", options=opts) as f:
        assert len(builds) == 1  # taken from the store
        assert f.read(4096) == data[:4096]
        f.seek(150 * 4096)
        with pytest.raises(OSError, match="Merkle tree block"):
            f.read(4096)
    assert store.discarded == [tree.descriptor.digest()]


def test_open_fd_closes_on_failure(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    fd = os.open(tmp_path / "plain", os.O_RDONLY)
    with pytest.raises(IntegrityError):
        open_fd(fd, Access("plain"), OPTIONS)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def _classic(path: Path, data: bytes, declared: bytes | None = None) -> None:
    path.write_bytes(data)
    digest = hashlib.sha256(data if declared is None else declared).digest()
    set_attr(path, attr_name(NS, "ima"), ImaHash.for_digest(4, digest).to_bytes())


def test_classic_hash_file_is_verified_block_by_block(tmp_path: Path) -> None:
    data = os.urandom(4096 * 50 + 7)
    _classic(tmp_path / "f", data)
    with pyverity.open(tmp_path / "f", options=OPTIONS) as f:
        assert isinstance(f.raw, pyverity.reader.VerifiedRawIO)
        assert f.read(4096) == data[:4096]
        flip(tmp_path / "f", 40 * 4096)
        f.seek(40 * 4096)
        with pytest.raises(OSError, match="data block 40"):
            f.read(10)
        f.seek(41 * 4096)
        assert f.read() == data[41 * 4096 :]
    _classic(tmp_path / "g", b"actual", declared=b"declared")
    with pytest.raises(IntegrityError, match="content does not match"):
        pyverity.open(tmp_path / "g", options=OPTIONS)


def test_classic_hash_without_signature_refused_when_one_is_required(tmp_path: Path) -> None:
    _classic(tmp_path / "f", b"content")
    policy = Policy.parse("appraise func=FILE_CHECK appraise_type=imasig\n")
    with pytest.raises(SignatureError, match="requires one"):
        pyverity.open(tmp_path / "f", policy=policy, options=OPTIONS)
    lenient = Policy.parse("appraise func=FILE_CHECK\n")
    with pyverity.open(tmp_path / "f", policy=lenient, options=OPTIONS) as f:
        assert f.read() == b"content"
    unappraised = Policy.parse("dont_appraise func=FILE_CHECK\n")
    (tmp_path / "plain").write_bytes(b"plain")
    with pyverity.open(tmp_path / "plain", policy=unappraised, options=OPTIONS) as f:
        assert not isinstance(f.raw, pyverity.reader.VerifiedRawIO)
        assert f.read() == b"plain"
