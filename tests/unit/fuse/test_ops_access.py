"""The mount resolves beneath the source and checks the caller itself (no kernel involved)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pyverity.fuse.config import MountConfig
from pyverity.fuse.ops import VerityFS
from pyverity.reader import ReaderOptions
from tests.unit.fuse.helpers import FileInfo
from tests.unit.reader.helpers import NS

USER = 54321  # no such user: not the owner of anything here, in no group


def _fs(src: Path, uid: int = USER, *, rw: bool = False) -> VerityFS:
    config = MountConfig(src, src.parent / "mnt", reader=ReaderOptions(xattr_ns=NS), rw=rw)
    # The pid is ours, whose ids differ from uid: no supplementary groups, no capabilities.
    return VerityFS(config, context=lambda: (uid, uid, os.getpid()))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """src/{private/ (0700) f, open/ (0755) {f 0644, shut 0600, link -> f, up -> private}}"""
    src = tmp_path / "src"
    (src / "private").mkdir(parents=True, mode=0o700)
    (src / "private" / "f").write_bytes(b"secret")
    (src / "private" / "f").chmod(0o644)
    (src / "open").mkdir(mode=0o755)
    (src / "open" / "f").write_bytes(b"public")
    (src / "open" / "f").chmod(0o644)
    (src / "open" / "shut").write_bytes(b"secret")
    (src / "open" / "shut").chmod(0o600)
    (src / "open" / "link").symlink_to("f")
    (src / "open" / "up").symlink_to(src / "private")
    src.chmod(0o755)
    return src


def _code(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        return e.errno or -1
    return 0


def test_search_permission_on_every_directory(src: Path) -> None:
    fs = _fs(src)
    assert _code(fs.getattr, "/private/f") == errno.EACCES
    assert _code(fs.open, "/private/f", FileInfo()) == errno.EACCES
    assert _code(fs.readdir, "/private", 0) == errno.EACCES
    assert _code(fs.getxattr, "/private/f", "security.ima") == errno.EACCES
    assert fs.getattr("/private")["st_mode"] & 0o777 == 0o700  # its own attributes: allowed
    root = _fs(src, 0)
    assert root.getattr("/private/f")["st_size"] == 6
    assert "f" in root.readdir("/private", 0)


def test_open_checks_the_file_opened(src: Path) -> None:
    fs = _fs(src)
    fi = FileInfo()
    assert fs.open("/open/f", fi) == 0
    assert fs.read("/open/f", 100, 0, fi) == b"public"
    fs.release("/open/f", fi)
    assert _code(fs.open, "/open/shut", FileInfo()) == errno.EACCES
    assert _code(fs.readdir, "/open", 0) == 0


def test_symlinks_served_as_symlinks_never_followed(src: Path) -> None:
    fs = _fs(src)
    assert stat.S_ISLNK(fs.getattr("/open/link")["st_mode"])
    assert fs.readlink("/open/link") == "f"
    assert fs.readlink("/open/up") == str(src / "private")
    assert _code(fs.getattr, "/open/up/f") == errno.ELOOP
    assert _code(fs.readdir, "/open/up", 0) == errno.ENOTDIR  # as O_DIRECTORY|O_NOFOLLOW
    assert _code(fs.open, "/open/link", FileInfo()) == errno.EACCES  # not a regular file
    assert _code(fs.readlink, "/open/f") == errno.EINVAL
    root = _fs(src, 0)
    assert _code(root.getattr, "/open/up/f") == errno.ELOOP  # root neither


def test_directory_swapped_for_a_symlink(src: Path) -> None:
    fs = _fs(src, 0)
    (src / "open").rename(src / "was-open")
    (src / "open").symlink_to(src / "private")
    assert _code(fs.getattr, "/open/f") == errno.ELOOP
    assert _code(fs.open, "/open/f", FileInfo()) == errno.ELOOP


def test_rw_changes_are_checked(src: Path) -> None:
    fs = _fs(src, rw=True)
    assert _code(fs.unlink, "/open/f") == errno.EACCES  # no write on the directory
    assert _code(fs.mkdir, "/open/d", 0o755) == errno.EACCES
    assert _code(fs.chmod, "/open/f", 0o777) == errno.EPERM  # not the owner
    assert _code(fs.rename, "/open/f", "/g") == errno.EACCES
    (src / "mine").mkdir()
    (src / "mine").chmod(0o777)
    fi = FileInfo(flags=os.O_WRONLY)
    assert fs.create("/mine/new", 0o100644, fi) == 0
    fs.release("/mine/new", fi)
    assert (src / "mine" / "new").stat().st_uid == USER  # the caller's, not the server's
    assert fs.chmod("/mine/new", 0o600) == 0
    assert _code(fs.symlink, "/open/up/x", "y") == errno.ELOOP
    assert fs.mkdir("/mine/d", 0o755) == 0
    assert (src / "mine" / "d").stat().st_uid == USER
    assert fs.rename("/mine/new", "/mine/renamed") == 0
    assert fs.unlink("/mine/renamed") == 0
    assert fs.rmdir("/mine/d") == 0
    assert sorted(p.name for p in (src / "mine").iterdir()) == []
