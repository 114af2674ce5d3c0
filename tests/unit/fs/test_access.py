"""generic_permission for a caller: owner, group (incl. supplementary), other, capabilities."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from pyverity.fs.access import (
    CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH,
    CAP_FOWNER,
    Credentials,
    acting_as,
    can_act_as,
    check_access,
    may_chown,
    may_delete,
    may_set_times,
    xattr_denied,
)

R, W, X = os.R_OK, os.W_OK, os.X_OK
FILE, DIR = stat.S_IFREG, stat.S_IFDIR


def _st(mode: int, uid: int = 100, gid: int = 200, kind: int = FILE) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


OWNER = Credentials(100, 999)
GROUP = Credentials(101, 200)
SUPPLEMENTARY = Credentials(102, 999, {5, 200})
OTHER = Credentials(103, 999, {5})
ROOT = Credentials(0, 0)
ROOT_NO_CAPS = Credentials(0, 0, caps=0)


@pytest.mark.parametrize(
    ("cred", "mode", "mask", "ok"),
    [
        (OWNER, 0o600, R | W, True),
        (OWNER, 0o400, W, False),
        (OWNER, 0o077, R, False),  # the owner class applies even when others may
        (GROUP, 0o040, R, True),
        (GROUP, 0o404, R, False),  # the group class applies, not other
        (SUPPLEMENTARY, 0o050, R | X, True),
        (SUPPLEMENTARY, 0o040, X, False),
        (OTHER, 0o004, R, True),
        (OTHER, 0o770, R, False),
        (OTHER, 0o001, X, True),
        (ROOT_NO_CAPS, 0o600, R, False),  # uid 0 without capabilities is no one special
        (ROOT_NO_CAPS, 0o004, R, True),
    ],
)
def test_mode_bits(cred: Credentials, mode: int, mask: int, ok: bool) -> None:
    assert check_access(_st(mode), cred, mask) is ok


@pytest.mark.parametrize(
    ("kind", "mode", "mask", "ok"),
    [
        (DIR, 0o000, R | W | X, True),  # CAP_DAC_OVERRIDE: any directory
        (FILE, 0o000, R | W, True),  # read and write any file
        (FILE, 0o000, X, False),  # execute only if some x bit is set
        (FILE, 0o010, X, True),
    ],
)
def test_root(kind: int, mode: int, mask: int, ok: bool) -> None:
    assert check_access(_st(mode, kind=kind), ROOT, mask) is ok


@pytest.mark.parametrize(
    ("kind", "mask", "ok"),
    [(DIR, R | X, True), (DIR, W, False), (FILE, R, True), (FILE, W, False), (FILE, R | X, False)],
)
def test_read_search_only(kind: int, mask: int, ok: bool) -> None:
    cred = Credentials(103, 999, caps=1 << CAP_DAC_READ_SEARCH)
    assert check_access(_st(0o000, kind=kind), cred, mask) is ok


def test_of_process_reads_groups_and_capabilities() -> None:
    me = Credentials.of_process(os.getuid(), os.getgid(), os.getpid())
    assert me.groups == frozenset(os.getgroups())
    if os.geteuid() == 0:
        assert me.capable(CAP_DAC_OVERRIDE)
    # Not the ids this process has: no groups, no capabilities (pid reused, ids changed).
    stranger = Credentials.of_process(os.getuid() + 12345, os.getgid(), os.getpid())
    assert stranger.groups == frozenset()
    assert not stranger.capable(CAP_DAC_OVERRIDE)
    gone = Credentials.of_process(4321, 4321, 2**22 + 7)  # above pid_max: no such process
    assert gone.groups == frozenset()
    assert not gone.capable(CAP_DAC_OVERRIDE)
    assert Credentials.of_process(0, 0, 2**22 + 7).capable(CAP_DAC_OVERRIDE)


def test_delete_and_sticky() -> None:
    tmp = _st(0o1777, uid=0, kind=DIR)
    mine, theirs = _st(0o644, uid=103), _st(0o644, uid=100)
    assert may_delete(tmp, mine, OTHER)
    assert not may_delete(tmp, theirs, OTHER)
    assert may_delete(tmp, theirs, Credentials(103, 999, caps=1 << CAP_FOWNER | 0b110))
    assert not may_delete(_st(0o755, uid=0, kind=DIR), mine, OTHER)  # no write on the dir


def test_chown_and_times() -> None:
    f = _st(0o644, uid=102, gid=999)
    assert may_chown(f, SUPPLEMENTARY, -1, 5)  # to one of its groups
    assert not may_chown(f, SUPPLEMENTARY, -1, 7)
    assert not may_chown(f, SUPPLEMENTARY, 100, -1)  # giving it away needs CAP_CHOWN
    assert may_chown(f, ROOT, 100, 7)
    assert may_set_times(f, SUPPLEMENTARY, explicit=True)
    writable = _st(0o666)
    assert may_set_times(writable, OTHER, explicit=False)
    assert not may_set_times(writable, OTHER, explicit=True)


def test_xattr_permissions() -> None:
    f = _st(0o640)
    assert xattr_denied(f, OTHER, "security.ima", write=False) == 0
    assert xattr_denied(f, OTHER, "security.ima", write=True) == errno.EPERM
    assert xattr_denied(f, OTHER, "user.x", write=False) == errno.EACCES
    assert xattr_denied(f, GROUP, "user.x", write=False) == 0
    assert xattr_denied(f, GROUP, "user.x", write=True) == errno.EACCES
    assert xattr_denied(f, OTHER, "trusted.x", write=False) == errno.ENODATA
    assert xattr_denied(f, ROOT, "trusted.x", write=True) == 0
    assert xattr_denied(f, OWNER, "system.posix_acl_access", write=True) == 0
    assert xattr_denied(f, GROUP, "system.posix_acl_access", write=True) == errno.EPERM
    link = _st(0o777, kind=stat.S_IFLNK)
    assert xattr_denied(link, OWNER, "user.x", write=True) == errno.EPERM


@pytest.mark.skipif(not can_act_as(), reason="switching filesystem ids needs root")
def test_acting_as_switches_this_thread_only(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    groups_before = os.getgroups()
    inside, done = threading.Event(), threading.Event()
    other: list[int] = []

    def elsewhere() -> None:
        inside.wait(10)
        (shared / "by-other-thread").write_bytes(b"")
        other.append((shared / "by-other-thread").stat().st_uid)
        done.set()

    t = threading.Thread(target=elsewhere)
    t.start()
    # Relative to descriptors, as the mount works (tmp_path's parents are root-only).
    shared_fd = os.open(shared, os.O_PATH | os.O_DIRECTORY)
    private_fd = os.open(private, os.O_PATH | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        with acting_as(Credentials(54321, 54322, {7})) as switched:
            assert switched
            assert os.getgroups() == [7]
            os.close(os.open("mine", flags, 0o644, dir_fd=shared_fd))
            with pytest.raises(PermissionError):  # the kernel checks as the caller too
                os.open("x", flags, 0o644, dir_fd=private_fd)
            inside.set()
            assert done.wait(10)
    finally:
        os.close(shared_fd)
        os.close(private_fd)
        inside.set()
    t.join()
    st = (shared / "mine").stat()
    assert (st.st_uid, st.st_gid) == (54321, 54322)
    assert other == [os.geteuid()]  # the other thread kept its ids
    assert os.getgroups() == groups_before
    (private / "y").write_bytes(b"")  # capabilities back
    assert (private / "y").stat().st_uid == 0
