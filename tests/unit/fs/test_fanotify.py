"""fanotify: the record parser (hand-made, fuzzed), the constants against the kernel headers,
error mapping, and real events from a filesystem mark on a private mount.

The mount is a tmpfs (fsid and file handles since Linux 5.x; user xattrs since 6.6) or, if the
kernel cannot mark a tmpfs, a loop-mounted ext4 image. A filesystem mark on ``/`` would also see
every other process on the machine; a private mount sees only this test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.errors import FormatError
from pyverity.fs import fanotify
from pyverity.fs.fanotify import Fan, FanotifyError, FanotifyWatch, parse_events
from pyverity.fs.inotify import InotifyWatch
from pyverity.fs.watch import Change, Watch, WatchEvent, filter_to_roots, under_roots

CI = os.environ.get("CI") == "true"


def _unavailable(why: str) -> None:
    if CI:
        pytest.fail(why)
    pytest.skip(why)


def _can_mark(path: str) -> bool:
    try:
        w = FanotifyWatch()
    except FanotifyError as e:
        _unavailable(f"no fanotify here: {e}")
    try:
        w.add_root(path)
    except FanotifyError as e:
        if e.can_fall_back:
            return False
        raise
    finally:
        w.close()
    return True


@contextlib.contextmanager
def _mounted(args: list[str], where: str) -> Iterator[str]:
    subprocess.run(["mount", *args, where], check=True, capture_output=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def mnt() -> Iterator[str]:
    """A private filesystem that fanotify can mark (tmpfs, else an ext4 image)."""
    if os.geteuid() != 0:
        _unavailable("fanotify needs CAP_SYS_ADMIN (run as root)")
    with tempfile.TemporaryDirectory(prefix="pyverity-fan-") as scratch:
        where = os.path.join(scratch, "mnt")  # noqa: PTH118
        os.mkdir(where)  # noqa: PTH102
        with _mounted(["-t", "tmpfs", "-o", "size=64m", "tmpfs"], where):
            if _can_mark(where):
                yield where
                return
        image = os.path.join(scratch, "fs.img")  # noqa: PTH118
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, timeout=60)
        with _mounted(["-o", "loop", image], where):
            if not _can_mark(where):
                _unavailable("fanotify can mark neither tmpfs nor ext4 here")
            yield where


@pytest.fixture
def root(mnt: str, request: pytest.FixtureRequest) -> Iterator[str]:
    d = os.path.join(mnt, request.node.name.replace("[", "-").rstrip("]"))  # noqa: PTH118
    os.mkdir(d)  # noqa: PTH102
    yield d
    shutil.rmtree(d)


@pytest.fixture
def watch(root: str) -> Iterator[FanotifyWatch]:
    w = FanotifyWatch()
    w.add_root(root)
    yield w
    w.close()


def collect(
    w: Watch,
    roots: tuple[str, ...],
    done: Callable[[list[WatchEvent]], bool],
    timeout: float = 5.0,
) -> list[WatchEvent]:
    """Events under ``roots`` until ``done(events)`` holds; fails after ``timeout`` seconds."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out; got {events}")
        select.select([w.fd], [], [], left)
        events.extend(filter_to_roots(w.read(), roots))
    return events


def has(change: Change, path: str, **kw: object) -> Callable[[list[WatchEvent]], bool]:
    def check(events: list[WatchEvent]) -> bool:
        return any(
            e.change is change and e.path == path and all(getattr(e, k) == v for k, v in kw.items())
            for e in events
        )

    return check


# -- real events ------------------------------------------------------------------------------


def test_write_gives_create_modify_close_write(watch: FanotifyWatch, root: str) -> None:
    f = os.path.join(root, "f")  # noqa: PTH118
    Path(f).write_bytes(b"data")
    events = collect(watch, (root,), has(Change.CLOSE_WRITE, f))
    kinds = [e.change for e in events if e.path == f]
    assert kinds[:3] == [Change.CREATED, Change.WRITE, Change.CLOSE_WRITE]
    assert not any(e.is_dir for e in events)


