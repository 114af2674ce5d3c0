"""``pyverity daemon --backend kernel`` where the filesystem has no fs-verity: the cache takes
over, and the refusal is recorded. (Where it has fs-verity, see tests/kernel.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pyverity.daemon.kernelstore import FALLBACK
from pyverity.fs import ioctl
from tests.integration.harness import Daemon, protect, write_file


def test_no_fs_verity_falls_back_to_the_cache(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--backend", "kernel", "--workers", "1").start()
    f = d.root / "a.bin"
    write_file(f, 300_000)
    try:
        ioctl.measure_verity(f)
    except ioctl.VerityUnsupportedError:
        pass
    except ioctl.NotVerityError:
        pytest.skip(f"{f.parent} has fs-verity: the file would be handed over (tests/kernel)")
    digest, desc, tree = protect(f, tmp_path, ns=d.ns)
    rec = d.wait_state(f, "READY")
    assert rec.digest == digest
    assert rec.error.startswith(FALLBACK + f"can't enable fs-verity on '{f}'")
    assert rec.error.endswith("this filesystem does not support it")
    assert d.cache_entry(digest).read_bytes() == desc + tree
    d.stop()
    # Start-up reconciliation keeps it READY: its tree is in the cache.
    d.start()
    assert d.wait_state(f, "READY").ready_ns == rec.ready_ns
