"""Hashing a run of data blocks in one call: the fast builder's inner loop.

A *run hasher* takes a buffer holding a whole number of ``block_size`` blocks (the caller
zero-pads the file's last block) and returns their salted digests, concatenated in order.
Two implementations give identical bytes:

* the pure one: hashlib, with the padded salt absorbed once and the state copied per block;
* the optional compiled one (``pyverity.hashing._accel``), the GIL released: SHA-256 with the
  x86 SHA extensions, one to four blocks interleaved, or with AVX-512, sixteen blocks in the
  lanes of each vector; SHA-512 with AVX-512, eight blocks in 64-bit lanes. The width is the
  one measured fastest on this CPU (:mod:`~pyverity.hashing.widths`: cached per machine,
  ``PYVERITY_HASH_WIDTH`` overrides it); for SHA-512 hashlib is one of the candidates. It is
  used only when the extension imports, the CPU has what the path needs (cpuid and XGETBV,
  checked at import), and the environment does not say ``PYVERITY_NO_ACCEL=1``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from types import ModuleType

from pyverity.format.hashalg import by_name
from pyverity.format.params import TreeParams
from pyverity.hashing import widths as _widths
from pyverity.hashing.blockhash import Buffer

__all__ = [
    "NO_ACCEL_ENV",
    "RunHasher",
    "accel_choice",
    "accelerator",
    "pure_run_hasher",
    "run_hasher",
    "uses_accelerator",
]

#: Setting this environment variable to ``1`` forces the pure-Python path.
NO_ACCEL_ENV = "PYVERITY_NO_ACCEL"

RunHasher = Callable[[Buffer], bytes]


def accelerator() -> ModuleType | None:
    """The compiled accelerator module when it can be used here, else None."""
    if os.environ.get(NO_ACCEL_ENV, "") not in ("", "0"):
        return None
    try:
        from pyverity.hashing import _accel
    except ImportError:
        return None
    if not (_accel.available() or _accel.sha512_widths()):
        return None
    return _accel


def pure_run_hasher(params: TreeParams) -> RunHasher:
    """The hashlib run hasher (always available)."""
    bs = params.block_size
    ctor = getattr(hashlib, params.hash_alg.name)
    # The base object is made now, in the caller, so that a forked worker only copies
    # states and never has to look an algorithm up in OpenSSL after fork().
    base = ctor(params.padded_salt)
    if not params.salt:

        def plain(data: Buffer) -> bytes:
            view = memoryview(data)
            return b"".join([ctor(view[o : o + bs]).digest() for o in range(0, len(view), bs)])

        return plain

    def salted(data: Buffer) -> bytes:
        view = memoryview(data)
        out = []
        for o in range(0, len(view), bs):
            h = base.copy()
            h.update(view[o : o + bs])
            out.append(h.digest())
        return b"".join(out)

    return salted


#: The data each width hashes per calibration round: 32 blocks of 4 KiB (sixteen-wide groups
#: and SHA-512's eight-wide ones come out even), in memory, small enough for any L2 cache.
CALIBRATION_RUN = 128 << 10
_CALIBRATION_BLOCK = 4096
#: The process's choice, once made (a forked worker inherits it).
_CHOICE: dict[str, _widths.Choice] = {}


def _accel_widths(module: ModuleType) -> dict[str, tuple[int, ...]]:
    """Algorithm -> the accelerator's widths for it here (empty: not accelerated)."""
    return {
        "sha256": tuple(module.widths()) if module.available() else (),
        "sha512": tuple(module.sha512_widths()),
    }


def accel_choice() -> _widths.Choice | None:
    """The accelerator's width for each algorithm (0: hashlib), measured once per machine and
    cached (see :mod:`~pyverity.hashing.widths`), or None when the accelerator is not used.

    Memoised per process (a forked worker inherits it); the first call costs a cache-file read
    or, the first time on a machine, a calibration of a few milliseconds.
    """
    module = accelerator()
    if module is None:
        return None
    if "choice" in _CHOICE:
        return _CHOICE["choice"]
    data = bytes(CALIBRATION_RUN)
    candidates: dict[str, dict[int, _widths.Runner]] = {}
    for alg, widths in _accel_widths(module).items():
        if not widths:
            continue
        blocks = getattr(module, f"{alg}_blocks")
        runners = {w: _accel_runner(blocks, data, w) for w in widths}
        if alg != "sha256":  # hashlib's SHA-256 never beats one SHA-NI stream
            runners[_widths.HASHLIB] = _pure_runner(alg, data)
        candidates[alg] = runners
    build = os.stat(module.__file__) if module.__file__ else None  # noqa: PTH116 (no pathlib)
    key = _widths.cache_key(
        module.cpu_signature(), f"{build.st_size}:{build.st_mtime_ns}" if build else "?"
    )
    choice = _widths.choose(candidates, key=key, env=os.environ.get(_widths.WIDTH_ENV))
    _CHOICE["choice"] = choice
    return choice


def _accel_runner(
    blocks: Callable[[Buffer, int, bytes, int], bytes], data: bytes, width: int
) -> _widths.Runner:
    def run() -> bytes:
        return blocks(data, _CALIBRATION_BLOCK, b"", width)

    return run


def _pure_runner(alg: str, data: bytes) -> _widths.Runner:
    pure = pure_run_hasher(TreeParams(by_name(alg), _CALIBRATION_BLOCK))

    def run() -> bytes:
        return pure(data)

    return run


def _accel_width(params: TreeParams, module: ModuleType | None, *, insist: bool) -> int:
    """The accelerator width for ``params`` (0: the pure path)."""
    alg = params.hash_alg.name
    if module is None:
        return 0
    widths = _accel_widths(module).get(alg, ())
    bs = params.block_size
    unit = 64 if alg == "sha256" else 128
    if not widths or bs % unit:
        return 0
    choice = accel_choice()
    width = choice.widths.get(alg, 0) if choice is not None else 0
    return width or (max(widths) if insist else 0)


def uses_accelerator(params: TreeParams, *, accel: bool | None = None) -> bool:
    """Whether ``run_hasher(params, accel=accel)`` hashes with the compiled accelerator, which
    releases the GIL for a whole run (so that threads can share the work)."""
    if accel is False:
        return False
    return _accel_width(params, accelerator(), insist=bool(accel)) != 0


def run_hasher(params: TreeParams, *, accel: bool | None = None) -> RunHasher:
    """The fastest run hasher for ``params``.

    ``accel=None`` uses the accelerator when it applies (and is faster); ``False`` forces the
    pure path; ``True`` insists on the accelerator (``RuntimeError`` when it is unavailable
    for this algorithm, for tests).
    """
    module = accelerator() if accel is not False else None
    width = _accel_width(params, module, insist=bool(accel))
    if accel and not width:
        raise RuntimeError(f"the compiled accelerator is not available for {params.hash_alg.name}")
    if not width or module is None:
        return pure_run_hasher(params)
    bs = params.block_size
    salt = params.padded_salt
    blocks: Callable[[Buffer, int, bytes, int], bytes] = getattr(
        module, f"{params.hash_alg.name}_blocks"
    )

    def accelerated(data: Buffer) -> bytes:
        return blocks(data, bs, salt, width)

    return accelerated
