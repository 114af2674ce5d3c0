"""``manifest create``: walk trees, compute every entry, sign, publish atomically.

The walk (:func:`~pyverity.manifest.walk.walk`, one per root, merged) yields paths in strictly
increasing byte order; entries are computed in that order (inline or by worker processes,
:func:`~pyverity.manifest.compute.ordered_map`) and spooled to an unlinked temporary file, so
memory does not grow with the tree. Once the count is known the manifest is written to a
temporary name beside the output (header, entries, signature line over the SHA-256 of the
bytes before it), fsynced and renamed into place. Keys stay in this process: workers only hash.

A file that changes while it is read, or cannot be read, is reported and never recorded; the
manifest is then not published at all (:class:`~pyverity.errors.FileChangedError` or
:class:`~pyverity.errors.InputError`), since it would not describe the tree.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pyverity.errors import Error, FileChangedError, InputError, StorageError
from pyverity.format.ima import HASH_ALGOS, HashAlgoId
from pyverity.fs.atomic import fsync_dir, write_all
from pyverity.manifest.compute import (
    Computed,
    DigestOptions,
    Failed,
    Task,
    computer,
    ordered_map,
)
from pyverity.manifest.model import (
    Entry,
    FileEntry,
    Header,
    SignatureLine,
    SymlinkEntry,
    display,
)
from pyverity.manifest.walk import Found, WalkStats, open_root, walk

if TYPE_CHECKING:
    from pyverity.keys import Signer

__all__ = [
    "CreateOptions",
    "CreateReport",
    "Source",
    "create_manifest",
    "kernel_algo_id",
    "local_source",
    "sign_bytes",
]

#: Where entries come from: given the walk, ``(root, found)`` in byte order of path, yield one
#: result per item in the same order (symlinks passed through). The default computes them in
#: ``jobs`` local processes; ``--cluster`` passes one that runs on Dask (:mod:`pyverity.cluster`).
Source = Callable[[Iterator[tuple[str, Found]]], Iterator["Computed | Failed | SymlinkEntry"]]


@dataclass(frozen=True)
class CreateOptions:
    name: str
    serial: int
    created: str
    digest: DigestOptions
    #: None, "v3" (the 0x06 signature ``sign`` writes) or "v2" (``sign --imasig``, over the
    #: first whole-file hash).
    signatures: str | None = None
    jobs: int = 1


@dataclass(frozen=True)
class CreateReport:
    entries: int
    files: int
    symlinks: int
    skipped: int
    bytes_hashed: int
    failures: int
    #: Of the failures, files that changed while they were read.
    changed: int = 0


def kernel_algo_id(hashlib_name: str) -> int:
    """The kernel ``hash_algo`` id of a hashlib name (``sha256`` -> 4)."""
    for alg in HASH_ALGOS:
        if alg.hashlib_name == hashlib_name:
            return alg.id
    raise InputError(f"no kernel hash algorithm for {hashlib_name}")  # pragma: no cover


def sign_bytes(signer: Signer, data_digest: bytes) -> bytes:
    """The manifest signature: the key signs the SHA-256 digest of the preceding bytes."""
    return signer.sign_digest(data_digest, HashAlgoId.SHA256)


def _keyed(index: int, fd: int, stats: WalkStats) -> Iterator[tuple[bytes, int, Found]]:
    for found in walk(fd, stats):
        yield found.path, index, found


def _merged(roots: list[str], fds: list[int], stats: WalkStats) -> Iterator[tuple[str, Found]]:
    walks = [_keyed(i, fd, stats) for i, fd in enumerate(fds)]
    previous: bytes | None = None
    for path, i, found in heapq.merge(*walks):
        if path == previous:
            raise InputError(f"'{display(path)}' is in more than one of the trees given")
        previous = path
        yield roots[i], found


def _entry(
    item: Computed | Failed | SymlinkEntry, signer: Signer, options: CreateOptions
) -> Entry | Failed:
    if isinstance(item, (SymlinkEntry, Failed)):
        return item
    d = item.digests
    desc = d.descriptor
    signature = None
    if options.signatures == "v3":
        from pyverity.keys import sign_v3

        signature = sign_v3(signer, desc.hash_algorithm, desc.digest()).to_bytes()
    elif options.signatures == "v2":
        from pyverity.keys import sign_v2

        name, digest = d.hashes[0]
        signature = sign_v2(signer, kernel_algo_id(name), digest).to_bytes()
    return FileEntry(item.path, desc.data_size, item.mode, desc.digest(), d.hashes, signature)


def _compute(
    work: list[tuple[str, Found]], options: DigestOptions
) -> list[Computed | Failed | SymlinkEntry]:
    """Worker task: symlinks pass through; regular files are computed."""
    files = [Task(root, f.path, f.size) for root, f in work if not f.is_symlink]
    computed = iter(computer(options)(files))
    return [SymlinkEntry(f.path, f.target) if f.is_symlink else next(computed) for _, f in work]


def local_source(options: CreateOptions) -> Source:
    """The default :data:`Source`: entries computed in ``options.jobs`` local processes."""
    fn = functools.partial(_compute, options=options.digest)

    def source(work: Iterator[tuple[str, Found]]) -> Iterator[Computed | Failed | SymlinkEntry]:
        return ordered_map(fn, work, jobs=options.jobs, weight=lambda item: item[1].size or 4096)

    return source


def _spool(
    roots: list[str],
    signer: Signer,
    options: CreateOptions,
    spool: IO[bytes],
    on_failure: Callable[[Failed], None] | None,
    *,
    source: Source | None = None,
) -> CreateReport:
    fds: list[int] = []
    stats = WalkStats()
    counts = {"entries": 0, "files": 0, "symlinks": 0, "bytes": 0, "failures": 0, "changed": 0}
    try:
        for root in roots:
            fds.append(open_root(root))
        work = _merged(roots, fds, stats)
        results = (source or local_source(options))(work)
        for item in results:
            entry = _entry(item, signer, options)
            if isinstance(entry, Failed):
                counts["failures"] += 1
                counts["changed"] += entry.changed
                if on_failure is not None:
                    on_failure(entry)
                continue
            spool.write(entry.to_line())
            counts["entries"] += 1
            if isinstance(entry, FileEntry):
                counts["files"] += 1
                counts["bytes"] += entry.size
            else:
                counts["symlinks"] += 1
    finally:
        for fd in fds:
            os.close(fd)
    return CreateReport(
        counts["entries"],
        counts["files"],
        counts["symlinks"],
        stats.skipped,
        counts["bytes"],
        counts["failures"],
        counts["changed"],
    )


def _publish(output: Path, header: Header, spool: IO[bytes], signer: Signer) -> None:
    """Write header + spooled entries + signature line to a temp name, fsync, rename."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o644)
    try:
        try:
            h = hashlib.sha256()
            first = header.to_line()
            h.update(first)
            write_all(fd, first)
            spool.seek(0)
            while chunk := spool.read(1 << 20):
                h.update(chunk)
                write_all(fd, chunk)
            digest = h.digest()
            line = SignatureLine(signer.keyid, digest, sign_bytes(signer, digest)).to_line()
            write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(output.parent)


