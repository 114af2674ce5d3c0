"""inotify: the record parser and :class:`InotifyWatch` (a watch per directory) on real files."""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyverity.fs.inotify import Event, InotifyWatch, Mask, parse_events
from pyverity.fs.watch import Change, WatchEvent


@pytest.fixture
def watch() -> Iterator[InotifyWatch]:
    w = InotifyWatch()
    yield w
    w.close()


def collect(
    w: InotifyWatch, done: Callable[[list[WatchEvent]], bool], timeout: float = 5.0
) -> list[WatchEvent]:
    """Events until ``done(events)`` holds; fails after ``timeout`` seconds."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out; got {events}")
        select.select([w.fd], [], [], left)
        events.extend(w.read())
    return events


def test_parse_records() -> None:
    raw = (
        struct.pack("iIII", -1, Mask.Q_OVERFLOW, 0, 0)
        + struct.pack("iIII", 3, Mask.ATTRIB, 0, 16)
        + b"name\0".ljust(16, b"\0")
    )
    assert list(parse_events(raw)) == [
        Event(-1, Mask.Q_OVERFLOW, 0, b""),
        Event(3, Mask.ATTRIB, 0, b"name"),
    ]


def test_events_with_paths_and_cookies(watch: InotifyWatch, tmp_path: Path) -> None:
    root = str(tmp_path)
    assert watch.watch_dir(root)
    assert watch.watch_count == 1
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x")
    os.setxattr(a, "user.verity", b"v")
    a.rename(b)
    b.unlink()
    events = collect(watch, lambda es: any(e.change is Change.DELETED for e in es))
    assert [(e.change, e.path) for e in events] == [
        (Change.CREATED, str(a)),
        (Change.WRITE, str(a)),
        (Change.CLOSE_WRITE, str(a)),
        (Change.ATTR, str(a)),
        (Change.MOVED_FROM, str(a)),
        (Change.MOVED_TO, str(b)),
        (Change.DELETED, str(b)),
    ]
    assert events[4].cookie == events[5].cookie != 0
    assert events[0].cookie == 0


def test_directories_and_forgetting(watch: InotifyWatch, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    assert not watch.watch_dir(str(sub))  # not there yet
    assert watch.watch_dir(str(tmp_path))
    sub.mkdir()
    events = collect(watch, bool)
    assert events == [WatchEvent(Change.CREATED, str(sub), is_dir=True)]
    assert watch.watch_dir(str(sub))
    assert watch.watch_count == 2
    watch.forget_under(str(tmp_path))
    assert watch.watch_count == 0
    (sub / "f").write_bytes(b"x")  # no watch left: nothing is reported
    assert list(watch.read()) == []


def test_overflow_and_ignored(watch: InotifyWatch, tmp_path: Path) -> None:
    assert list(watch.translate(Event(-1, Mask.Q_OVERFLOW, 0, b""))) == [
        WatchEvent(Change.OVERFLOW, "")
    ]
    d = tmp_path / "d"
    d.mkdir()
    assert watch.watch_dir(str(d))
    d.rmdir()  # IN_DELETE_SELF, then IN_IGNORED drops the watch
    deadline = time.monotonic() + 5
    while watch.watch_count and time.monotonic() < deadline:
        select.select([watch.fd], [], [], deadline - time.monotonic())
        assert list(watch.read()) == []
    assert watch.watch_count == 0
