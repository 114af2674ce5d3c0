"""``pyverity.open``: a verified, seekable, read-only binary file object (DESIGN.md §6)."""

from __future__ import annotations

import io
import logging
import os

from pyverity.fs.openfile import open_regular
from pyverity.keys.keyring import Keyring
from pyverity.policy.engine import Policy
from pyverity.reader.appraise import Access, ReaderOptions, appraise_open
from pyverity.reader.file import VerifiedRawIO
from pyverity.reader.kernelread import KernelVerified
from pyverity.reader.verifier import BlockVerifier

__all__ = ["open", "open_fd"]

log = logging.getLogger(__name__)

_BUFFER = 128 << 10


def open_fd(
    fd: int, access: Access, options: ReaderOptions | None = None, *, closefd: bool = True
) -> VerifiedRawIO | None:
    """Appraise the open regular file ``fd``: a raw verified reader, or None to serve it
    unverified (not appraised by the policy, or a failure that is not enforced).

    An enforced appraisal failure raises; ``fd`` is then closed if ``closefd``.
    """
    options = options or ReaderOptions()
    try:
        appraisal = appraise_open(fd, access, options)
        if appraisal is None or appraisal.descriptor is None:
            return None
        descriptor = appraisal.descriptor
        on_corrupt = None
        store = options.store
        if appraisal.tree_origin == "cache" and store is not None:
            alg, digest = descriptor.hash_alg.name, descriptor.digest()

            def on_corrupt() -> None:
                log.warning("cached tree of '%s' is corrupt; discarding it", access.path)
                store.discard(alg, digest)

        verifier = (
            KernelVerified(descriptor, name=access.path)
            if appraisal.tree_origin == "kernel"
            else BlockVerifier(
                descriptor,
                appraisal.tree,
                name=access.path,
                on_corrupt_tree=on_corrupt,
                pool=options.hash_pool,
            )
        )
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    return VerifiedRawIO(fd, verifier, name=access.path, closefd=closefd, chunk=options.chunk)


def open(  # noqa: A001 - the verb of this API, as io.open
    path: str | os.PathLike[str],
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    keyring: Keyring | str | os.PathLike[str] | None = None,
    options: ReaderOptions | None = None,
    buffering: int = _BUFFER,
) -> io.BufferedReader:
    """Open ``path`` for verified reading.

    The file is opened once (``O_NOFOLLOW``, regular files only) and appraised from that
    descriptor: without a policy it must carry a descriptor (or a v3 signature), and with a
    ``keyring`` a signature that verifies; with a ``policy`` (a :class:`Policy` or a file) its
    rules decide. Every read is checked block by block against the file's Merkle tree; a block
    that does not match raises ``OSError(errno.EIO)`` naming it. The raw object (``f.raw``)
    has ``digest`` and ``descriptor``. Only a policy that does not appraise the file (or a
    failure in ``log`` mode) gives an unverified file object.
    """
    own_options = options is None
    options = options or ReaderOptions()
    changes: dict[str, object] = {}
    if policy is not None:
        changes["policy"] = policy if isinstance(policy, Policy) else Policy.load(policy)
    if keyring is not None:
        changes["keyring"] = (
            keyring if isinstance(keyring, Keyring) else Keyring.from_directory(keyring)
        )
    if changes:
        from dataclasses import replace

        options = replace(options, **changes)  # type: ignore[arg-type]
    name = os.fsdecode(path)
    fd = open_regular(path, follow_symlinks=False)
    resolved = os.path.realpath(name)
    raw = open_fd(fd, Access(resolved), options)
    if raw is None:
        log.warning(
            "'%s' is served unverified (not appraised by the policy, or not enforced)", name
        )
        return io.BufferedReader(io.FileIO(fd, "rb", closefd=True), buffer_size=buffering)
    if own_options and options.hash_pool is not None:
        raw.on_close = options.hash_pool.close  # nobody else uses this pool
    return io.BufferedReader(raw, buffer_size=max(buffering, raw.verifier.block_size))
