"""The bulk verbs' cluster paths, in the shapes the CLI already consumes.

* :func:`hashed_outcomes` — ``sign -r``: :class:`~pyverity.protect.batch.Outcome` s of
  :class:`~pyverity.protect.sign.HashedFile` (the CLI signs and writes them, as it does the
  local pool's: the key never leaves this process);
* :func:`file_hash_outcomes` — ``sign -r --imasig``: outcomes of
  :class:`~pyverity.protect.sign.FileHash` (the whole-file hash a v2 signature signs);
* :func:`measured_outcomes` — ``verify -r``: outcomes of
  :class:`~pyverity.protect.batch.Measured` (attributes read here, content hashed there);
* :func:`manifest_source` — ``manifest create``: a :data:`~pyverity.manifest.create.Source`.

All yield in input order and raise :class:`~pyverity.cluster.connect.ClusterError` when the
cluster is lost (the CLI prints one line and exits 1).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pyverity.cluster.connect import Target, connect
from pyverity.cluster.digests import Digester, Got, Want, listed_seen
from pyverity.cluster.plan import Cut
from pyverity.errors import Error
from pyverity.fs.openfile import FileIdentity, FileRef

if TYPE_CHECKING:
    from pyverity.format.ima import KernelHashAlgo
    from pyverity.format.params import TreeParams
    from pyverity.manifest.compute import Computed, DigestOptions, Failed
    from pyverity.manifest.create import Source
    from pyverity.manifest.model import SymlinkEntry
    from pyverity.manifest.walk import Found
    from pyverity.protect.batch import Measured, Outcome
    from pyverity.protect.sign import FileHash, HashedFile

__all__ = [
    "Options",
    "file_hash_outcomes",
    "hashed_outcomes",
    "manifest_source",
    "measured_outcomes",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    target: Target
    recheck: float = 0.0
    cut: Cut = field(default_factory=Cut)


@contextlib.contextmanager
def _digester(opts: Options, on_done: Callable[[Got], None] | None) -> Iterator[Digester]:
    from pyverity.cluster.engine import Engine
    from pyverity.cluster.tasks import Job, Reply, load_replies, run_packed

    with connect(opts.target) as client:
        engine: Engine[list[Job], list[Reply]] = Engine(client, run_packed, decode=load_replies)
        yield Digester(engine, opts.cut, recheck=opts.recheck, on_done=on_done)


def _want(ref: FileRef, **kw: object) -> Want:
    try:
        return Want(ref, listed_seen(ref), **kw)  # type: ignore[arg-type]
    except OSError as e:
        error = f"can't open '{ref.path}': {e.strerror}"
        return Want(ref, None, error=error, extra=kw.get("extra"))


def _failure(got: Got) -> Outcome[object]:
    from pyverity.protect.batch import Failure, Outcome

    assert got.error is not None  # noqa: S101
    msg = f"{got.error}; not signed" if got.changed else got.error
    failure = Failure(msg, None, got.error_class.__name__, got.error_class.exit_code)
    return Outcome(got.want.ref.path, None, failure)


def _outcomes(
    opts: Options,
    wants: Iterable[Want],
    on_done: Callable[[Got], None] | None,
    value: Callable[[Got, FileIdentity], T | None],
) -> Iterator[Outcome[T]]:
    """One outcome per file: ``value(got, identity)`` of each hashed as wanted (None: not what
    was asked for), else the failure."""
    from pyverity.protect.batch import Outcome

    with _digester(opts, on_done) as d:
        for got in d.run(wants):
            made = value(got, got.identity) if got.ok and got.identity is not None else None
            if made is None:
                yield _failure(got)  # type: ignore[misc]
            else:
                yield Outcome(got.want.ref.path, made, None)


def hashed_outcomes(
    opts: Options,
    files: Iterable[FileRef],
    params: TreeParams,
    *,
    on_done: Callable[[Got], None] | None = None,
) -> Iterator[Outcome[HashedFile]]:
    from pyverity.protect.sign import HashedFile

    def hashed(got: Got, identity: FileIdentity) -> HashedFile | None:
        ref = got.want.ref
        desc = got.descriptor
        return None if desc is None else HashedFile(ref.path, identity, desc, ref)

    return _outcomes(opts, (_want(ref, params=params) for ref in files), on_done, hashed)


def file_hash_outcomes(
    opts: Options,
    files: Iterable[FileRef],
    alg: KernelHashAlgo,
    *,
    on_done: Callable[[Got], None] | None = None,
) -> Iterator[Outcome[FileHash]]:
    """The whole-file hash of each file (one sequential task per file), for ``--imasig``."""
    from pyverity.protect.sign import FileHash

    name = alg.hashlib_name
    if name is None:  # algo_by_name() refuses these at the CLI
        raise ValueError(f"hash algorithm {alg.name} is not computable here")

    def file_hash(got: Got, identity: FileIdentity) -> FileHash | None:
        ref = got.want.ref
        if len(got.hashes) != 1:
            return None
        return FileHash(ref.path, identity, alg, got.hashes[0][1], ref)

    return _outcomes(opts, (_want(ref, hashes=(name,)) for ref in files), on_done, file_hash)


def _measure_want(ref: FileRef, namespace: str) -> Want:
    """Read and check the attributes here; decide what the workers must hash."""
    from pyverity.protect.attrs import InvalidProtectionError, ProtectionKind, read_protection
    from pyverity.protect.batch import Measured, uncomputable
    from pyverity.protect.gate import classic_hash_algo

    try:
        listed = listed_seen(ref)
        fd = ref.open()
    except OSError as e:
        return Want(ref, None, error=f"can't open '{ref.path}': {e.strerror}")
    except Error as e:
        return Want(ref, None, error=e.message)
    try:
        protection = read_protection(fd, namespace)
    except InvalidProtectionError as e:
        return Want(ref, None, extra=Measured(None, str(e), None))
    except Error as e:
        return Want(ref, None, error=e.message)
    finally:
        os.close(fd)
    if protection.kind is ProtectionKind.NONE:
        return Want(ref, None, extra=Measured(protection, None, None))
    refused = uncomputable(protection)
    if refused is not None:
        return Want(ref, None, extra=refused)
    if protection.kind is ProtectionKind.CLASSIC:
        name = classic_hash_algo(protection).hashlib_name
        assert name is not None  # noqa: S101 - uncomputable() found it computable
        return Want(ref, listed, hashes=(name,), extra=protection)
    return Want(ref, listed, params=protection.tree_params(), extra=protection)


def measured_outcomes(
    opts: Options,
    files: Iterable[FileRef],
    namespace: str,
    *,
    on_done: Callable[[Got], None] | None = None,
) -> Iterator[Outcome[Measured]]:
    from pyverity.protect.batch import Measured, Outcome

    with _digester(opts, on_done) as d:
        for got in d.run(_measure_want(ref, namespace) for ref in files):
            w = got.want
            if isinstance(w.extra, Measured):
                yield Outcome(w.ref.path, w.extra, None)
            elif not got.ok:
                yield _failure(got)  # type: ignore[misc]
            else:
                computed = got.descriptor if w.params is not None else got.hashes[0][1]
                yield Outcome(w.ref.path, Measured(w.extra, None, computed), None)


def manifest_source(
    opts: Options, digest: DigestOptions, *, on_done: Callable[[Got], None] | None = None
) -> Source:
    """A manifest source computing entries on the cluster (symlinks pass through in order)."""

    def source(work: Iterator[tuple[str, Found]]) -> Iterator[Computed | Failed | SymlinkEntry]:
        from pyverity.hashing.onepass import OnePass
        from pyverity.manifest.compute import Computed, Failed
        from pyverity.manifest.model import SymlinkEntry

        roots: dict[str, tuple[int, int]] = {}

        def ref_of(root: str, found: Found) -> FileRef:
            if root not in roots:
                st = os.stat(root)  # noqa: PTH116
                roots[root] = (st.st_dev, st.st_ino)
            return FileRef(root, os.fsdecode(found.path), roots[root])

        def wants() -> Iterator[Want]:
            for root, found in work:
                ref = ref_of(root, found)
                if found.is_symlink:
                    yield Want(ref, None, extra=SymlinkEntry(found.path, found.target))
                else:
                    yield _want(
                        ref, params=digest.params, hashes=digest.file_hashes, extra=found.path
                    )

        with _digester(opts, on_done) as d:
            for got in d.run(wants()):
                extra = got.want.extra
                if isinstance(extra, SymlinkEntry):
                    yield extra
                elif not got.ok or got.descriptor is None or got.identity is None:
                    yield Failed(extra, got.error or "failed", changed=got.changed)
                else:
                    once = OnePass(got.descriptor, got.hashes, got.identity)
                    yield Computed(extra, got.mode, once)

    return source