def test_attribute_writes_chmod_and_utime_are_attrib(watch: FanotifyWatch, root: str) -> None:
    f = os.path.join(root, "f")  # noqa: PTH118
    Path(f).write_bytes(b"x")
    collect(watch, (root,), has(Change.CLOSE_WRITE, f))
    subprocess.run(["setfattr", "-n", "user.verity", "-v", "0x01", f], check=True, timeout=10)
    assert collect(watch, (root,), has(Change.ATTR, f)) == [WatchEvent(Change.ATTR, f)]
    os.chmod(f, 0o600)  # noqa: PTH101
    collect(watch, (root,), has(Change.ATTR, f))
    os.utime(f, (1, 1))
    collect(watch, (root,), has(Change.ATTR, f))
    os.chmod(root, 0o700)  # noqa: PTH101  (the directory itself: reported with name ".")
    collect(watch, (root,), has(Change.ATTR, root, is_dir=True))


def test_changes_of_the_ignored_process_are_not_reported(root: str) -> None:
    w = FanotifyWatch(ignore_pids={os.getpid()})
    w.add_root(root)
    try:
        own, other = os.path.join(root, "own"), os.path.join(root, "other")  # noqa: PTH118
        Path(own).write_bytes(b"by this process")
        subprocess.run(["setfattr", "-n", "user.verity", "-v", "0x01", own], check=True)
        subprocess.run(["sh", "-c", f"echo x > {other}"], check=True, timeout=10)
        events = collect(w, (root,), has(Change.CLOSE_WRITE, other))
        assert [e.path for e in events if e.path == own] == [own]  # setfattr's ATTR only
        assert [e.change for e in events if e.path == own] == [Change.ATTR]
    finally:
        w.close()


def test_rename_pairs_and_delete(watch: FanotifyWatch, root: str) -> None:
    a, b = os.path.join(root, "a"), os.path.join(root, "b")  # noqa: PTH118
    Path(a).write_bytes(b"x")
    os.rename(a, b)  # noqa: PTH104
    os.unlink(b)  # noqa: PTH108
    events = collect(watch, (root,), has(Change.DELETED, b))
    moved = [e for e in events if e.change in (Change.MOVED_FROM, Change.MOVED_TO)]
    assert [(e.change, e.path) for e in moved] == [(Change.MOVED_FROM, a), (Change.MOVED_TO, b)]
    if watch._mask & Fan.RENAME:  # one FAN_RENAME event: the halves share a cookie
        assert moved[0].cookie == moved[1].cookie != 0


def test_file_in_new_nested_directories(watch: FanotifyWatch, root: str) -> None:
    deep = os.path.join(root, "x", "y", "z")  # noqa: PTH118
    os.makedirs(deep)  # noqa: PTH103
    f = os.path.join(deep, "f")  # noqa: PTH118
    Path(f).write_bytes(b"x")
    events = collect(watch, (root,), has(Change.CLOSE_WRITE, f))
    made = [e.path for e in events if e.change is Change.CREATED and e.is_dir]
    assert made == [os.path.join(root, "x"), os.path.join(root, "x", "y"), deep]  # noqa: PTH118
    assert WatchEvent(Change.WRITE, f) in events


def test_renamed_directory_is_not_served_from_the_cache(watch: FanotifyWatch, root: str) -> None:
    d, d2 = os.path.join(root, "d"), os.path.join(root, "d2")  # noqa: PTH118
    os.mkdir(d)  # noqa: PTH102
    Path(d, "f").write_bytes(b"x")
    collect(watch, (root,), has(Change.CLOSE_WRITE, os.path.join(d, "f")))  # noqa: PTH118
    os.rename(d, d2)  # noqa: PTH104
    collect(watch, (root,), has(Change.MOVED_TO, d2, is_dir=True))
    Path(d2, "f").write_bytes(b"y")
    events = collect(watch, (root,), has(Change.CLOSE_WRITE, os.path.join(d2, "f")))  # noqa: PTH118
    assert not [e for e in events if e.path.startswith(d + os.sep)]


def test_a_directory_moved_drops_only_the_paths_beneath_it(watch: FanotifyWatch, root: str) -> None:
    keep, gone, moved = (os.path.join(root, n) for n in ("keep", "gone", "moved"))  # noqa: PTH118
    sub = os.path.join(gone, "sub")  # noqa: PTH118
    os.mkdir(keep)  # noqa: PTH102
    os.makedirs(sub)  # noqa: PTH103
    Path(keep, "f").write_bytes(b"x")
    Path(sub, "f").write_bytes(b"x")
    collect(watch, (root,), has(Change.CLOSE_WRITE, os.path.join(sub, "f")))  # noqa: PTH118
    assert {keep, sub} <= set(watch._res._cache.values())
    os.rename(gone, moved)  # noqa: PTH104
    collect(watch, (root,), has(Change.MOVED_TO, moved, is_dir=True))
    cached = set(watch._res._cache.values())
    assert keep in cached  # another directory's path is still known
    assert not [p for p in cached if p == gone or p.startswith(gone + os.sep)]
    f = os.path.join(moved, "sub", "f")  # noqa: PTH118
    Path(f).write_bytes(b"y")
    collect(watch, (root,), has(Change.CLOSE_WRITE, f))


