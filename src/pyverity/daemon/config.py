"""Daemon settings: a frozen dataclass from TOML and/or command-line options, and the checks
made before anything is written (private directories, the kernel's own IMA policy)."""

from __future__ import annotations

import logging
import os
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyverity.errors import ConfigurationError
from pyverity.fs.xattr import NAMESPACES

__all__ = [
    "DEFAULT_STATE_DIR",
    "DaemonConfig",
    "check_private_dir",
    "ima_policy_warning",
    "load_config",
    "socket_path",
]

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/pyverity")
DEFAULT_CACHE_DIR = Path("/var/cache/pyverity")
SOCKET_NAME = "control.sock"
_IMA_POLICY_FILES = (
    Path("/sys/kernel/security/ima/policy"),
    Path("/sys/kernel/security/integrity/ima/policy"),
)
_KEYS = {
    "root",
    "roots",
    "state_dir",
    "cache_dir",
    "backend",
    "keyring",
    "xattr_ns",
    "workers",
    "crash_policy",
    "checkpoint_interval",
    "nice",
    "watcher",
}


@dataclass(frozen=True)
class DaemonConfig:
    roots: tuple[Path, ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    backend: str = "cache"
    keyring: Path | None = None
    xattr_ns: str = "security"
    workers: int = 2
    crash_policy: str = "resume"
    #: Seconds between build checkpoints (leaf hashes saved for ``crash_policy = resume``).
    checkpoint_interval: float = 1.0
    #: CPU niceness added to workers (their I/O class is set to idle when nice > 0).
    nice: int = 10
    #: ``auto`` (fanotify where it can, else inotify), ``fanotify`` or ``inotify``.
    watcher: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.backend not in ("cache", "none", "kernel"):
            raise ConfigurationError(
                f"unknown backend '{self.backend}' (use cache, none or kernel)"
            )
        if self.xattr_ns not in NAMESPACES:
            raise ConfigurationError(f"unknown xattr_ns '{self.xattr_ns}' (use security or user)")
        if self.crash_policy not in ("resume", "restart"):
            raise ConfigurationError(
                f"unknown crash_policy '{self.crash_policy}' (use resume or restart)"
            )
        if not 1 <= self.workers <= 256:
            raise ConfigurationError(f"workers must be 1..256, not {self.workers}")
        if not 0.01 <= self.checkpoint_interval <= 3600:
            raise ConfigurationError("checkpoint_interval must be 0.01..3600 seconds")
        if not 0 <= self.nice <= 19:
            raise ConfigurationError("nice must be 0..19")
        if self.watcher not in ("auto", "fanotify", "inotify"):
            raise ConfigurationError(
                f"unknown watcher '{self.watcher}' (use auto, fanotify or inotify)"
            )

    @property
    def socket(self) -> Path:
        return socket_path(self.state_dir)

    def with_options(self, **opts: Any) -> DaemonConfig:
        """A copy with the options that were given (None means not given)."""
        given = {k: v for k, v in opts.items() if v is not None}
        return replace(self, **given)


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SOCKET_NAME


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Read a TOML file with the command line's keys (``roots`` a list, or ``root``)."""
    from pyverity.errors import InputError
    from pyverity.fs.inputs import read_input

    try:
        raw = read_input(path, "daemon config", 1 << 20)  # docs/cli.md "Input limits"
        data = tomllib.loads(raw.decode("utf-8"))
    except InputError as e:
        raise ConfigurationError(str(e)) from e
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path}: {e}") from e
    data = data.get("daemon", data)
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigurationError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    roots = data.get("roots", [])
    if "root" in data:
        roots = [*roots, data["root"]]
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ConfigurationError(f"{path}: roots must be a list of paths")
    kw: dict[str, Any] = {"roots": tuple(Path(r) for r in roots)}
    for key in ("state_dir", "cache_dir", "keyring"):
        if key in data:
            kw[key] = Path(str(data[key]))
    for key, typ in (
        ("backend", str),
        ("xattr_ns", str),
        ("crash_policy", str),
        ("watcher", str),
        ("workers", int),
        ("nice", int),
        ("checkpoint_interval", float),
    ):
        if key in data:
            value = data[key]
            if typ is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, typ) or isinstance(value, bool):
                what = {int: "an integer", float: "a number"}.get(typ, "a string")
                raise ConfigurationError(f"{path}: {key} must be {what}")
            kw[key] = value
    return DaemonConfig(**kw)


def check_private_dir(path: Path, what: str) -> None:
    """Create ``path`` 0700 if missing; refuse it unless it is ours and not writable by others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise ConfigurationError(f"cannot create the {what} {path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"the {what} {path} is not a directory (or is a symlink)")
    if st.st_uid != os.geteuid():
        raise ConfigurationError(
            f"the {what} {path} belongs to uid {st.st_uid}, not to us",
            remedy=f"chown it to uid {os.geteuid()} or choose another directory",
        )
    if st.st_mode & 0o022:
        raise ConfigurationError(
            f"the {what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})",
            remedy=f"chmod 700 {path}",
        )
    if st.st_mode & 0o077:
        log.warning("the %s %s is readable by others; it should be 0700", what, path)


def ima_policy_warning(xattr_ns: str, policy_files: tuple[Path, ...] = _IMA_POLICY_FILES) -> str:
    """A warning when the kernel's IMA policy appraises or measures (``security.ima`` users)."""
    if xattr_ns != "security":
        return ""
    for p in policy_files:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        rules = [
            line.split()[0]
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        active = sorted({r for r in rules if r in ("appraise", "measure", "hash")})
        if active:
            return (
                f"the kernel's IMA policy ({p}) has {'/'.join(active)} rules on security.ima:"
                " the kernel may deny, re-hash or measure the same files"
            )
    return ""
