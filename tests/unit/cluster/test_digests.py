"""cluster.digests against an inline engine (no Dask): order, folding, stat checks, recheck."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pyverity.cluster.digests import Digester, Want, listed_seen
from pyverity.cluster.plan import Cut
from pyverity.cluster.tasks import Job, Reply, load_replies, run_packed
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileRef
from pyverity.hashing.onepass import hash_once


class InlineEngine:
    """Runs units here as a worker does (replies packed, then loaded), last first (results
    out of order), calling ``between`` before each."""

    def __init__(self, between: Callable[[], None] | None = None, lie: bool = False) -> None:
        self.between = between
        self.lie = lie

    def run(
        self, units: Iterable[list[Job]], *, hold: Callable[[], bool] | None = None
    ) -> Iterator[tuple[list[Job], list[Reply]]]:
        for unit in reversed(list(units)):
            if self.between is not None:
                self.between()
            replies = load_replies(run_packed(unit))
            if self.lie:  # a wrong root hash for every file (ONEPASS: (root, digests))
                replies = [(seen, (bytes(32), value[1]), error, changed)  # type: ignore[index]
                           for seen, value, error, changed in replies]  # fmt: skip
            yield unit, replies


def _wants(tmp: Path, sizes: list[int]) -> list[Want]:
    root = tmp / "t"
    root.mkdir()
    st = root.stat()
    out = []
    for i, n in enumerate(sizes):
        (root / f"f{i}").write_bytes(os.urandom(n))
        ref = FileRef(str(root), f"f{i}", (st.st_dev, st.st_ino))
        out.append(Want(ref, listed_seen(ref), TreeParams(), ("sha256",)))
    return out


def test_in_order_and_equal_to_one_local_read(tmp_path: Path) -> None:
    wants = _wants(tmp_path, [0, 5000, 3 << 20, 100, (1 << 20) + 1])
    got = list(Digester(InlineEngine(), Cut(task_bytes=1 << 20, files=2)).run(wants))
    assert [g.want for g in got] == wants
    for g in got:
        assert g.ok, g.error
        fd = g.want.ref.open()
        try:
            once = hash_once(fd, TreeParams(), ("sha256",))
        finally:
            os.close(fd)
        assert g.descriptor == once.descriptor
        assert g.hashes == once.hashes


def test_a_file_changed_after_listing_is_refused(tmp_path: Path) -> None:
    wants = _wants(tmp_path, [4000, 4000])
    path = Path(wants[0].ref.path)

    def change() -> None:
        with path.open("r+b") as f:
            f.write(b"x")

    got = list(Digester(InlineEngine(change), Cut(files=1)).run(wants))
    assert got[0].changed
    assert got[0].descriptor is None
    assert got[1].ok


def test_recheck_catches_a_lying_worker(tmp_path: Path) -> None:
    wants = _wants(tmp_path, [4000, 5000])
    d = Digester(InlineEngine(lie=True), recheck=1.0)
    got = list(d.run(wants))
    assert d.mismatches == 2
    assert all("recheck" in (g.error or "") for g in got)
    honest = Digester(InlineEngine(), recheck=1.0)
    assert all(g.ok for g in honest.run(wants))
    assert honest.rechecked == 2


def test_a_failure_is_told_by_its_error_class(tmp_path: Path) -> None:
    from pyverity.cluster.bulk import _failure
    from pyverity.cluster.digests import Got
    from pyverity.errors import FileChangedError, InputError

    (w,) = _wants(tmp_path, [10])
    shrank = _failure(Got(w, error="file shrank while it was being hashed",
                          error_class=FileChangedError))  # fmt: skip
    assert shrank.failure is not None
    assert shrank.failure.error == "FileChangedError"
    assert shrank.failure.message == "file shrank while it was being hashed; not signed"
    unreadable = _failure(Got(w, error="read error: changed medium", error_class=InputError))
    assert unreadable.failure is not None
    assert unreadable.failure.error == "InputError"
    assert unreadable.failure.message == "read error: changed medium"
