"""Choosing the accelerator's interleave width by measurement, not by CPU family (ADR 0003).

Which width hashes fastest depends on the core, not on its vendor's family number: on AMD Zen 5
sixteen AVX-512 lanes win; on Zen 4 (which splits 512-bit operations in two) two, three or four
SHA-NI streams and sixteen lanes lie within about 10 % of each other, their order changing from
run to run (README); on Intel Sapphire Rapids sixteen lanes again. So the first process that
needs a width measures them all, on data in memory, interleaved (one run of each width per
round, so that a change of load hits them alike), and keeps each width's best of five rounds: a
few milliseconds, well under 20. The winner is cached per machine in the user's cache directory
(``$XDG_CACHE_HOME/pyverity``, else ``~/.cache/pyverity``), in a file named after a key made of
the CPU's signature (vendor, brand, family/model/stepping, feature bits, from cpuid) and the
accelerator's build, so that another CPU, a VM moved to another host or a rebuilt accelerator
measures again. ``PYVERITY_HASH_WIDTH`` overrides the choice.

The cache only ever chooses among widths that are all byte-exact, so at worst it makes hashing
slower; still it is not trusted blindly: it is opened without following symlinks, must be a
regular file owned by this user, is read at most :data:`MAX_CACHE_BYTES`, and every line is
checked (format, key, a width this accelerator takes). Anything else is ignored and measured
again. A cache directory that cannot be written only costs the measurement in each process.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pyverity.errors import UsageError

__all__ = [
    "HASHLIB",
    "MAX_CACHE_BYTES",
    "WIDTH_ENV",
    "Choice",
    "cache_dir",
    "cache_key",
    "choose",
    "measure",
    "parse_env",
    "read_cache",
    "write_cache",
]

#: ``PYVERITY_HASH_WIDTH=16`` (SHA-256) or ``sha256=2,sha512=8``; a SHA-512 width of 0 means
#: hashlib.
WIDTH_ENV = "PYVERITY_HASH_WIDTH"
#: The width that means "hashlib, no accelerator" (a candidate for SHA-512 only).
HASHLIB = 0
#: A cache file is never read beyond this.
MAX_CACHE_BYTES = 4096
_MAGIC = "pyverity-hash-widths 1"
ALGORITHMS = ("sha256", "sha512")

#: One candidate: hashes a fixed run of data in memory when called.
Runner = Callable[[], object]


@dataclass(frozen=True)
class Choice:
    """The width of each algorithm, where it came from, and what was measured (if anything)."""

    widths: Mapping[str, int]
    #: ``"environment"``, ``"cache"``, ``"measured"`` (and cached), or ``"measured, not cached"``.
    source: str
    #: Algorithm -> width -> best seconds for the calibration run (empty unless measured here).
    seconds: Mapping[str, Mapping[int, float]] = field(default_factory=dict)


# os.path, not pathlib, here: this runs on every `pyverity digest`, whose start-up counts, and
# pathlib costs milliseconds to import.


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/pyverity`` when that is an absolute path, else ``~/.cache/pyverity``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")  # noqa: PTH111, PTH117, PTH118
    return os.path.join(base, "pyverity")  # noqa: PTH118


def cache_key(cpu_signature: str, build: str) -> str:
    """The hex key naming the cache file: this CPU model and this build of the accelerator."""
    text = f"{_MAGIC}\n{cpu_signature}\n{build}\n"
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def cache_path(directory: str | os.PathLike[str], key: str) -> str:
    """The cache file for ``key`` in ``directory``."""
    return os.path.join(os.fspath(directory), f"hash-widths-{key[:16]}")  # noqa: PTH118


def parse_env(value: str, allowed: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The widths ``PYVERITY_HASH_WIDTH`` sets: ``N`` for SHA-256, or ``alg=N`` pairs.

    A width the accelerator does not take here is a :class:`UsageError`, not ignored: the
    variable is set on purpose, usually to compare widths.
    """
    out: dict[str, int] = {}
    for part in value.replace(" ", "").split(","):
        alg, sep, num = part.rpartition("=")
        alg = alg if sep else "sha256"
        if alg not in allowed or not (num.isascii() and num.isdigit()) or alg in out:
            raise UsageError(
                f"{WIDTH_ENV}={value!r}: expected a width (for SHA-256) or alg=width pairs "
                f"such as sha256=16,sha512=8"
            )
        width = int(num)
        if width not in allowed[alg]:
            takes = ", ".join(str(w) for w in allowed[alg]) or "none"
            raise UsageError(f"{WIDTH_ENV}: {alg} width {width} is not one of {takes} here")
        out[alg] = width
    return out


