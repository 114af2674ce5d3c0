"""What a verified open is given: the reader's options, who opens the file, the tree store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pyverity.reader.hashpool import HashPool

if TYPE_CHECKING:
    from pyverity.format.descriptor import Descriptor
    from pyverity.format.merkletree import MerkleTree
    from pyverity.keys.keyring import Keyring
    from pyverity.measure.log import MeasurementLog
    from pyverity.policy.engine import Decision, Policy

__all__ = ["Access", "CachedEntry", "ReaderOptions", "TreeProvider"]


class CachedEntry(Protocol):
    """What a tree store returns: a descriptor that matched the digest, and untrusted tree bytes."""

    @property
    def descriptor(self) -> Descriptor: ...

    @property
    def unverified_tree(self) -> bytes: ...


class TreeProvider(Protocol):
    """The part of a tree store (``pyverity.store``) the reader uses."""

    def get(self, algorithm: str, digest: bytes) -> CachedEntry | None: ...

    def put(self, tree: MerkleTree) -> None: ...

    def discard(self, algorithm: str, digest: bytes) -> None: ...


@dataclass(frozen=True)
class ReaderOptions:
    """How files are appraised, where trees come from, where opens are measured."""

    #: Attribute namespace: ``security`` (default) or ``user``.
    xattr_ns: str = "security"
    #: Untrusted tree store (cache or memory); None builds every tree inline.
    store: TreeProvider | None = None
    #: IMA-style policy; None appraises every file (it must be protected) and measures none.
    #: Whatever it says, a file with a descriptor or a v3 signature is verified on every read.
    policy: Policy | None = None
    #: Trusted certificates (rules with ``keyring=`` name their own directory).
    keyring: Keyring | None = None
    #: Without a policy: deny a failed appraisal (True) or log it (the file is still verified
    #: against its descriptor when it has one).
    enforce: bool = True
    #: Where first opens are recorded, when the policy measures them.
    measurements: MeasurementLog | None = None
    #: The file hash measured for files whose ``security.ima`` names no algorithm (the
    #: kernel's ``ima_hash=``; kernel hash name).
    ima_hash: str = "sha256"
    #: Largest span read and verified at once.
    chunk: int = 8 << 20
    #: Asks the daemon for a first-use build of a file's own path on a cache miss
    #: (e.g. ``pyverity.daemon.client.build_now``; its answer is never trusted: the tree is
    #: read back from ``store`` and verified block by block). None: build inline.
    first_use_build: Callable[[str], object] | None = None
    #: Called with the time (s) an inline build took, for metrics.
    on_inline_build: Callable[[float], None] | None = None
    #: Threads that hash one long read together (shared by the handles of these options).
    hash_pool: HashPool | None = field(default_factory=HashPool, compare=False, repr=False)
    _keyrings: dict[str, Keyring] = field(default_factory=dict, compare=False, repr=False)

    def keyring_for(self, decision: Decision | None) -> Keyring | None:
        directory = decision.keyring if decision is not None else None
        if directory is None:
            return self.keyring
        ring = self._keyrings.get(directory)
        if ring is None:
            from pyverity.keys.keyring import Keyring

            ring = Keyring.from_directory(directory)
            self._keyrings[directory] = ring
        return ring


@dataclass(frozen=True)
class Access:
    """Who opens the file, for the policy's conditions (default: this process)."""

    path: str
    uid: int | None = None
    gid: int | None = None
    #: The file's own path (the backing file under a mount), for the daemon's first-use build.
    source_path: str | None = None
    #: The caller saw the file written since its attributes were (the mount's STALE): its
    #: appraisal fails; fs-verity still checks it against its descriptor.
    stale: bool = False
