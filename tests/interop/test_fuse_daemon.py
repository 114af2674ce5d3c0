"""The mount with the daemon's tree cache: trees from the daemon's builds (first-use requests on a
miss), never trusted — a poisoned cache entry gives EIO for its blocks and is discarded."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyverity.store.cache import TreeCache
from tests.integration.harness import Daemon
from tests.interop.fuse_helpers import fuse_skip_reason, mount_log, mounted
from tests.support.polling import wait_until
from tests.unit.reader.helpers import protect

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

MIB = 1 << 20


def _wait_cached(cache: Path, tree_digest: bytes, timeout: float = 30) -> None:
    store = TreeCache(cache)
    wait_until(
        lambda: store.get("sha256", tree_digest) is not None,
        timeout=timeout,
        interval=0.1,
        what="the daemon caching the tree",
    )


def test_trees_from_the_daemon_cache_checked_on_read(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    mnt = tmp_path / "mnt"
    try:
        data = os.urandom(3 * MIB)
        tree = protect(daemon.root / "f", data)
        digest = tree.descriptor.digest()
        _wait_cached(daemon.cache, digest)
        args = [
            "--xattr-ns",
            "user",
            "--cache",
            str(daemon.cache),
            "--state-dir",
            str(daemon.state),
            "--no-keep-cache",  # the second open must read through, not from the page cache
        ]
        with mounted(daemon.root, mnt, *args, verbose=True):
            assert (mnt / "f").read_bytes() == data
            entry = TreeCache(daemon.cache).path_for("sha256", digest)
            raw = bytearray(entry.read_bytes())
            raw[-5] ^= 1  # last level-0 block of the cached tree: data blocks 640..767
            entry.write_bytes(bytes(raw))
            with (mnt / "f").open("rb", buffering=0) as f:
                assert f.read(4096) == data[:4096]
                f.seek(700 * 4096)
                with pytest.raises(OSError, match="Input/output error") as e:
                    f.read(4096)
                assert e.value.errno == errno.EIO
            assert not entry.exists()  # discarded: the next open gets a good tree
            assert (mnt / "f").read_bytes() == data
        log = mount_log(mnt)
        assert "built the Merkle tree of" not in log.split("cached tree of")[0]
        assert "is corrupt; discarding it" in log
        after = log.rpartition("is corrupt; discarding it")[2]
        assert "the daemon built the tree of" in after  # the miss asked for a first-use build
        assert "built the Merkle tree of" not in after  # ... and did not build inline
    finally:
        daemon.stop()