def read_cache(
    path: str | os.PathLike[str], key: str, allowed: Mapping[str, Sequence[int]]
) -> dict[str, int] | None:
    """The widths cached at ``path`` when the file is valid for ``key`` and ``allowed``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        if st.st_size > MAX_CACHE_BYTES:
            return None
        raw = os.read(fd, MAX_CACHE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > MAX_CACHE_BYTES:
        return None
    return _parse_cache(raw, key, allowed)


def _parse_cache(
    raw: bytes, key: str, allowed: Mapping[str, Sequence[int]]
) -> dict[str, int] | None:
    try:
        lines = raw.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return None
    if len(lines) != len(allowed) + 3 or lines[0] != _MAGIC or lines[1] != f"key {key}":
        return None
    if lines[-1] != "":
        return None
    out: dict[str, int] = {}
    for line in lines[2:-1]:
        alg, _, num = line.partition(" ")
        if alg not in allowed or alg in out or not (num.isascii() and num.isdigit()):
            return None
        if len(num) > 3 or str(int(num)) != num or int(num) not in allowed[alg]:
            return None
        out[alg] = int(num)
    return out if set(out) == set(allowed) else None


def write_cache(path: str | os.PathLike[str], key: str, widths: Mapping[str, int]) -> bool:
    """Publish ``widths`` at ``path`` (atomically); False when it cannot be written."""
    from pyverity.fs.atomic import publish_bytes  # only when measured: start-up counts

    body = "".join(f"{alg} {widths[alg]}\n" for alg in sorted(widths))
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # noqa: PTH103, PTH120
        data = f"{_MAGIC}\nkey {key}\n{body}".encode()
        # A cache: no fsync (a file lost or emptied by a crash is measured again).
        publish_bytes(path, data, mode=0o600, sync_dir=False, sync_file=False)
    except OSError:
        return False
    return True


def measure(
    candidates: Mapping[str, Mapping[int, Runner]], *, rounds: int = 5
) -> dict[str, dict[int, float]]:
    """Best CPU seconds of each candidate over ``rounds`` interleaved rounds (after one warm-up
    round, which also wakes the vector units)."""
    best: dict[str, dict[int, float]] = {alg: {} for alg in candidates}
    clock = time.thread_time_ns
    for r in range(rounds + 1):
        for alg, runners in candidates.items():
            for width, run in runners.items():
                start = clock()
                run()
                took = (clock() - start) / 1e9
                if r:
                    prev = best[alg].get(width, float("inf"))
                    best[alg][width] = min(prev, took)
    return best


def choose(
    candidates: Mapping[str, Mapping[int, Runner]],
    *,
    key: str,
    env: str | None,
    directory: str | os.PathLike[str] | None = None,
) -> Choice:
    """The width of each algorithm: from ``env`` (``PYVERITY_HASH_WIDTH``) where it sets one,
    else from the cache for ``key``, else measured among ``candidates`` (and cached).

    An algorithm with a single candidate is not measured.
    """
    allowed = {alg: sorted(runners) for alg, runners in candidates.items() if runners}
    forced = parse_env(env, allowed) if env else {}
    if all(alg in forced for alg in allowed):
        return Choice(forced, "environment")
    path = cache_path(directory or cache_dir(), key)
    cached = read_cache(path, key, allowed)
    if cached is not None:
        return Choice({**cached, **forced}, "cache" if not forced else "environment and cache")
    to_measure = {alg: candidates[alg] for alg in allowed if len(allowed[alg]) > 1}
    seconds = measure(to_measure)
    widths = {alg: min(times, key=times.__getitem__) for alg, times in seconds.items()}
    widths.update({alg: allowed[alg][0] for alg in allowed if alg not in widths})
    cached_ok = write_cache(path, key, widths)
    source = "measured" if cached_ok else "measured, not cached"
    return Choice({**widths, **forced}, source, seconds)
