"""``pyverity.open``: a verified, seekable, read-only binary file object (DESIGN.md §6)."""

from __future__ import annotations

import io
import logging
import os

from pyverity.fs.openfile import open_regular
from pyverity.reader.appraise import ReaderOptions, appraise_fd, read_descriptor
from pyverity.reader.file import VerifiedRawIO
from pyverity.reader.verifier import BlockVerifier

__all__ = ["open", "open_fd"]

log = logging.getLogger(__name__)

_BUFFER = 128 << 10


def open_fd(
    fd: int, *, name: str, options: ReaderOptions | None = None, closefd: bool = True
) -> VerifiedRawIO:
    """Appraise the open regular file ``fd`` and return a raw verified reader over it.

    On failure ``fd`` is closed if ``closefd`` (the caller's otherwise) and the error raised.
    """
    options = options or ReaderOptions()
    try:
        st = os.fstat(fd)
        descriptor = read_descriptor(fd, st, name=name, xattr_ns=options.xattr_ns)
        appraisal = appraise_fd(fd, descriptor, name=name, options=options)
        on_corrupt = None
        store = options.store
        if appraisal.tree_origin == "cache" and store is not None:
            alg, digest = descriptor.hash_alg.name, descriptor.digest()

            def on_corrupt() -> None:
                log.warning("cached tree of '%s' is corrupt; discarding it", name)
                store.discard(alg, digest)

        verifier = BlockVerifier(
            appraisal.descriptor, appraisal.tree, name=name, on_corrupt_tree=on_corrupt
        )
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    return VerifiedRawIO(fd, verifier, name=name, closefd=closefd, chunk=options.chunk)


def open(  # noqa: A001 - the verb of this API, as io.open
    path: str | os.PathLike[str],
    *,
    options: ReaderOptions | None = None,
    buffering: int = _BUFFER,
) -> io.BufferedReader:
    """Open ``path`` for verified reading.

    The file is opened once (``O_NOFOLLOW``, regular files only) and appraised from that
    descriptor; every read is checked block by block against the file's Merkle tree, and a
    block that does not match raises ``OSError(errno.EIO)`` naming it. Nothing unverified is
    ever returned. The raw object (``f.raw``) has ``digest`` and ``descriptor``.
    """
    name = os.fsdecode(path)
    fd = open_regular(path, follow_symlinks=False)
    raw = open_fd(fd, name=name, options=options)
    return io.BufferedReader(raw, buffer_size=max(buffering, raw.verifier.block_size))