def create_manifest(
    output: str | os.PathLike[str],
    roots: list[str],
    signer: Signer,
    options: CreateOptions,
    *,
    on_failure: Callable[[Failed], None] | None = None,
    source: Source | None = None,
) -> CreateReport:
    """Walk ``roots``, compute and sign every entry, publish the manifest at ``output``.

    Raises (and publishes nothing) if any file changed while read or could not be read;
    ``on_failure`` sees each such file first. ``source`` computes the entries instead of the
    local processes (:data:`Source`); signing stays here either way.
    """
    out = Path(output)
    try:
        with tempfile.TemporaryFile(dir=out.parent) as spool:
            report = _spool(roots, signer, options, spool, on_failure, source=source)
            if report.failures:
                err = FileChangedError if report.changed else InputError
                raise err(
                    f"{report.failures} file(s) could not be recorded; manifest not written",
                    remedy="run again once the tree is quiet",
                )
            header = Header(
                name=options.name,
                serial=options.serial,
                created=options.created,
                params=options.digest.params,
                file_hashes=options.digest.file_hashes,
                keyid=signer.keyid,
                entries=report.entries,
                skipped=report.skipped,
                signatures=options.signatures,
            )
            _publish(out, header, spool, signer)
    except Error:
        raise
    except OSError as e:  # the spool or the output directory, not an input
        raise StorageError(f"can't write manifest '{out}': {e.strerror}") from e
    return report
