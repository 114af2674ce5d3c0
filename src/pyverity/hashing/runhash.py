"""Hashing a run of data blocks in one call: the fast builder's inner loop.

A *run hasher* takes a buffer holding a whole number of ``block_size`` blocks (the caller
zero-pads the file's last block) and returns their salted digests, concatenated in order.
Two implementations give identical bytes:

* the pure one: hashlib, with the padded salt absorbed once and the state copied per block;
* the optional compiled one (``pyverity.hashing._accel``): SHA-256 with the x86 SHA
  extensions, four blocks interleaved, or with AVX-512, sixteen blocks in the lanes of each
  vector (the default on AMD Zen 5 and later, where it is faster), the GIL released. It is
  used only for SHA-256, only when the extension imports, the CPU has SHA-NI (checked with
  cpuid at import), and the environment does not say ``PYVERITY_NO_ACCEL=1``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from types import ModuleType

from pyverity.format.params import TreeParams
from pyverity.hashing.blockhash import Buffer

__all__ = [
    "NO_ACCEL_ENV",
    "RunHasher",
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
    if not _accel.available():
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


def uses_accelerator(params: TreeParams, *, accel: bool | None = None) -> bool:
    """Whether ``run_hasher(params, accel=accel)`` hashes with the compiled accelerator, which
    releases the GIL for a whole run (so that threads can share the work)."""
    return accel is not False and params.hash_alg.name == "sha256" and accelerator() is not None


def run_hasher(params: TreeParams, *, accel: bool | None = None) -> RunHasher:
    """The fastest run hasher for ``params``.

    ``accel=None`` uses the accelerator when it applies; ``False`` forces the pure path;
    ``True`` insists on the accelerator (``RuntimeError`` when it is unavailable, for tests).
    """
    module = accelerator() if accel is not False else None
    usable = module is not None and params.hash_alg.name == "sha256"
    if accel and not usable:
        raise RuntimeError(f"the compiled accelerator is not available for {params.hash_alg.name}")
    if not usable or module is None:
        return pure_run_hasher(params)
    bs = params.block_size
    salt = params.padded_salt
    sha256_blocks: Callable[[Buffer, int, bytes], bytes] = module.sha256_blocks

    def accelerated(data: Buffer) -> bytes:
        return sha256_blocks(data, bs, salt)

    return accelerated
