"""No escape through the mount: an unprivileged user who owns a directory inside SOURCE races
the server while reading through the mount, and never reads or lists what it may not.

Two attacks run at once for a bounded time, as a user this test creates (issue 9, finding 1):

- a subdirectory is swapped (``RENAME_EXCHANGE``) with a symlink to a root-only (0700)
  directory elsewhere in SOURCE: a server that joins paths follows it;
- a root-owned 0700 directory and a root-owned 0600 file are swapped onto names whose
  (user-owned, open) permissions the kernel has cached: a server that relies on the kernel's
  cached permissions serves them.

Readers list and read the secret's names through the mount the whole time; the secret's bytes
and names must never come back. The secret files themselves are world-readable: only the
directories (or the file's own mode) protect them, so any escape shows.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.fuse_helpers import fuse_skip_reason, mounted

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

#: How long the attack runs (the whole test stays well under 30 s).
ATTACK_SECONDS = 8.0

# Run as the unprivileged user: stdlib only, arguments as JSON in argv[1].
ATTACKER = r"""
import ctypes, json, os, sys, threading, time

cfg = json.loads(sys.argv[1])
src, mnt, token, names = cfg["src"], cfg["mnt"], cfg["token"].encode(), cfg["names"]
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
deadline = time.monotonic() + cfg["seconds"]
stats = {"swaps": 0, "ok_reads": 0, "ok_lists": 0, "denied": 0, "leaks": []}
lock = threading.Lock()

# The user really is unprivileged: the secrets cannot be reached directly.
for path in (src + "/secret", src + "/user/locked"):
    try:
        os.listdir(path)
        stats["leaks"].append("direct listing of " + path + " worked: not unprivileged")
    except PermissionError:
        pass

user_fd = os.open(src + "/user", os.O_RDONLY | os.O_DIRECTORY)

