"""What the daemon and its build workers say to each other: one frozen dataclass per message.

They travel pickled over the worker's socket pair (:class:`multiprocessing.connection.Connection`);
the file itself follows a :class:`BuildSpec` as a descriptor (``SCM_RIGHTS``). The daemon sends
:class:`BuildSpec`, :class:`Cancel`, :class:`Yield` and :class:`Exit`; a worker answers
:class:`Hello` once, then for each build :class:`Progress` and :class:`Checkpoint` messages and
one of :class:`Done`, :class:`Stopped` or :class:`Failed`. Small files travel in batches
(ADR 0006): a :class:`SmallBatch` of paths, which the worker opens beneath the roots, answered
by one :class:`BatchDone` whose :class:`SmallResult` per file carries the gate's verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyverity.errors import Reason
from pyverity.fs.openfile import FileIdentity
from pyverity.protect import ProtectionKind
from pyverity.protect.gate import Verdict, VerdictState

__all__ = [
    "BatchDone",
    "BuildSpec",
    "Cancel",
    "Checkpoint",
    "Done",
    "Exit",
    "Failed",
    "FailureKind",
    "FromWorker",
    "Hello",
    "KeyringCertificates",
    "Progress",
    "SmallBatch",
    "SmallItem",
    "SmallResult",
    "StopReason",
    "Stopped",
    "ToWorker",
    "Yield",
]


class StopReason(enum.StrEnum):
    """Why a build stopped before its end."""

    CANCEL = "cancel"  # the result is no longer wanted (a write, a new value, shutdown)
    YIELD = "yield"  # give the worker to a first use; the build is queued to resume


class FailureKind(enum.StrEnum):
    """What kind of error ended a build (the daemon retries FILE_CHANGED soon, others later)."""

    FILE_CHANGED = "file changed"  # the identity changed while hashing (FileChangedError)
    STORAGE = "storage"  # writing the result failed (StorageError: a full disk)
    ERROR = "error"  # any other pyverity error
    OS = "os"  # an OSError reading the file


# -- daemon to worker --------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    """Build the tree of the file whose descriptor follows, from ``offset`` (with the level-0
    hashes ``leaves`` of the data before it, from a checkpoint)."""

    job_id: int
    alg: int
    block_size: int
    salt: bytes
    snapshot: FileIdentity
    offset: int
    leaves: bytes
    checkpoint_seconds: float
    #: Hashing threads: a lone build may use every CPU; concurrent builds share them.
    threads: int = 1


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Yield:
    job_id: int


@dataclass(frozen=True)
class Exit:
    pass


#: A keyring as it travels to a worker: each certificate's DER bytes and where it came from.
KeyringCertificates = tuple[tuple[bytes, str], ...]


@dataclass(frozen=True)
class SmallItem:
    """One small file of a batch: its build's id, its path (opened by the worker beneath its
    root), the identity it must still have, and the fingerprint of the attribute values its
    row was made from (the worker reads them again from the open file and appraises only
    those)."""

    job_id: int
    path: str
    snapshot: FileIdentity
    attr_fp: bytes


@dataclass(frozen=True)
class SmallBatch:
    """Build and appraise each of ``items`` (paths beneath ``roots``) with the attributes of
    ``namespace`` and the daemon's keyring (None: no keyring). With ``cache_dir``, the daemon's
    tree cache, each tree that appraised is published there unsynced
    (:meth:`pyverity.store.cache.TreeCache.put_unsynced`) rather than sent back."""

    items: tuple[SmallItem, ...]
    roots: tuple[str, ...]
    namespace: str
    keyring: KeyringCertificates | None
    cache_dir: str | None = None


ToWorker = BuildSpec | SmallBatch | Cancel | Yield | Exit


# -- worker to daemon --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    pid: int


@dataclass(frozen=True)
class Progress:
    job_id: int
    offset: int


@dataclass(frozen=True)
class Checkpoint:
    """The level-0 hashes of the data from the previous checkpoint up to ``offset``."""

    job_id: int
    offset: int
    leaves: bytes


@dataclass(frozen=True)
class Stopped:
    job_id: int
    why: StopReason
    offset: int


@dataclass(frozen=True)
class Failed:
    job_id: int
    kind: FailureKind
    message: str


@dataclass(frozen=True)
class Done:
    """The finished build: the descriptor (as bytes) and the tree, to be appraised."""

    job_id: int
    descriptor: bytes
    tree: bytes


@dataclass(frozen=True)
class SmallResult:
    """One file of a :class:`SmallBatch`: the gate's verdict on its tree (``state`` to
    ``digest`` as in :class:`pyverity.protect.gate.Verdict`) with the descriptor and the tree
    bytes, or ``published`` (the entry is in the cache, not synced), or, ``failure`` set, why
    it could not be built (``message``)."""

    job_id: int
    failure: FailureKind | None
    message: str
    state: str = ""
    reason: str = ""
    kind: str = ""
    keyid: int | None = None
    digest: str | None = None
    descriptor: bytes = b""
    tree: bytes = b""
    published: bool = False

    @classmethod
    def of(
        cls, job_id: int, verdict: Verdict, descriptor: bytes, tree: bytes, *, published: bool
    ) -> SmallResult:
        """A verdict as it travels (its ``error`` stays behind: exceptions do not pickle
        reliably, and the daemon needs only the rest)."""
        return cls(
            job_id,
            None,
            verdict.message,
            verdict.state.value,
            verdict.reason.value,
            verdict.kind.value,
            verdict.keyid,
            verdict.digest,
            descriptor,
            tree,
            published,
        )

    def verdict(self) -> Verdict:
        """The verdict :meth:`of` sent."""
        return Verdict(
            VerdictState(self.state),
            Reason(self.reason),
            self.message,
            ProtectionKind(self.kind),
            self.keyid,
            self.digest,
        )


@dataclass(frozen=True)
class BatchDone:
    results: tuple[SmallResult, ...]


FromWorker = Hello | Progress | Checkpoint | Stopped | Failed | Done | BatchDone
