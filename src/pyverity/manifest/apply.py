"""``manifest apply``: re-attach protection after a copy that lost the attributes.

Order of work, so that bad input writes nothing:

1. the manifest's signature was checked by :func:`~pyverity.manifest.reader.open_manifest`;
   :meth:`~pyverity.manifest.reader.VerifiedManifest.check` parses every entry;
2. every entry's directories are resolved beneath DIR with no symlink followed: a path that
   would leave DIR through a symlink refuses the whole run
   (:class:`~pyverity.manifest.walk.SymlinkInPathError`);
3. each file is recomputed (one read, inline or in workers); only where size and every digest
   equal the entry's, the attributes are written, in this process, on a descriptor opened
   beneath DIR whose identity is the one that was hashed, through ``protect``'s
   :func:`~pyverity.protect.sign.write_protection` (descriptor first, signature last, as
   ``pyverity sign``). The signature is written only if ``protect``'s appraisal gate accepts
   the pair with the keyring; a v3 signature that does not verify leaves the descriptor alone.

Attributes a file already carries that differ from what would be written are kept (the file is
reported) unless ``force``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.errors import Error, FormatError, IntegrityError, SignatureError
from pyverity.format.descriptor import Descriptor
from pyverity.format.ima import XattrType
from pyverity.fs.openfile import identity
from pyverity.fs.xattr import IMA_SUFFIX, VERITY_SUFFIX, attr_name, get_attr, remove_attr
from pyverity.manifest.compare import content_difference, options_of
from pyverity.manifest.compute import (
    Computed,
    DigestOptions,
    Failed,
    Task,
    computer,
    ordered_map,
)
from pyverity.manifest.model import FileEntry, display
from pyverity.manifest.reader import VerifiedManifest
from pyverity.manifest.walk import MissingError, open_beneath, open_dir_beneath, open_root

if TYPE_CHECKING:
    from pyverity.keys import Keyring

__all__ = ["Applied", "apply_manifest"]


@dataclass(frozen=True)
class Applied:
    """What happened to one file: ``written``, ``unchanged`` (already so), ``kept`` (other
    attributes there, no ``--force``), ``differs`` (content), ``missing``, ``failed``."""

    path: bytes
    action: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.action in ("written", "unchanged")


def _preflight(manifest: VerifiedManifest, root_fd: int) -> None:
    """Refuse the run if any entry's directories leave the root through a symlink."""
    last: bytes | None = None
    for entry in manifest.entries():
        parent = entry.path.rpartition(b"/")[0]
        if not parent or parent == last:
            continue
        last = parent
        try:
            os.close(open_dir_beneath(root_fd, parent.split(b"/"), entry.path))
        except MissingError:
            continue


def _files(manifest: VerifiedManifest, root: str) -> Iterator[tuple[FileEntry, Task]]:
    for entry in manifest.entries():
        if isinstance(entry, FileEntry):
            yield entry, Task(root, entry.path, entry.size)


def _compute(
    work: list[tuple[FileEntry, Task]], options: DigestOptions
) -> list[tuple[FileEntry, Computed | Failed]]:
    """Worker task: compute each entry's file."""
    results = computer(options)([t for _, t in work])
    return list(zip((e for e, _ in work), results, strict=True))


def _wanted(
    entry: FileEntry, computed: Computed, keyring: Keyring
) -> tuple[Descriptor | None, bytes | None, str]:
    """The descriptor and ``<ns>.ima`` value to write, and a note, after protect's gate."""
    from pyverity.protect import parse_protection, verify_protection

    d = computed.digests
    sig = entry.signature
    is_v2 = sig is not None and sig[:1] == bytes([XattrType.EVM_IMA_XATTR_DIGSIG])
    desc = None if is_v2 else d.descriptor
    if sig is None:
        return desc, None, ""
    try:
        raw_desc = None if desc is None else desc.to_bytes()
        protection = parse_protection(raw_desc, sig, d.descriptor.data_size)
        if is_v2:
            value = protection.unverified_ima
            assert value is not None  # noqa: S101
            computed_value: Descriptor | bytes = d.file_hash(value.algorithm.hashlib_name or "")
        else:
            computed_value = d.descriptor
        verify_protection(protection, computed_value, keyring)
    except (KeyError, FormatError, IntegrityError, SignatureError) as e:
        note = f"signature not written: {e}"
        return desc, None, note
    return desc, sig, ""


def _write(
    root_fd: int, entry: FileEntry, computed: Computed, keyring: Keyring, *, ns: str, force: bool
) -> Applied:
    from pyverity.protect import write_protection

    desc, ima, note = _wanted(entry, computed, keyring)
    if desc is None and ima is None:
        return Applied(entry.path, "failed", note)
    fd = open_beneath(root_fd, entry.path)
    try:
        if identity(os.fstat(fd)) != computed.digests.identity:
            return Applied(entry.path, "differs", "changed after it was hashed; untouched")
        vname, iname = attr_name(ns, VERITY_SUFFIX), attr_name(ns, IMA_SUFFIX)
        old_desc, old_ima = get_attr(fd, vname), get_attr(fd, iname)
        new_desc = None if desc is None else desc.to_bytes()
        conflicts = []
        if old_desc is not None and old_desc != new_desc:
            conflicts.append(vname)
        if old_ima is not None and old_ima != ima:
            conflicts.append(iname)
        if not conflicts and old_desc == new_desc and (ima is None or old_ima == ima):
            return Applied(entry.path, "unchanged", note)
        if conflicts and not force:
            return Applied(
                entry.path, "kept", f"{', '.join(conflicts)} differ (--force replaces them)"
            )
        if desc is None and old_desc is not None:
            remove_attr(fd, vname)  # a descriptor with a classic signature is invalid
        write_protection(fd, ns, desc, ima)
        if ima is None and old_ima is not None and iname in conflicts:
            remove_attr(fd, iname)  # as `enable`: a stale signature could no longer match
    finally:
        os.close(fd)
    return Applied(entry.path, "written", note)


def apply_manifest(
    manifest: VerifiedManifest,
    root: str | os.PathLike[str],
    keyring: Keyring,
    *,
    namespace: str = "security",
    force: bool = False,
    jobs: int = 1,
) -> Iterator[Applied]:
    """Check everything, then re-attach protection file by file (see the module docstring)."""
    manifest.check()
    root_name = os.fsdecode(root)
    root_fd = open_root(root_name)
    try:
        _preflight(manifest, root_fd)
        fn = functools.partial(_compute, options=options_of(manifest))
        for entry, c in ordered_map(
            fn, _files(manifest, root_name), jobs=jobs, weight=lambda w: w[0].size
        ):
            if isinstance(c, Failed):
                yield Applied(entry.path, "missing" if c.missing else "differs", c.message)
                continue
            why = content_difference(entry, c)
            if why is not None:
                yield Applied(entry.path, "differs", f"{why}; untouched")
                continue
            try:
                yield _write(root_fd, entry, c, keyring, ns=namespace, force=force)
            except Error as e:
                yield Applied(entry.path, "failed", e.message)
    finally:
        os.close(root_fd)


def describe(applied: Applied) -> str:
    """One line for a report."""
    tail = f" ({applied.detail})" if applied.detail else ""
    return f"{applied.action}: {display(applied.path)}{tail}"