def test_events_of_a_deleted_directory_are_dropped(watch: FanotifyWatch, root: str) -> None:
    d = os.path.join(root, "gone")  # noqa: PTH118
    os.mkdir(d)  # noqa: PTH102
    Path(d, "f").write_bytes(b"x")
    shutil.rmtree(d)  # before anything is read: the handle of "gone" is stale
    events = collect(watch, (root,), has(Change.DELETED, d, is_dir=True))
    assert [e for e in events if e.path.startswith(d + os.sep)] == []


def test_rest_of_the_filesystem_is_filtered_out(mnt: str, root: str) -> None:
    inside, outside = os.path.join(root, "in"), os.path.join(root, "out")  # noqa: PTH118
    os.mkdir(inside)  # noqa: PTH102
    os.mkdir(outside)  # noqa: PTH102
    w = FanotifyWatch()
    try:
        w.add_root(inside)
        w.add_root(inside)  # same filesystem: still one mark
        assert w.watch_count == 1
        Path(outside, "f").write_bytes(b"x")
        Path(inside, "f").write_bytes(b"x")
        raw = collect(w, (mnt,), has(Change.CLOSE_WRITE, os.path.join(inside, "f")))  # noqa: PTH118
        assert WatchEvent(Change.CLOSE_WRITE, os.path.join(outside, "f")) in raw  # noqa: PTH118
        kept = list(filter_to_roots(raw, (inside,)))
        assert kept
        assert all(e.path.startswith(inside + os.sep) for e in kept)
    finally:
        w.close()


@pytest.mark.parametrize("make", [FanotifyWatch, InotifyWatch], ids=["fanotify", "inotify"])
def test_both_watches_give_the_same_events(make: Callable[[], Watch], root: str) -> None:
    w = make()
    try:
        w.add_root(root)
        assert w.watch_dir(root)
        f = os.path.join(root, "f")  # noqa: PTH118
        Path(f).write_bytes(b"x")
        os.setxattr(f, "user.verity", b"v")
        events = collect(w, (root,), has(Change.ATTR, f))
        assert [e.change for e in events] == [
            Change.CREATED,
            Change.WRITE,
            Change.CLOSE_WRITE,
            Change.ATTR,
        ]
    finally:
        w.close()


# -- errors -----------------------------------------------------------------------------------


def test_init_and_mark_errors_carry_errno(root: str) -> None:
    with pytest.raises(FanotifyError) as bad_flags:
        fanotify.Fanotify(fanotify.DEFAULT_INIT | 0x80000000)
    assert bad_flags.value.errno == errno.EINVAL
    assert bad_flags.value.can_fall_back
    fan = fanotify.Fanotify()
    try:
        with pytest.raises(FanotifyError) as proc:
            fan.mark("/proc", fanotify.DAEMON_MASK)  # no fsid / file handles on procfs
        assert proc.value.can_fall_back, proc.value
        with pytest.raises(FanotifyError) as missing:
            fan.mark(os.path.join(root, "missing"), fanotify.DAEMON_MASK)  # noqa: PTH118
        assert missing.value.errno == errno.ENOENT
        assert not missing.value.can_fall_back
        assert "No such file" in str(missing.value)
    finally:
        fan.close()


def test_without_cap_sys_admin_it_is_eperm() -> None:
    """Since 5.13 an unprivileged fanotify_init succeeds; a filesystem mark still needs the cap."""
    if os.geteuid() != 0:
        _unavailable("needs root to drop to nobody")
    code = (
        "import os\n"
        "from pyverity.fs.fanotify import FanotifyWatch, FanotifyError, libc\n"
        "libc()\n"  # loaded while still root: the interpreter may not be readable by nobody
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n    FanotifyWatch().add_root('/')\nexcept FanotifyError as e:\n"
        "    print(e.errno, e.can_fall_back, e.remedy)\n"
    )
    src = str(Path(fanotify.__file__).parents[2])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": src},
        check=True,
    ).stdout.split(" ", 2)
    assert out[:2] == [str(errno.EPERM), "True"]
    assert "CAP_SYS_ADMIN" in out[2]


