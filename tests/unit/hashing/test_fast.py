"""The fast builder: same bytes as the reference, workers reaped, changes detected."""

from __future__ import annotations

import io
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyverity.errors import CancelledError, FileChangedError, InputError, UsageError
from pyverity.format.hashalg import SHA256, SHA512
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree, compute_digest
from pyverity.hashing.fast import FastOptions, build_fast, default_jobs
from pyverity.hashing.reference import build_from_stream

# Tiny chunks and no size threshold: even small files go through forked workers.
PARALLEL = FastOptions(chunk_size=4096, parallel_min_size=0)


def children() -> list[int]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    before = set(children())
    yield
    assert set(children()) <= before, "a hashing worker was left running"


def open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f"
    path.write_bytes(data)
    return path


def reference(data: bytes, params: TreeParams, *, keep_tree: bool = True) -> tuple[bytes, bytes]:
    tree = build_from_stream(io.BytesIO(data), params, keep_tree=keep_tree)
    return tree.descriptor.to_bytes(), tree.tree or b""


def fast(path: Path, params: TreeParams, **kwargs: object) -> tuple[bytes, bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        tree = build_fast(fd, params, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return tree.descriptor.to_bytes(), tree.tree or b""


@pytest.mark.parametrize(
    ("params", "size"),
    [
        (TreeParams(), 0),
        (TreeParams(), 1),
        (TreeParams(), 4096),
        (TreeParams(), 4097),
        (TreeParams(), 128 * 4096 + 1),
        (TreeParams(SHA512, 1024, b"salt"), 70 * 1024 - 3),
        (TreeParams(SHA256, 1024, os.urandom(32)), 33 * 1024),
        (TreeParams(SHA256, 65536, b"\x01"), 3 * 65536 + 17),
    ],
)
@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("accel", [None, False])
def test_same_bytes_as_reference(
    tmp_path: Path, params: TreeParams, size: int, jobs: int, accel: bool | None
) -> None:
    data = random.Random(size).randbytes(size)
    path = write(tmp_path, data)
    options = FastOptions(chunk_size=2 * params.block_size, parallel_min_size=0, accel=accel)
    assert fast(path, params, keep_tree=True, jobs=jobs, options=options) == reference(data, params)
    desc, tree = fast(path, params, keep_tree=False, jobs=jobs, options=options)
    assert (desc, tree) == (reference(data, params)[0], b"")


def test_default_options_large_enough_to_fork(tmp_path: Path) -> None:
    data = random.Random(1).randbytes((9 << 20) + 5)
    path = write(tmp_path, data)
    want = reference(data, TreeParams())
    assert fast(path, TreeParams(), keep_tree=True) == want
    assert fast(path, TreeParams(), keep_tree=True, jobs=1) == want
    assert default_jobs() >= 1


def test_api_uses_paths_fds_and_pipes(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(50_000)
    path = write(tmp_path, data)
    want = build_from_stream(io.BytesIO(data), TreeParams()).file_digest()
    assert compute_digest(path) == want
    assert compute_digest(str(path), jobs=2) == want
    rfd, wfd = os.pipe()
    if os.fork() == 0:  # pragma: no cover - the writer child
        os.close(rfd)
        os.write(wfd, data)
        os._exit(0)
    os.close(wfd)
    try:
        assert compute_digest(rfd) == want
    finally:
        os.close(rfd)
        os.wait()


def test_progress_is_per_chunk_and_reaches_the_size(tmp_path: Path) -> None:
    size = 10 * 4096 + 100
    path = write(tmp_path, bytes(size))
    seen: list[int] = []
    build_tree(path, jobs=2, progress=seen.append)
    fast(path, TreeParams(), jobs=2, progress=seen.append, options=PARALLEL)
    assert seen[-1] == size
    assert len(seen) >= 11
    assert seen[-11:] == sorted(seen[-11:])


def test_cancel_stops_and_reaps_workers(tmp_path: Path) -> None:
    path = write(tmp_path, bytes(40 * 4096))
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CancelledError):
        fast(path, TreeParams(), jobs=3, cancel=cancel, options=PARALLEL)
    assert len(calls) == 4


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, b"x")
    with pytest.raises(UsageError, match="at least 1"):
        fast(path, TreeParams(), jobs=0)


@pytest.mark.parametrize("jobs", [1, 2])
def test_truncation_while_hashing_is_detected(tmp_path: Path, jobs: int) -> None:
    path = write(tmp_path, os.urandom(64 * 4096))

    def truncate(done: int) -> None:
        if done == 4 * 4096:
            os.truncate(path, 10 * 4096)

    with pytest.raises(FileChangedError):
        fast(path, TreeParams(), jobs=jobs, progress=truncate, options=PARALLEL)


@pytest.mark.parametrize("jobs", [1, 2])
def test_growth_and_rewrite_while_hashing_are_detected(tmp_path: Path, jobs: int) -> None:
    path = write(tmp_path, bytes(64 * 4096))
    os.utime(path, ns=(10**18, 10**18))

    def grow(done: int) -> None:
        if done == 4 * 4096:
            with path.open("ab") as f:
                f.write(b"more")

    with pytest.raises(FileChangedError):
        fast(path, TreeParams(), jobs=jobs, progress=grow, options=PARALLEL)

    def rewrite(done: int) -> None:
        if done == 4 * 4096:
            with path.open("r+b") as f:
                f.seek(40 * 4096)
                f.write(b"changed")

    with pytest.raises(FileChangedError):
        fast(path, TreeParams(), jobs=jobs, progress=rewrite, options=PARALLEL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_dead_worker_is_an_error_not_a_crash(tmp_path: Path, sig: int) -> None:
    # Big enough that the worker is still blocked on its full pipe when it is killed.
    path = write(tmp_path, bytes(2048 * 4096))
    workers = []

    def kill(done: int) -> None:
        if done == 4096:
            workers.extend(children())
            for pid in workers:
                os.kill(pid, sig)

    with pytest.raises((InputError, FileChangedError)):
        fast(path, TreeParams(), jobs=2, progress=kill, options=PARALLEL)
    assert workers, "no worker was forked"


@pytest.mark.parametrize("jobs", [1, 2])
def test_spooled_tree_is_the_same(tmp_path: Path, jobs: int) -> None:
    params = TreeParams(SHA256, 1024, b"spool")
    data = random.Random(3).randbytes(5000 * 1024 + 3)
    path = write(tmp_path, data)
    options = FastOptions(chunk_size=8192, parallel_min_size=0, spool_min_tree=0)
    assert fast(path, params, keep_tree=True, jobs=jobs, options=options) == reference(data, params)


def test_spool_is_closed_on_failure(tmp_path: Path) -> None:
    path = write(tmp_path, bytes(64 * 4096))
    options = FastOptions(chunk_size=4096, parallel_min_size=0, spool_min_tree=0)
    before = open_fds()

    def truncate(done: int) -> None:
        if done == 8 * 4096:
            os.truncate(path, 4096)

    with pytest.raises(FileChangedError):
        fast(path, TreeParams(), keep_tree=True, jobs=2, progress=truncate, options=options)
    assert open_fds() <= before


@pytest.fixture
def another_thread() -> Iterator[None]:
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    yield
    stop.set()
    thread.join()


def hashing_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "pyverity-hash"]


@pytest.mark.usefixtures("another_thread")
@pytest.mark.parametrize("accel", [None, False])
def test_no_fork_while_other_threads_run(tmp_path: Path, accel: bool | None) -> None:
    from pyverity.hashing.runhash import uses_accelerator

    data = random.Random(4).randbytes(20 * 4096)
    path = write(tmp_path, data)
    seen: list[tuple[list[int], list[str]]] = []
    options = FastOptions(chunk_size=4096, parallel_min_size=0, accel=accel)
    got = fast(
        path,
        TreeParams(),
        keep_tree=True,
        jobs=3,
        progress=lambda _: seen.append((children(), hashing_threads())),
        options=options,
    )
    assert got == reference(data, TreeParams())
    assert not any(forked for forked, _ in seen)
    threads = max(len(names) for _, names in seen)
    # With the accelerator (it releases the GIL) threads share the work; without, inline.
    assert threads == (2 if uses_accelerator(TreeParams(), accel=accel) else 0)
    assert not hashing_threads()


@pytest.mark.usefixtures("another_thread")
def test_hashing_threads_stop_on_cancel_and_on_change(tmp_path: Path) -> None:
    path = write(tmp_path, bytes(512 * 4096))
    options = FastOptions(chunk_size=4096, parallel_min_size=0)
    calls: list[int] = []
    with pytest.raises(CancelledError):
        fast(
            path,
            TreeParams(),
            jobs=2,
            cancel=lambda: calls.append(1) or len(calls) > 5,
            options=options,
        )
    assert not hashing_threads()

    def truncate(done: int) -> None:
        if done == 8 * 4096:
            os.truncate(path, 20 * 4096)

    with pytest.raises(FileChangedError):
        fast(path, TreeParams(), jobs=2, progress=truncate, options=options)
    assert not hashing_threads()


@pytest.mark.parametrize(
    ("status", "error"), [(3, FileChangedError), (105, OSError), (1, InputError)]
)
def test_worker_exit_status_becomes_the_right_error(status: int, error: type) -> None:
    from pyverity.hashing import fast as fast_module

    workers = fast_module._Workers(0, bytes, size=4096, chunk=4096, block_size=4096)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits at once with the status under test
        os._exit(status)
    os.close(wfd)
    workers._pids.append(pid)
    workers._pipes.append(rfd)
    with pytest.raises(error) as caught:
        workers.receive(0, 32)
    workers.kill()
    if status == 105:
        assert caught.value.errno == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize("map_workers", [True, False])
@pytest.mark.parametrize("jobs", [2, 3])
def test_mapping_and_reading_workers_give_the_same_tree(
    tmp_path: Path, map_workers: bool, jobs: int
) -> None:
    """Mapping workers (the caller only folds) and reading ones (the caller hashes a share);
    the last chunk, with a partial block, is always read."""
    data = os.urandom(40 * 4096 + 123)
    path = write(tmp_path, data)
    options = FastOptions(chunk_size=3 * 4096, parallel_min_size=0, map_workers=map_workers)
    for params in (TreeParams(), TreeParams(SHA512, 4096, b"s"), TreeParams(SHA256, 1024)):
        got = fast(path, params, keep_tree=True, jobs=jobs, options=options)
        assert got == reference(data, params)


def test_holes_are_read_not_mapped(tmp_path: Path) -> None:
    """A sparse file: the extent map shows its data; chunks in holes are read with pread (from
    the zero page), so hashing it allocates nothing, on tmpfs too."""
    from pyverity.hashing.fast import _data_extents, _mappable

    for directory in (tmp_path, Path("/dev/shm")):
        if not directory.is_dir():
            continue
        path = directory / f"sparse-{os.getpid()}"
        try:
            with path.open("wb") as f:
                f.truncate(64 << 20)
                f.seek(8 << 20)
                f.write(os.urandom(1 << 20))
            blocks = path.stat().st_blocks
            fd = os.open(path, os.O_RDONLY)
            try:
                os.lseek(fd, 5, os.SEEK_SET)
                extents = _data_extents(fd, 64 << 20)
                assert os.lseek(fd, 0, os.SEEK_CUR) == 5  # the caller's offset is kept
            finally:
                os.close(fd)
            if extents:  # the file system reports holes
                assert any(s <= 8 << 20 and e >= 9 << 20 for s, e in extents)
                assert not _mappable(extents, 32 << 20, 1 << 20, 4096)
            assert _mappable([(0, 1 << 20)], 0, 1 << 20, 4096)
            assert not _mappable([(0, 1 << 20)], 4096, 1 << 20, 4096)  # past the extent
            assert not _mappable([(0, 1 << 20)], 100, 4096, 4096)  # not page-aligned
            assert not _mappable([(0, 1 << 20)], 0, 4097, 4096)  # a partial block
            assert not _mappable([], 0, 4096, 4096)
            want = reference(path.read_bytes(), TreeParams(), keep_tree=False)
            options = FastOptions(parallel_min_size=0)
            got = fast(path, TreeParams(), keep_tree=False, jobs=2, options=options)
            assert got == want
            assert path.stat().st_blocks == blocks  # no hole was filled
        finally:
            path.unlink(missing_ok=True)
