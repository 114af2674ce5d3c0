"""Running the filesystem (libfuse 3 through mfusepy) and unmounting it.

libfuse's main loop handles SIGTERM, SIGINT and SIGHUP by leaving the loop and unmounting
cleanly; open handles are closed in ``destroy``. Importing this module loads libfuse.

Reads are answered into libfuse's own reply buffer (heap memory of this process, one per
request): mfusepy's ``read`` callback is replaced by one that hands the filesystem a
``memoryview`` of that buffer, so a verified read is ``preadv`` → hash in place → reply, with
no intermediate ``bytes`` object and no extra copy (:meth:`VerifiedRawIO.pread_into`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from pyverity.errors import ConfigurationError, StorageError
from pyverity.fuse.config import MountConfig
from pyverity.fuse.ops import OpenHook, VerityFS

__all__ = ["is_mounted", "run_mount", "umount", "worker_threads"]

log = logging.getLogger(__name__)

_LOOP_ENDED = 8
#: The first libfuse that takes ``-o max_threads`` (older ones refuse the mount for it).
_MAX_THREADS_SINCE = (3, 12)


def worker_threads(config: MountConfig, libfuse: tuple[int, int]) -> int | None:
    """libfuse's ``max_threads`` for the mount, or None where libfuse cannot be told (< 3.12).

    ``config.threads``, else one per CPU this process may run on (at least 2): libfuse's
    default of 10 lets more reads than there are cores run at once, and they then share the
    cores and the GIL, so that the read the kernel waits for is finished last.
    """
    if libfuse < _MAX_THREADS_SINCE:
        return None
    return config.threads or max(2, len(os.sched_getaffinity(0)))


def _load_mfusepy() -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import mfusepy  # type: ignore[import-untyped]
    except (ImportError, OSError) as e:
        raise ConfigurationError(
            f"FUSE is not available: {e}",
            remedy="install libfuse 3 (apt-get install fuse3) and `pip install mfusepy`",
        ) from e
    return mfusepy


#: ``PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)``, called with the GIL.
_FROM_MEMORY = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)(
    ("PyMemoryView_FromMemory", ctypes.pythonapi)
)
_PYBUF_WRITE = 0x200


def reply_buffer(buf: Any, size: int) -> memoryview:
    """A writable view of ``size`` bytes at the C pointer ``buf`` (valid during the callback)."""
    view: memoryview = _FROM_MEMORY(ctypes.cast(buf, ctypes.c_void_p).value, size, _PYBUF_WRITE)
    return view


def _fuse_class(mfusepy: Any, ops: VerityFS) -> Any:
    """mfusepy's ``FUSE`` with a ``read`` that fills libfuse's buffer in place."""

    class VerityFUSE(mfusepy.FUSE):  # type: ignore[misc]
        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
            del path
            view = reply_buffer(buf, size)
            try:
                return ops.read_into(view, offset, fip.contents)
            finally:
                view.release()

    return VerityFUSE


def _check_dirs(config: MountConfig) -> None:
    if not config.source.is_dir():
        raise ConfigurationError(f"source '{config.source}' is not a directory")
    if not config.mountpoint.is_dir():
        raise ConfigurationError(f"mount point '{config.mountpoint}' is not a directory")
    if config.source.resolve() == config.mountpoint.resolve():
        raise ConfigurationError("the source and the mount point must differ")


def run_mount(
    config: MountConfig, *, foreground: bool = True, on_open: OpenHook | None = None
) -> None:
    """Mount ``config.source`` on ``config.mountpoint`` and serve until unmounted.

    Without ``foreground`` libfuse detaches into the background once the mount is made.
    """
    _check_dirs(config)
    mfusepy = _load_mfusepy()
    ops = VerityFS(config, context=mfusepy.fuse_get_context, on_open=on_open)  # type: ignore[attr-defined]
    source = os.fspath(config.source.resolve())
    fsname = source if "," not in source and "\\" not in source else "pyverity"
    options: dict[str, object] = {
        "foreground": foreground,
        "allow_other": True,
        "default_permissions": True,
        "fsname": fsname,
        "subtype": "pyverity",
    }
    if not config.rw:
        options["ro"] = True
    threads = worker_threads(config, (mfusepy.fuse_version_major, mfusepy.fuse_version_minor))  # type: ignore[attr-defined]
    if threads is not None:
        options["max_threads"] = threads
    log.info("mounting %s on %s (%s)", source, config.mountpoint, "rw" if config.rw else "ro")
    try:
        _fuse_class(mfusepy, ops)(ops, os.fspath(config.mountpoint), raw_fi=True, **options)
    except RuntimeError as e:
        # fuse_main returns 8 when its loop ends, which includes SIGTERM/SIGINT/SIGHUP: libfuse
        # has unmounted by then. Other codes mean the mount was never made.
        if e.args == (_LOOP_ENDED,) and not is_mounted(config.mountpoint):
            log.info("unmounted %s", config.mountpoint)
            return
        remedy = None
        if os.geteuid() != 0:
            remedy = "as a user, allow_other needs `user_allow_other` in /etc/fuse.conf"
        raise StorageError(
            f"cannot mount on '{config.mountpoint}': libfuse error {e}", remedy=remedy
        ) from e


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether a FUSE filesystem of ours is mounted at ``mountpoint`` (from /proc/self/mounts)."""
    target = os.path.realpath(mountpoint)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == target and fields[2].startswith("fuse"):
            return True
    return False


def umount(mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmount a FUSE mount with ``fusermount3 -u`` (works unprivileged for its owner)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise ConfigurationError("fusermount3 not found", remedy="apt-get install fuse3")
    args = [tool, "-u", *(["-z"] if lazy else []), os.fspath(mountpoint)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StorageError(
            f"cannot unmount '{mountpoint}': {done.stderr.strip() or done.returncode}"
        )