# -- the parser -------------------------------------------------------------------------------


def meta(mask: int, body: bytes = b"", fd: int = Fan.NOFD) -> bytes:
    return struct.pack("=IBBHQii", 24 + len(body), 3, 0, 24, mask, fd, 1234) + body


def fid(info_type: int, handle: bytes, name: bytes | None = None, fsid: int = 7) -> bytes:
    body = struct.pack("=iiIi", fsid, 0, len(handle), 1) + handle
    if name is not None:
        body += name + b"\0"
    body += bytes(-(4 + len(body)) % 4)
    return struct.pack("=BBH", info_type, 0, 4 + len(body)) + body


def test_parse_dfid_name_and_fid() -> None:
    h1, h2 = b"\x01" * 8, b"\x02" * 12
    buf = meta(
        Fan.CREATE | Fan.ONDIR,
        fid(Fan.INFO_TYPE_DFID_NAME, h1, b"sub") + fid(Fan.INFO_TYPE_FID, h2),
    ) + meta(Fan.ATTRIB, fid(Fan.INFO_TYPE_DFID_NAME, h1, b"."))
    first, second = parse_events(buf)
    assert first.metadata.mask == Fan.CREATE | Fan.ONDIR
    assert first.metadata.pid == 1234
    assert first.metadata.fd == Fan.NOFD
    dfid = first.record(Fan.INFO_TYPE_DFID_NAME)
    assert dfid is not None
    assert dfid.name == b"sub"
    assert dfid.fsid == (7, 0)
    assert dfid.fsid_key == 7
    assert dfid.handle == fanotify.FileHandle(8, 1, h1)
    own = first.record(Fan.INFO_TYPE_FID)
    assert own is not None
    assert own.name is None
    assert own.handle.f_handle == h2
    dot = second.record(Fan.INFO_TYPE_DFID_NAME)
    assert dot is not None
    assert dot.name == b"."


def test_events_of_the_skipped_pid_are_not_decoded() -> None:
    bad_record = struct.pack("=BBH", Fan.INFO_TYPE_FID, 0, 2)  # a length no record can have
    buf = meta(Fan.ATTRIB, bad_record) + meta(Fan.CREATE, fid(Fan.INFO_TYPE_FID, b"\x03" * 8))
    with pytest.raises(FormatError):
        list(parse_events(buf))
    assert [e.metadata.mask for e in parse_events(buf, skip_pids={1234})] == []
    good = meta(Fan.CREATE, fid(Fan.INFO_TYPE_FID, b"\x03" * 8))
    assert [e.metadata.mask for e in parse_events(good, skip_pids={99, 7})] == [Fan.CREATE]


def test_overflow_is_its_own_event() -> None:
    (ev,) = parse_events(meta(Fan.Q_OVERFLOW))
    assert ev.info == ()
    w = FanotifyWatch.__new__(FanotifyWatch)  # translate needs no group for an overflow
    assert list(w.translate(ev)) == [WatchEvent(Change.OVERFLOW, "")]


GOOD = meta(Fan.MODIFY, fid(Fan.INFO_TYPE_DFID_NAME, b"\x01" * 8, b"f"))


@pytest.mark.parametrize(
    ("buf", "words"),
    [
        (GOOD[:23], "less than a header"),
        (GOOD[:-1], "bad lengths"),
        (GOOD[:4] + b"\x02" + GOOD[5:], "version 2"),
        (struct.pack("=I", 12) + GOOD[4:], "bad lengths"),  # event_len < metadata
        (GOOD[:6] + struct.pack("=H", 8) + GOOD[8:], "bad lengths"),  # metadata_len < 24
        (meta(0, b"\x02\x00"), "header cut short"),
        (meta(0, struct.pack("=BBH", 2, 0, 2)), "record length 2"),
        (meta(0, struct.pack("=BBH", 2, 0, 64)), "record length 64"),
        (meta(0, struct.pack("=BBH", 2, 0, 12) + bytes(8)), "fid record cut short"),
        (meta(0, fid(2, b"")), "file handle of 0 bytes"),
        (meta(0, fid(2, bytes(129))), "file handle of 129 bytes"),
        (meta(0, fid(2, b"h", b"")), "bad entry name"),
        (meta(0, fid(2, b"h", b"a/b")), "bad entry name"),
        (meta(0, fid(2, b"h", b"..")), "bad entry name"),
        (meta(0, fid(2, b"h", b"n" * 256)), "bad entry name"),
        (meta(0, struct.pack("=BBH", 2, 0, 24) + struct.pack("=iiIi", 0, 0, 4, 0) + b"abcd"),
         "bad entry name"),  # no NUL in the record
    ],
)  # fmt: skip
def test_bad_buffers_are_format_errors(buf: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        list(parse_events(buf))


def test_unknown_info_records_are_skipped() -> None:
    (ev,) = parse_events(meta(0, struct.pack("=BBHi", 4, 0, 8, 99)))  # a pidfd record
    assert ev.info == ()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_buffers_parse_or_raise_format_error(buf: bytes) -> None:
    try:
        events = list(parse_events(buf))
    except FormatError:
        return
    assert sum(e.metadata.event_len for e in events) == len(buf)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(GOOD) * 2 - 1), st.integers(0, 255))
