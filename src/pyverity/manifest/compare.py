"""``manifest verify M DIR``: every file of DIR against a verified manifest.

The walk of DIR and the manifest's entries are both in byte order of path, so they are joined
in one pass (memory does not grow with the tree): a path only in DIR is *added*, only in the
manifest *missing*, in both but different (type, size, mode, a digest, a symlink target)
*changed*. Files are recomputed in one read each, inline or by worker processes; the
comparison itself runs here, in the client.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyverity.manifest.compute import Computed, DigestOptions, Failed, Task, computer, ordered_map
from pyverity.manifest.model import Entry, FileEntry, SymlinkEntry
from pyverity.manifest.reader import VerifiedManifest
from pyverity.manifest.walk import Found, WalkStats, open_root, walk

__all__ = ["Difference", "Summary", "compare_tree", "content_difference", "options_of"]


@dataclass(frozen=True)
class Difference:
    kind: str  # "added" | "missing" | "changed"
    path: bytes
    detail: str = ""


@dataclass
class Summary:
    checked: int = 0
    ok: int = 0
    added: int = 0
    missing: int = 0
    changed: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return self.added + self.missing + self.changed


def options_of(manifest: VerifiedManifest) -> DigestOptions:
    return DigestOptions(manifest.header.params, manifest.header.file_hashes)


def content_difference(entry: FileEntry, computed: Computed) -> str | None:
    """Why the computed content is not the entry's (size or a digest), or None."""
    d = computed.digests
    if d.descriptor.data_size != entry.size:
        return f"size {d.descriptor.data_size}, manifest {entry.size}"
    if not hmac.compare_digest(d.descriptor.digest(), entry.verity):
        return "fs-verity digest differs"
    for (name, got), (_, want) in zip(d.hashes, entry.hashes, strict=True):
        if not hmac.compare_digest(got, want):
            return f"{name} differs"
    return None


def _join(
    entries: Iterator[Entry], found: Iterator[Found]
) -> Iterator[tuple[Entry | None, Found | None]]:
    e = next(entries, None)
    f = next(found, None)
    while e is not None or f is not None:
        if f is None or (e is not None and e.path < f.path):
            yield e, None
            e = next(entries, None)
        elif e is None or f.path < e.path:
            yield None, f
            f = next(found, None)
        else:
            yield e, f
            e = next(entries, None)
            f = next(found, None)


_Pair = tuple[Entry | None, Found | None]


_Result = tuple[Entry | None, Found | None, Computed | Failed | None]


def _compute_pairs(work: list[_Pair], root: str, options: DigestOptions) -> list[_Result]:
    """Worker task: compute the files present on both sides (others need no read)."""
    tasks = [
        Task(root, f.path, f.size)
        for e, f in work
        if isinstance(e, FileEntry) and f is not None and not f.is_symlink
    ]
    computed = iter(computer(options)(tasks))
    return [
        (e, f, next(computed))
        if isinstance(e, FileEntry) and f is not None and not f.is_symlink
        else (e, f, None)
        for e, f in work
    ]


def _judge(e: Entry | None, f: Found | None, c: Computed | Failed | None) -> Difference | None:
    if e is None:
        assert f is not None  # noqa: S101
        return Difference("added", f.path, "symlink" if f.is_symlink else "file")
    if f is None:
        return Difference("missing", e.path)
    if isinstance(e, SymlinkEntry):
        if not f.is_symlink:
            return Difference("changed", e.path, "a file, the manifest has a symlink")
        if f.target != e.target:
            return Difference("changed", e.path, "symlink target differs")
        return None
    if f.is_symlink:
        return Difference("changed", e.path, "a symlink, the manifest has a file")
    if isinstance(c, Failed):
        return Difference("missing" if c.missing else "changed", e.path, c.message)
    assert c is not None  # noqa: S101
    why = content_difference(e, c)
    if why is None and c.mode != e.mode:
        why = f"mode {c.mode:04o}, manifest {e.mode:04o}"
    return None if why is None else Difference("changed", e.path, why)


def compare_tree(
    manifest: VerifiedManifest, root: str | os.PathLike[str], summary: Summary, *, jobs: int = 1
) -> Iterator[Difference]:
    """Yield every difference between ``root`` and ``manifest``, in path order."""
    root_name = os.fsdecode(root)
    root_fd = open_root(root_name)
    stats = WalkStats()
    try:
        pairs = _join(manifest.entries(), walk(root_fd, stats))
        fn = functools.partial(_compute_pairs, root=root_name, options=options_of(manifest))
        for e, f, c in ordered_map(fn, pairs, jobs=jobs, weight=_weight):
            summary.checked += 1
            diff = _judge(e, f, c)
            if diff is None:
                summary.ok += 1
                continue
            setattr(summary, diff.kind, getattr(summary, diff.kind) + 1)
            yield diff
    finally:
        os.close(root_fd)
    summary.skipped = stats.skipped


def _weight(pair: _Pair) -> int:
    return pair[1].size if pair[1] is not None else 0
