"""``pyverity.open``: a verified, seekable, read-only binary file object (DESIGN.md §6)."""

from __future__ import annotations

import io
import logging
import os

from pyverity.fs.openfile import open_regular
from pyverity.keys.keyring import Keyring
from pyverity.policy.engine import Policy
from pyverity.reader.file import VerifiedRawIO
from pyverity.reader.kernelread import KernelVerified
from pyverity.reader.opening import check_open
from pyverity.reader.options import Access, ReaderOptions
from pyverity.reader.verifier import BlockVerifier

__all__ = ["open", "open_fd"]

log = logging.getLogger(__name__)

_BUFFER = 128 << 10


def open_fd(
    fd: int, access: Access, options: ReaderOptions | None = None, *, closefd: bool = True
) -> VerifiedRawIO | None:
    """Check the open regular file ``fd`` (:func:`~pyverity.reader.opening.check_open`): a
    raw verified reader, or None to serve it unverified (it has no descriptor and no v3
    signature, and is not an appraised classic file).

    An enforced appraisal failure raises, and so does fs-verity's refusal
    (:class:`~pyverity.reader.opening.VerityOpenError`); ``fd`` is then closed if ``closefd``.
    """
    options = options or ReaderOptions()
    try:
        anchor = check_open(fd, access, options)
        if anchor is None:
            return None
        descriptor = anchor.descriptor
        on_corrupt = None
        store = options.store
        if anchor.tree_origin == "cache" and store is not None:
            alg, digest = descriptor.hash_alg.name, descriptor.digest()

            def on_corrupt() -> None:
                log.warning("cached tree of '%s' is corrupt; discarding it", access.path)
                store.discard(alg, digest)

        verifier = (
            KernelVerified(descriptor, name=access.path)
            if anchor.tree_origin == "kernel"
            else BlockVerifier(
                descriptor,
                anchor.tree,
                name=access.path,
                on_corrupt_tree=on_corrupt,
                pool=options.hash_pool,
            )
        )
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    return VerifiedRawIO(
        fd,
        verifier,
        name=access.path,
        closefd=closefd,
        chunk=options.chunk,
        fs_verity=anchor.fs_verity,
    )


def open(  # noqa: A001 - the verb of this API, as io.open
    path: str | os.PathLike[str],
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    keyring: Keyring | str | os.PathLike[str] | None = None,
    options: ReaderOptions | None = None,
    buffering: int = _BUFFER,
) -> io.BufferedReader:
    """Open ``path`` for verified reading.

    The file is opened once (``O_NOFOLLOW``, regular files only) and checked from that
    descriptor. fs-verity first, whatever the policy says: a file with a descriptor or a v3
    signature is verified block by block on every read against its Merkle tree (a block that
    does not match raises ``OSError(errno.EIO)`` naming it), and a descriptor that does not
    match the content or does not parse fails the open
    (:class:`~pyverity.reader.opening.VerityOpenError`). Appraisal on top: without a policy
    the file must carry a descriptor (or a v3 signature), and with a ``keyring`` a signature
    that verifies; with a ``policy`` (a :class:`Policy` or a file) its rules decide. The raw
    object (``f.raw``) has ``digest`` and ``descriptor``. Only a file with neither attribute
    (or a classic one the policy does not appraise) gives an unverified file object.
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
        log.warning("'%s' is served unverified (no fs-verity protection, and not appraised)", name)
        return io.BufferedReader(io.FileIO(fd, "rb", closefd=True), buffer_size=buffering)
    if own_options and options.hash_pool is not None:
        raw.on_close = options.hash_pool.close  # nobody else uses this pool
    return io.BufferedReader(raw, buffer_size=max(buffering, raw.verifier.block_size))