def test_corrupted_valid_buffers_parse_or_raise_format_error(at: int, byte: int) -> None:
    buf = bytearray(GOOD + GOOD)
    buf[at] = byte
    try:
        events = list(parse_events(bytes(buf)))
    except FormatError:
        return
    for e in events:
        for r in e.info:
            assert 0 < r.handle.handle_bytes == len(r.handle.f_handle) <= fanotify.MAX_HANDLE_SZ
            assert r.name is None or (r.name and b"/" not in r.name)


def test_under_roots() -> None:
    assert under_roots("/a/b", ("/a",))
    assert under_roots("/a", ("/a/",))
    assert not under_roots("/ab", ("/a",))
    assert under_roots("/x", ("/",))
    assert not under_roots("/b/c", ("/a", "/c"))
    overflow = WatchEvent(Change.OVERFLOW, "")
    assert list(filter_to_roots([overflow, WatchEvent(Change.ATTR, "/b")], ("/a",))) == [overflow]


C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <fcntl.h>
#include <sys/fanotify.h>
int main(void) {
    printf("%zu %zu %zu %zu\n", sizeof(struct fanotify_event_metadata),
           sizeof(struct fanotify_event_info_header), sizeof(struct fanotify_event_info_fid),
           offsetof(struct fanotify_event_metadata, fd));
    printf("%llu %u %u %u %u %u %u %u\n", (unsigned long long)(FAN_MODIFY | FAN_ATTRIB |
           FAN_CLOSE_WRITE | FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_ONDIR | FAN_MOVED_FROM |
           FAN_MOVED_TO | FAN_Q_OVERFLOW | FAN_EVENT_ON_CHILD | FAN_DELETE_SELF | FAN_MOVE_SELF),
           FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_NOTIF,
           FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_EVENT_INFO_TYPE_FID,
           FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID,
           FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME);
    return 0;
}
"""


@pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/include/linux/fanotify.h").exists(),
    reason="needs gcc and the kernel headers (linux-libc-dev) to compile the probe",
)
def test_against_kernel_headers(tmp_path: Path) -> None:
    src = tmp_path / "probe.c"
    src.write_text(C_PROBE)
    subprocess.run(["gcc", "-o", str(tmp_path / "probe"), str(src)], check=True, timeout=60)
    out = subprocess.run(
        [str(tmp_path / "probe")], check=True, capture_output=True, text=True, timeout=10
    ).stdout.split("\n")
    assert [int(x) for x in out[0].split()] == [24, 4, 12, 16]
    events = (
        Fan.MODIFY | Fan.ATTRIB | Fan.CLOSE_WRITE | Fan.CREATE | Fan.DELETE | Fan.RENAME
        | Fan.ONDIR | Fan.MOVED_FROM | Fan.MOVED_TO | Fan.Q_OVERFLOW | Fan.EVENT_ON_CHILD
        | Fan.DELETE_SELF | Fan.MOVE_SELF
    )  # fmt: skip
    assert [int(x) for x in out[1].split()] == [
        events,
        Fan.REPORT_DFID_NAME | Fan.REPORT_FID | Fan.CLOEXEC | Fan.NONBLOCK | Fan.CLASS_NOTIF,
        Fan.MARK_ADD | Fan.MARK_FILESYSTEM,
        Fan.INFO_TYPE_FID,
        Fan.INFO_TYPE_DFID_NAME,
        Fan.INFO_TYPE_DFID,
        Fan.INFO_TYPE_OLD_DFID_NAME,
        Fan.INFO_TYPE_NEW_DFID_NAME,
    ]
