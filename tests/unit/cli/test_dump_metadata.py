"""``pyverity dump-metadata``: fsverity's bytes and option rules; pyverity's sources (the
descriptor attribute, the tree cache, the file itself) and the kernel ioctl path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format.descriptor import Descriptor
from pyverity.hashing import build_tree
from pyverity.store.cache import TreeCache


@pytest.fixture
def protected(tmp_path: Path) -> Path:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(300_000))
    assert main(["enable", "--xattr-user", "--block-size", "1024", "--salt", "aa", str(f)]) == 0
    return f


def _dump(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, bytes]:
    capsysbinary.readouterr()
    rc = main(["dump-metadata", "--xattr-user", *args])
    out = capsysbinary.readouterr()
    return rc, out.out, out.err


def test_descriptor_and_tree_equal_digest_outputs(
    protected: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    tree_out, desc_out = tmp_path / "tree", tmp_path / "desc"
    args = ["--block-size=1024", "--salt=aa", f"--out-merkle-tree={tree_out}"]
    assert main(["digest", str(protected), *args, f"--out-descriptor={desc_out}"]) == 0
    empty_cache = tmp_path / "no-cache"
    rc, out, _ = _dump(capsysbinary, "descriptor", str(protected))
    assert rc == 0
    assert out == desc_out.read_bytes()
    rc, out, _ = _dump(capsysbinary, "merkle_tree", str(protected), "--cache-dir", str(empty_cache))
    assert rc == 0
    assert out == tree_out.read_bytes()
    assert not empty_cache.exists()  # looked for, never created


def test_offset_and_length_are_one_read(
    protected: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, whole, _ = _dump(capsysbinary, "merkle_tree", str(protected))
    _, part, _ = _dump(capsysbinary, "merkle_tree", str(protected), "--offset", "1000",
                       "--length=3000")  # fmt: skip
    assert part == whole[1000:4000]
    _, tail, _ = _dump(capsysbinary, "descriptor", str(protected), "--offset=200",
                       "--length", "1000")  # fmt: skip
    assert len(tail) == 56
    rc, past, _ = _dump(capsysbinary, "descriptor", str(protected), "--offset=999",
                        "--length=1")  # fmt: skip
    assert rc == 0
    assert past == b""


def test_tree_comes_from_the_cache_when_it_is_there(
    protected: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    desc = Descriptor.from_bytes(os.getxattr(protected, "user.verity"))
    tree = build_tree(protected, desc.params, keep_tree=True)
    cache = tmp_path / "cache"
    TreeCache(cache).put(tree)
    protected.write_bytes(b"changed")  # the file can no longer give the tree; the cache can
    rc, out, err = _dump(capsysbinary, "merkle_tree", str(protected), "--cache-dir", str(cache))
    assert rc == 0, err
    assert out == tree.tree
    # Without the cache entry the changed file is refused, not dumped.
    rc, out, err = _dump(capsysbinary, "merkle_tree", str(protected), "--cache-dir",
                         str(tmp_path / "none"))  # fmt: skip
    assert rc == 1
    assert out == b""
    assert b"does not match its descriptor" in err


def test_a_corrupt_cache_entry_is_not_dumped(
    protected: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    desc = Descriptor.from_bytes(os.getxattr(protected, "user.verity"))
    tree = build_tree(protected, desc.params, keep_tree=True)
    cache = TreeCache(tmp_path / "cache")
    cache.put(tree)
    entry = cache.path_for(desc.hash_alg.name, desc.digest())
    data = bytearray(entry.read_bytes())
    data[300] ^= 1
    entry.write_bytes(bytes(data))
    rc, out, _ = _dump(capsysbinary, "merkle_tree", str(protected), "--cache-dir",
                       str(tmp_path / "cache"))  # fmt: skip
    assert rc == 0
    assert out == tree.tree  # recomputed from the (unchanged) file instead


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["descriptor", "{f}", "--offset=1"], 2, "--offset specified without --length"),
        (["descriptor", "{f}", "--length=1"], 2, "--length specified without --offset"),
        (["descriptor", "{f}", "--offset=-1", "--length=1"], 2, "invalid value"),
        (["descriptor", "{f}", "--offset=1", "--offset=2", "--length=1"], 2, "only be specified"),
        (["tree", "{f}"], 2, "unknown metadata type: tree"),
        (["signature", "{f}"], 1, "has no built-in signature"),
        (["descriptor", "{plain}"], 1, "nor a user.verity descriptor"),
        (["descriptor", "{dir}"], 1, "Is a directory"),
    ],
)
def test_bad_input_one_line(  # noqa: PLR0917 - fixtures and parameters
    protected: Path,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    args: list[str],
    code: int,
    message: str,
) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    argv = [a.format(f=protected, plain=plain, dir=tmp_path) for a in args]
    rc, out, err = _dump(capsysbinary, *argv)
    assert rc == code
    assert out == b""
    lines = err.decode().splitlines()
    assert lines[0].startswith("ERROR: ")
    assert message in lines[0]


def test_kernel_verity_files_are_read_with_the_ioctl(
    protected: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """On a kernel verity file the bytes are the kernel's (FS_IOC_READ_VERITY_METADATA), read
    in chunks until the end, or once with --offset/--length (the real ioctl: kernel suite)."""
    from pyverity.fs import ioctl

    item = os.urandom(3_000_000)
    calls: list[tuple[int, int, int]] = []

    def fake_read(fd: int, kind: int, offset: int, length: int) -> bytes:
        calls.append((kind, offset, length))
        return item[offset : offset + min(length, 1 << 20)]

    monkeypatch.setattr(ioctl, "is_verity", lambda fd: True)
    monkeypatch.setattr(ioctl, "read_verity_metadata", fake_read)
    rc, out, _ = _dump(capsysbinary, "signature", str(protected))
    assert rc == 0
    assert out == item
    assert [c[0] for c in calls] == [3] * 4
    calls.clear()
    rc, out, _ = _dump(capsysbinary, "merkle_tree", str(protected), "--offset=5", "--length=7")
    assert out == item[5:12]
    assert calls == [(1, 5, 7)]
