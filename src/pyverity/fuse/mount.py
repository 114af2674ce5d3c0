"""Running the filesystem (libfuse 3 through mfusepy) and unmounting it.

libfuse's main loop handles SIGTERM, SIGINT and SIGHUP by leaving the loop and unmounting
cleanly; open handles are closed in ``destroy``. Importing this module loads libfuse.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from pathlib import Path

from pyverity.errors import ConfigurationError, StorageError
from pyverity.fuse.config import MountConfig
from pyverity.fuse.ops import OpenHook, VerityFS

__all__ = ["is_mounted", "run_mount", "umount"]

log = logging.getLogger(__name__)

_LOOP_ENDED = 8


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
    log.info("mounting %s on %s (%s)", source, config.mountpoint, "rw" if config.rw else "ro")
    try:
        mfusepy.FUSE(ops, os.fspath(config.mountpoint), raw_fi=True, **options)  # type: ignore[attr-defined]
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
