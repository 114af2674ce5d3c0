"""The queue, the watcher (real inotify), caller checks and attribute parsing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyverity.daemon.pool import BACKGROUND, FIRST_USE, Job, JobQueue
from pyverity.daemon.protection import appraise, read_declared
from pyverity.daemon.server import Peer, denial, may_open
from pyverity.daemon.watcher import Change, FileEvent, Watcher
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree


def test_queue_first_use_first_and_one_job_per_path() -> None:
    q = JobQueue()
    q.push(Job("/a", BACKGROUND, b""))
    q.push(Job("/b", BACKGROUND, b""))
    q.push(Job("/c", FIRST_USE, b""))
    q.push(Job("/b", FIRST_USE, b""))  # bumped
    q.push(Job("/a", BACKGROUND, b""))  # requeued: goes after /b? no, stays background
    assert len(q) == 3
    assert q.peek_priority() == FIRST_USE
    assert [q.pop().path for _ in range(3)] == ["/c", "/b", "/a"]  # type: ignore[union-attr]
    assert q.pop() is None
    q.push(Job("/x", BACKGROUND, b""))
    assert q.remove("/x") is not None
    assert q.pop() is None


def _drain(w: Watcher) -> list[FileEvent]:
    """The kernel queues an event before the call that caused it returns: read them all now."""
    return list(w.events())


def test_watcher_sees_attr_write_and_new_directories(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "f"
    f.write_bytes(b"x")
    w = Watcher()
    try:
        assert list(w.add_tree(str(tmp_path))) == [str(f)]
        os.setxattr(f, "user.verity", b"v")
        with f.open("ab") as fh:
            fh.write(b"y")
        (tmp_path / "new" / "deeper").mkdir(parents=True)
        g = tmp_path / "new" / "deeper" / "g"
        events = _drain(w)
        g.write_bytes(b"z")
        os.setxattr(g, "user.ima", b"i")
        f.unlink()
        events += _drain(w)
    finally:
        w.close()
    kinds = {(e.change, e.path) for e in events}
    assert (Change.ATTR, str(f)) in kinds
    assert (Change.WRITE, str(f)) in kinds
    assert (Change.CLOSE_WRITE, str(f)) in kinds
    assert (Change.ATTR, str(g)) in kinds  # the new nested directory is watched
    assert (Change.GONE, str(f)) in kinds


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    w = Watcher()
    try:
        assert list(w.add_tree(str(root))) == []
        assert w.watch_count == 1
    finally:
        w.close()


def test_may_open_by_credentials_or_descriptor(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    f.chmod(0o600)
    st = f.stat()
    owner = Peer(1, st.st_uid, st.st_gid)
    stranger = Peer(1, 54321, 54321)
    assert may_open(owner, str(f), None)
    assert not may_open(stranger, str(f), None)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert may_open(stranger, str(f), fd)  # holding the file open proves access
        g = tmp_path / "g"
        g.write_bytes(b"y")
        assert not may_open(stranger, str(g), fd)  # ...to that file only
    finally:
        os.close(fd)
    f.chmod(0o644)
    assert may_open(stranger, str(f), None) == bool(tmp_path.stat().st_mode & 0o001)


def test_denial_says_missing_only_to_who_could_see_it() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # pytest's tmp_path is under a 0700
        _denial_cases(Path(top))


def _denial_cases(tmp_path: Path) -> None:
    missing = tmp_path / "d" / "missing"
    missing.parent.mkdir()
    root = Peer(1, 0, 0)
    stranger = Peer(1, 54321, 54321)
    assert denial(root, str(missing), None) == "no such file or directory"
    tmp_path.chmod(0o755)
    missing.parent.chmod(0o755)
    assert denial(stranger, str(missing), None) == "no such file or directory"
    missing.parent.chmod(0o700)  # the stranger cannot look inside: it learns nothing
    assert denial(stranger, str(missing), None) == "permission denied"
    f = tmp_path / "f"
    f.write_bytes(b"x")
    f.chmod(0o600)
    assert denial(stranger, str(f), None) == "permission denied"
    assert denial(root, str(f), None) == ""


def test_read_declared_and_appraise(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    f = tmp_path / "f"
    f.write_bytes(data)
    t = build_tree(f)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert not read_declared(fd, "user", None).present
        os.setxattr(fd, "user.verity", t.descriptor.to_bytes())
        d = read_declared(fd, "user", None)
        assert d.present
        assert d.needs_tree
        assert d.protection is not None
        assert d.declared_digest == str(t.file_digest())
        assert appraise(d.protection, t, None).state == "READY"
        other = build_tree(f, TreeParams(salt=b"x"))
        wrong = Descriptor.for_tree(TreeParams(), len(data), other.root_hash)
        os.setxattr(fd, "user.verity", wrong.to_bytes())
        d2 = read_declared(fd, "user", None)
        assert d2.protection is not None
        assert d2.fingerprint != d.fingerprint
        assert appraise(d2.protection, t, None).state == "MISMATCH"
        big = Descriptor(1, 20, len(data), bytes(32))  # 1 MiB blocks: out of bounds
        os.setxattr(fd, "user.verity", big.to_bytes())
        d3 = read_declared(fd, "user", None)
        assert d3.present
        assert d3.protection is None
        assert d3.invalid_reason
        os.removexattr(fd, "user.verity")
        os.setxattr(fd, "user.ima", b"\x04\x04" + bytes(32))
        d4 = read_declared(fd, "user", None)
        assert d4.kind == "classic"
        assert not d4.needs_tree
    finally:
        os.close(fd)


def test_overflow_and_parsing_of_raw_records() -> None:
    import struct

    from pyverity.fs.inotify import Event, Mask, parse_events

    raw = (
        struct.pack("iIII", -1, Mask.Q_OVERFLOW, 0, 0)
        + struct.pack("iIII", 3, Mask.ATTRIB, 0, 16)
        + b"name\0".ljust(16, b"\0")
    )
    events = list(parse_events(raw))
    assert [e.mask for e in events] == [Mask.Q_OVERFLOW, Mask.ATTRIB]
    assert events[1].name == b"name"
    from pyverity.fs.inotify import InotifyWatch

    ino = InotifyWatch()
    w = Watcher(ino)

    def translate(ev: Event) -> list[FileEvent]:
        return [f for raw in ino.translate(ev) for f in w._translate(raw)]

    try:
        assert translate(events[0]) == [FileEvent(Change.OVERFLOW, "")]
        assert translate(events[1]) == []  # unknown watch: ignored
    finally:
        w.close()


def test_writes_queued_before_an_observation_are_marked(tmp_path: Path) -> None:
    w = Watcher()
    try:
        assert list(w.add_tree(str(tmp_path))) == []
        f = tmp_path / "f"
        f.write_bytes(b"data")  # CREATE, MODIFY, CLOSE_WRITE
        os.setxattr(f, "user.verity", b"v")  # ATTRIB
        w.pull()
        first = w.next_event()
        assert first is not None
        assert first[1] == FileEvent(Change.APPEARED, str(f))
        w.observed(str(f))  # the observation sees the data and the attribute
        queued = []
        while (item := w.next_event()) is not None:
            queued.append((item[1].change, w.before_observation(item[0], str(f))))
        assert (Change.WRITE, True) in queued
        assert all(marked for _, marked in queued)
        w.observed(str(f))
        with f.open("ab") as fh:  # after the observation: not marked
            fh.write(b"more")
        w.pull()
        later = w.next_event()
        assert later is not None
        assert later[1].change is Change.WRITE
        assert not w.before_observation(later[0], str(f))
    finally:
        w.close()


def _refused(roots: tuple[str, ...], path: Path) -> int:
    from pyverity.daemon.watcher import open_beneath

    try:
        os.close(open_beneath(roots, str(path)))
    except OSError as e:
        return e.errno or -1
    return 0


def test_open_beneath_never_follows_symlinks(tmp_path: Path) -> None:
    import errno

    from pyverity.daemon.watcher import open_beneath

    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"outside")
    roots = (str(root),)
    fd = open_beneath(roots, str(root / "d" / "f"))
    try:
        assert os.read(fd, 10) == b"inside"
    finally:
        os.close(fd)
    (root / "d").rename(root / "old")
    (root / "d").symlink_to(outside)  # a directory swapped for a symlink
    assert _refused(roots, root / "d" / "f") in (errno.ELOOP, errno.ENOTDIR)
    (root / "link").symlink_to(outside / "f")
    assert _refused(roots, root / "link") == errno.EINVAL
    os.mkfifo(root / "fifo")
    assert _refused(roots, root / "fifo") == errno.EINVAL
    assert _refused(roots, outside / "f") == errno.EXDEV
    assert _refused(roots, Path(f"{root}/old/../old/f")) == errno.EINVAL