def exchange(a, b):
    if libc.renameat2(user_fd, a.encode(), user_fd, b.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2 " + a + " " + b)

def swapper(a, b):
    while time.monotonic() < deadline:
        exchange(a, b)
        exchange(a, b)
        with lock:
            stats["swaps"] += 2

seen = {}

def leak(where, what):
    with lock:
        seen[where] = seen.get(where, 0) + 1
        if seen[where] <= 2:
            stats["leaks"].append(what)

def reader():
    lists = [mnt + "/user/sub", mnt + "/user/cached"]
    reads = [
        mnt + "/user/sub/" + names["secret"],
        mnt + "/user/cached/" + names["locked"],
        mnt + "/user/cachedfile",
        mnt + "/user/sub/ok",
        mnt + "/user/cached/ok",
    ]
    while time.monotonic() < deadline:
        for d in lists:
            try:
                found = os.listdir(d)
            except OSError:
                with lock:
                    stats["denied"] += 1
                continue
            bad = [n for n in found if n in names.values()]
            if bad:
                leak(d, "listed " + d + ": " + ",".join(bad))
            else:
                with lock:
                    stats["ok_lists"] += 1
        for f in reads:
            try:
                with open(f, "rb") as fh:
                    data = fh.read()
            except OSError:
                with lock:
                    stats["denied"] += 1
                continue
            if token in data:
                leak(f, "read the secret through " + f)
            else:
                with lock:
                    stats["ok_reads"] += 1

threads = [threading.Thread(target=swapper, args=("sub", "sublink")),
           threading.Thread(target=swapper, args=("cached", "locked")),
           threading.Thread(target=swapper, args=("cachedfile", "lockedfile"))]
threads += [threading.Thread(target=reader) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(stats))
"""


@pytest.fixture
def attacker() -> Iterator[pwd.struct_passwd]:
    """An unprivileged user made for this test (and removed afterwards)."""
    if shutil.which("useradd") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("useradd is missing (CI=true: a missing tool fails)")
        pytest.skip("useradd is not installed")
    name = f"pvesc{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def world() -> Iterator[Path]:
    """A base directory every user may traverse (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="pyverity-escape-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _source(src: Path, user: pwd.struct_passwd, token: str, names: dict[str, str]) -> None:
    """SOURCE: root-only ``secret/``; ``user/`` (the user's) with open and root-only twins."""
    src.mkdir(mode=0o755)
    secret = src / "secret"
    secret.mkdir(mode=0o700)
    (secret / names["secret"]).write_text(token)
    (secret / names["secret"]).chmod(0o644)  # only the directory protects it
    home = src / "user"
    home.mkdir(mode=0o755)
    for sub in ("sub", "cached"):
        (home / sub).mkdir(mode=0o755)
        (home / sub / "ok").write_text("public")
        os.chown(home / sub / "ok", user.pw_uid, user.pw_gid)
        os.chown(home / sub, user.pw_uid, user.pw_gid)
    (home / "sublink").symlink_to(secret)  # absolute: into the root-only directory
    os.chown(home / "sublink", user.pw_uid, user.pw_gid, follow_symlinks=False)
    locked = home / "locked"
    locked.mkdir(mode=0o700)
    (locked / names["locked"]).write_text(token)
    (locked / names["locked"]).chmod(0o644)
    (home / "cachedfile").write_text("public")
    (home / "cachedfile").chmod(0o644)
    os.chown(home / "cachedfile", user.pw_uid, user.pw_gid)
    (home / "lockedfile").write_text(token)
    (home / "lockedfile").chmod(0o600)
    os.chown(home, user.pw_uid, user.pw_gid)


def _python() -> str:
    """An interpreter the user may run (ours may live under a root-only directory)."""
    found = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if found is None:
        pytest.fail("no python3 in /usr/bin, /bin or /usr/local/bin for the test user")
    return found


def _run_as(
    user: pwd.struct_passwd, script: str, arg: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``script`` run by an interpreter as ``user`` alone (no supplementary groups), from ``/``."""
    return subprocess.run(
        [_python(), "-c", script, arg],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_no_escape_through_symlink_swaps_or_renames_onto_cached_names(
    attacker: pwd.struct_passwd, world: Path
) -> None:
    token = f"SECRET-{secrets.token_hex(16)}"
    names = {
        "secret": f"topsecret-{secrets.token_hex(4)}",
        "locked": f"locked-{secrets.token_hex(4)}",
    }
    src, mnt = world / "src", world / "mnt"
    _source(src, attacker, token, names)
    mnt.mkdir(mode=0o755)
    with mounted(src, mnt):
        cfg = {
            "src": str(src),
            "mnt": str(mnt),
            "token": token,
            "names": names,
            "seconds": ATTACK_SECONDS,
        }
        done = _run_as(attacker, ATTACKER, json.dumps(cfg), ATTACK_SECONDS + 15)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert not stats["leaks"], "\n".join(stats["leaks"])
    # The attack really ran, and the legitimate objects stayed readable meanwhile.
    assert stats["swaps"] > 100, stats
    assert stats["ok_reads"] > 10, stats
    assert stats["ok_lists"] > 10, stats


RW_CALLER = r"""
import json, os, sys

mnt = sys.argv[1]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno

def create(path):
    with open(path, "wb") as f:
        f.write(b"by the user")

attempt("create_own", lambda: create(mnt + "/user/new"))
attempt("mkdir_own", lambda: os.mkdir(mnt + "/user/newdir"))
attempt("symlink_own", lambda: os.symlink("new", mnt + "/user/newlink"))
attempt("create_root", lambda: create(mnt + "/rootonly/new"))
attempt("unlink_root", lambda: os.unlink(mnt + "/rootonly/f"))
attempt("chmod_root", lambda: os.chmod(mnt + "/user/lockedfile", 0o666))
attempt("write_root", lambda: open(mnt + "/user/lockedfile", "r+b").close())
attempt("rename_own", lambda: os.rename(mnt + "/user/new", mnt + "/user/moved"))
print(json.dumps(out))
"""


def test_rw_changes_are_made_as_the_caller(attacker: pwd.struct_passwd, world: Path) -> None:
    src, mnt = world / "src", world / "mnt"
    src.mkdir(mode=0o755)
    (src / "user").mkdir()
    (src / "user" / "lockedfile").write_text("root's")
    (src / "user" / "lockedfile").chmod(0o600)
    os.chown(src / "user", attacker.pw_uid, attacker.pw_gid)
    (src / "rootonly").mkdir(mode=0o755)  # searchable, not writable
    (src / "rootonly" / "f").write_text("root's")
    mnt.mkdir(mode=0o755)
    with mounted(src, mnt, "--rw"):
        done = _run_as(attacker, RW_CALLER, str(mnt), 30)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "create_own": "ok",
        "mkdir_own": "ok",
        "symlink_own": "ok",
        "create_root": errno.EACCES,
        "unlink_root": errno.EACCES,
        "chmod_root": errno.EPERM,
        "write_root": errno.EACCES,
        "rename_own": "ok",
    }
    for name in ("moved", "newdir", "newlink"):
        st = (src / "user" / name).lstat()
        assert (st.st_uid, st.st_gid) == (attacker.pw_uid, attacker.pw_gid), name
    assert (src / "user" / "moved").read_bytes() == b"by the user"
    assert (src / "rootonly" / "f").exists()
    assert stat.S_IMODE((src / "user" / "lockedfile").stat().st_mode) == 0o600
