from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyverity.errors import IntegrityError
from pyverity.format.descriptor import Descriptor
from pyverity.format.merkletree import MerkleTree
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.store.cache import MemoryStore, TreeCache, open_store, verify_tree


def _tree(data: bytes, params: TreeParams | None = None) -> MerkleTree:
    import io

    return build_tree(io.BytesIO(data), params or TreeParams())


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "c")
    t = _tree(os.urandom(300_000))
    cache.put(t)
    d = t.descriptor.digest()
    path = tmp_path / "c" / "objects" / "sha256" / d.hex()[:2] / d.hex()
    assert path.read_bytes() == t.descriptor.to_bytes() + (t.tree or b"")
    assert stat.S_IMODE((tmp_path / "c" / "tmp").stat().st_mode) == 0o700
    got = cache.get("sha256", d)
    assert got is not None
    assert got.verified() == t
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_missing_entry_is_none(tmp_path: Path) -> None:
    assert TreeCache(tmp_path).get("sha256", bytes(32)) is None


@pytest.mark.parametrize("damage", ["truncate", "extend", "descriptor", "symlink"])
def test_corrupted_entries_are_discarded(tmp_path: Path, damage: str) -> None:
    cache = TreeCache(tmp_path)
    t = _tree(os.urandom(100_000))
    cache.put(t)
    d = t.descriptor.digest()
    p = cache.path_for("sha256", d)
    raw = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(raw[:-1])
    elif damage == "extend":
        p.write_bytes(raw + b"\0")
    elif damage == "descriptor":
        p.write_bytes(raw[:20] + bytes([raw[20] ^ 1]) + raw[21:])
    else:
        p.unlink()
        p.symlink_to(tmp_path / "elsewhere")
    assert cache.get("sha256", d) is None
    assert not p.exists()
    assert not p.is_symlink()


def test_flipped_tree_byte_is_found_by_verify(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path)
    t = _tree(os.urandom(3 * 4096 * 128 + 5))
    cache.put(t)
    d = t.descriptor.digest()
    p = cache.path_for("sha256", d)
    raw = bytearray(p.read_bytes())
    for pos in (256, len(raw) - 1, 256 + 4096 + 7):
        bad = bytearray(raw)
        bad[pos] ^= 0x40
        p.write_bytes(bad)
        got = cache.get("sha256", d)
        assert got is not None  # length and descriptor are fine: only the blocks are wrong
        with pytest.raises(IntegrityError):
            got.verified()


def test_verify_tree_salted_sha512() -> None:
    from pyverity.format.hashalg import SHA512

    params = TreeParams(SHA512, 1024, b"salt")
    t = _tree(os.urandom(200_000), params)
    assert t.tree is not None
    verify_tree(t.descriptor, t.tree)
    with pytest.raises(IntegrityError):
        verify_tree(t.descriptor, t.tree[:-1])
    wrong_root = Descriptor.for_tree(params, 200_000, bytes(64))
    with pytest.raises(IntegrityError):
        verify_tree(wrong_root, t.tree)


def test_temp_files_are_cleaned(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path)
    (tmp_path / "tmp" / "123-dead").write_bytes(b"partial")
    assert cache.clean_temp() == 1


def test_memory_store_evicts_and_discards() -> None:
    store = MemoryStore(max_bytes=100_000)
    trees = [_tree(os.urandom(4096 * 20 + i)) for i in range(1, 4)]
    for t in trees:
        store.put(t)
    last = trees[-1].descriptor
    assert store.get("sha256", last.digest()) is not None
    store.discard("sha256", last.digest())
    assert store.get("sha256", last.digest()) is None


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store("none", None), MemoryStore)
    assert isinstance(open_store("cache", tmp_path), TreeCache)


def test_batched_entries_are_published_by_flush_or_lookup(tmp_path: Path) -> None:
    cache = TreeCache(tmp_path, batch_dir_sync=True)
    trees = [_tree(os.urandom(50_000 + i)) for i in range(6)]
    for t in trees:
        cache.put(t)
    first = trees[0].descriptor.digest()
    assert not cache.path_for("sha256", first).exists()  # nothing visible before the flush
    assert cache.get("sha256", first) is not None  # a lookup flushes the batch
    for t in trees:
        assert cache.path_for("sha256", t.descriptor.digest()).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_entry_is_published_after_its_directory_was_removed(tmp_path: Path) -> None:
    import shutil

    cache = TreeCache(tmp_path, batch_dir_sync=True)
    first, second = _tree(b"a" * 5000), _tree(b"b" * 5000)
    cache.put(first)
    cache.flush()
    shutil.rmtree(tmp_path / "objects" / "sha256")  # fan-out directories made before
    path = cache.path_for("sha256", second.descriptor.digest())
    cache.put(second)
    cache.flush()
    assert path.read_bytes() == second.descriptor.to_bytes() + (second.tree or b"")


def test_an_entry_a_worker_published_is_made_durable_by_the_daemons_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's worker publishes at once, unsynced; the daemon's flush (before it commits
    READY) makes the entry durable: one ``syncfs``, or the entry and its directory synced."""
    from pyverity.store import cache

    worker = TreeCache(tmp_path / "c", batch_dir_sync=True)
    daemon = TreeCache(tmp_path / "c", batch_dir_sync=True)
    t = _tree(os.urandom(50_000))
    worker.put_unsynced(t)
    d = t.descriptor.digest()
    got = daemon.get("sha256", d)
    assert got is not None
    assert got.verified() == t
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    synced: list[object] = []
    monkeypatch.setattr(cache, "_syncfs", lambda where: synced.append(where) or True)
    daemon.flush()
    assert synced == []  # nothing to make durable
    daemon.published(t.descriptor)
    daemon.flush()
    assert len(synced) == 1
    daemon.flush()
    assert len(synced) == 1  # once
    monkeypatch.setattr(cache, "_syncfs", lambda where: False)  # e.g. not supported
    monkeypatch.setattr(cache, "_fsync_file", synced.append)
    monkeypatch.setattr(cache, "fsync_dir", synced.append)
    daemon.published(t.descriptor)
    daemon.flush()
    entry = str(daemon.path_for("sha256", d))
    assert synced[1:] == [entry, os.path.dirname(entry)]  # noqa: PTH120
