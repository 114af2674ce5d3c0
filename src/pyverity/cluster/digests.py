"""The client side: turning workers' results into checked digests, in the order asked.

For each file the client lists (:class:`Want`: how to open it here, the stat it had when
listed, what to compute) it cuts jobs (:mod:`.plan`), runs them on an engine (anything with
:meth:`~pyverity.cluster.engine.Engine.run`; tests use an inline one) and gathers the parts.
A file's digests are accepted only when every part saw the same (size, mtime, ctime, inode),
equal to the client's stat at listing **and** to its own ``fstat`` now, on a descriptor it
opened itself (beneath the walk root, no symlink followed); anything else is ``changed``. With
``recheck`` a random fraction of the files is hashed again here and compared (a worker that
lies is caught with that probability per file; see docs/cluster.md).

Results are yielded in input order (a bounded buffer: no new task is submitted while more than
:data:`BUFFER` finished files wait for an earlier one), so output never depends on the cluster.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyverity.cluster.plan import Cut, batches, jobs_for
from pyverity.cluster.tasks import (
    Hashes,
    Job,
    Kind,
    Reply,
    Result,
    Seen,
    file_hashes,
    result_of,
    seen_of,
)
from pyverity.errors import Error, FileChangedError, InputError
from pyverity.format.descriptor import Descriptor
from pyverity.format.params import TreeParams
from pyverity.fs.openfile import FileIdentity, FileRef, identity

__all__ = ["BUFFER", "Digester", "Got", "Want", "listed_seen"]

#: Finished files held back waiting for an earlier one before submission pauses.
BUFFER = 50_000


class Want(NamedTuple):
    """One file to compute: opened here as ``ref``; ``listed`` its stat when listed (None:
    nothing to compute, or ``error`` already known). Named tuples, this and :class:`Got`:
    one of each is made per file (a frozen dataclass costs about twice as much to build)."""

    ref: FileRef
    listed: Seen | None
    params: TreeParams | None = None
    hashes: tuple[str, ...] = ()
    error: str | None = None
    #: Carried through untouched (e.g. the parsed attributes ``verify`` read).
    extra: Any = None


class Got(NamedTuple):
    want: Want
    descriptor: Descriptor | None = None
    hashes: Hashes = ()
    #: The client's own identity and permission bits of the file, when accepted.
    identity: FileIdentity | None = None
    mode: int = 0
    error: str | None = None
    #: The kind of failure: :class:`~pyverity.errors.FileChangedError` when the file changed
    #: (or went away) during the run, so it must never be signed.
    error_class: type[Error] = InputError

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return self.error is not None and issubclass(self.error_class, FileChangedError)


def _client_path(ref: FileRef) -> str:
    return ref.path if ref.root is None else os.path.join(ref.root, ref.rel)  # noqa: PTH118


def listed_seen(ref: FileRef) -> Seen:
    """The stat of ``ref`` when it is listed (``lstat``: a symlink never matches a file)."""
    return seen_of(os.stat(_client_path(ref), follow_symlinks=False))  # noqa: PTH116


def _worker_path(ref: FileRef, absolute: dict[str, str]) -> tuple[str, str]:
    """(root, path) for a worker: absolute, so that every machine opens the same file
    (``absolute``: the roots made absolute so far, each once per run)."""
    if ref.root is None:
        return "", os.path.abspath(ref.rel)  # noqa: PTH100
    root = absolute.get(ref.root)
    if root is None:
        root = absolute[ref.root] = os.path.abspath(ref.root)  # noqa: PTH100
    return root, ref.rel


@dataclass
class _Partial:
    want: Want
    count: int
    results: list[Result] = field(default_factory=list)


CHANGED = "file changed during the run"


class Digester:
    """Runs :class:`Want` s on ``engine``.

    :meth:`run` yields one :class:`Got` per want, in order."""

    def __init__(
        self,
        engine: Any,
        cut: Cut | None = None,
        *,
        recheck: float = 0.0,
        on_done: Callable[[Got], None] | None = None,
    ) -> None:
        self.engine = engine
        self.cut = cut or Cut()
        self.recheck = recheck
        self.on_done = on_done
        self.rechecked = 0
        self.mismatches = 0
        self._rng = secrets.SystemRandom()

    def run(self, wants: Iterable[Want]) -> Iterator[Got]:
        # A file of one job waits as its Want; one cut into parts as a _Partial.
        waiting: dict[int, Want | _Partial] = {}
        done: dict[int, Got] = {}
        next_index = 0
        absolute: dict[str, str] = {}

        def jobs() -> Iterator[Job]:
            for i, w in enumerate(wants):
                js: list[Job] = []
                if w.error is None and w.listed is not None:
                    root, path = _worker_path(w.ref, absolute)
                    js = jobs_for(
                        i, path, w.listed.size, self.cut, params=w.params, hashes=w.hashes,
                        root=root,
                    )  # fmt: skip
                if not js:
                    done[i] = self._finish(w, [])
                    continue
                waiting[i] = w if len(js) == 1 else _Partial(w, len(js))
                yield from js

        def ready() -> Iterator[Got]:
            nonlocal next_index
            while next_index in done:
                yield done.pop(next_index)
                next_index += 1

        units = batches(jobs(), self.cut)
        replies: list[Reply]
        for unit, replies in self.engine.run(units, hold=lambda: len(done) > BUFFER):
            for job, reply in zip(unit, replies, strict=True):
                i = job.file
                w = waiting[i]
                if isinstance(w, _Partial):
                    w.results.append(result_of(job, reply))
                    if len(w.results) < w.count:
                        continue
                    del waiting[i]
                    done[i] = self._finish(w.want, w.results)
                else:
                    del waiting[i]
                    done[i] = self._finish(w, [result_of(job, reply)])
            yield from ready()
        yield from ready()

    def _finish(self, want: Want, results: list[Result]) -> Got:
        got = self._assemble(want, results)
        if self.on_done is not None:
            self.on_done(got)
        return got

    def _assemble(self, w: Want, results: list[Result]) -> Got:
        if w.error is not None or w.listed is None:
            return Got(w, error=w.error)
        for r in results:
            if r.error is not None:
                return Got(w, error=r.error, error_class=_class(r))
        for r in results:
            if r.seen != w.listed:
                return Got(w, error=CHANGED, error_class=FileChangedError)
        descriptor, hashes = _combine(w, results)
        recheck = bool(results) and self.recheck > 0 and self._rng.random() < self.recheck
        if not recheck:
            # lstat (no open): a symlink swapped in on the way shows another inode -> changed;
            # whoever writes opens the file again beneath its root and checks it once more.
            try:
                st = os.stat(_client_path(w.ref), follow_symlinks=False)  # noqa: PTH116
            except OSError as e:
                return Got(
                    w,
                    error=f"can't stat '{w.ref.path}': {e.strerror}",
                    error_class=FileChangedError,
                )
            if seen_of(st) != w.listed:
                return Got(w, error=CHANGED, error_class=FileChangedError)
            return Got(w, descriptor, hashes, identity(st), stat.S_IMODE(st.st_mode))
        try:
            fd = w.ref.open()
        except Error as e:
            return Got(w, error=e.message, error_class=FileChangedError)
        try:
            st = os.fstat(fd)
            if seen_of(st) != w.listed:
                return Got(w, error=CHANGED, error_class=FileChangedError)
            self.rechecked += 1
            if not _same(_local(fd, w), (descriptor, hashes)):
                if seen_of(os.fstat(fd)) != w.listed:
                    return Got(w, error=CHANGED, error_class=FileChangedError)
                self.mismatches += 1
                return Got(w, error="--recheck: a worker's digest differs from this client's")
        except Error as e:
            return Got(w, error=e.message, error_class=type(e))
        except OSError as e:
            return Got(w, error=f"read error: {e.strerror}")
        finally:
            os.close(fd)
        return Got(w, descriptor, hashes, identity(st), stat.S_IMODE(st.st_mode))


def _class(r: Result) -> type[Error]:
    return FileChangedError if r.changed else InputError


def _combine(w: Want, results: list[Result]) -> tuple[Descriptor | None, Hashes]:
    descriptor: Descriptor | None = None
    hashes: Hashes = ()
    roots: list[tuple[int, tuple[bytes, ...]]] = []
    height = 0
    for r in results:
        kind = r.job.kind
        if kind is Kind.TREE:
            assert isinstance(r.value, Descriptor)  # noqa: S101
            descriptor = r.value
        elif kind is Kind.ONEPASS:
            pair = r.value
            assert isinstance(pair, tuple)  # noqa: S101
            assert isinstance(pair[0], Descriptor)  # noqa: S101
            descriptor, hashes = pair[0], pair[1]
        elif kind is Kind.HASH:
            hashes = r.value  # type: ignore[assignment]
        else:
            roots.append((r.job.part, r.value))  # type: ignore[arg-type]
            height = r.job.height
    if roots:
        from pyverity.hashing.subtree import fold_roots  # here: not per small file

        assert w.params is not None  # noqa: S101
        assert w.listed is not None  # noqa: S101
        flat = [root for _, rs in sorted(roots) for root in rs]
        descriptor = fold_roots(w.params, w.listed.size, height, flat)
    return descriptor, hashes


def _local(fd: int, w: Want) -> tuple[Descriptor | None, Hashes]:
    """The same digests computed here (``--recheck``)."""
    assert w.listed is not None  # noqa: S101
    if w.params is None:
        return None, file_hashes(fd, w.hashes, w.listed.size)
    if w.hashes:
        from pyverity.hashing.onepass import hash_once

        once = hash_once(fd, w.params, w.hashes)
        return once.descriptor, once.hashes
    from pyverity.hashing import build_tree

    return build_tree(fd, w.params, keep_tree=False, jobs=1).descriptor, ()


def _same(a: tuple[Descriptor | None, Hashes], b: tuple[Descriptor | None, Hashes]) -> bool:
    da = a[0].to_bytes() if a[0] is not None else b""
    db = b[0].to_bytes() if b[0] is not None else b""
    ha = b"".join(d for _, d in a[1])
    hb = b"".join(d for _, d in b[1])
    return hmac.compare_digest(da + ha, db + hb)
