"""What happens at a verified open: fs-verity, then the policy's appraisal and measurement.

Two layers, as in the kernel:

* **fs-verity, whatever the policy says.** A file that carries a valid ``<ns>.verity``
  descriptor or a v3 signature gets a :class:`ReadAnchor`: every read is checked block by block
  against the descriptor's tree. The tree comes from the caller's store (untrusted: checked
  against the root the first time each block is used — a descriptor that does not match the
  content then gives EIO on the blocks that differ), from the kernel's fs-verity (which
  verifies every page), or is built at open and compared with the descriptor through the gate;
  a mismatch, or a malformed descriptor, fails the open with :class:`VerityOpenError` (EIO).
  A v3 signature without a descriptor is anchored on the tree of the content as opened.
* **IMA appraisal, as the policy says** (without a policy: every protected file). The
  declaration and its signature go through :mod:`pyverity.protect.gate` (signature required,
  ``digest_type=verity``, the keyring of the rule), before any hashing; then the content. An
  enforced failure raises the gate's error (the mount's EACCES); a failure that is not
  enforced is logged, and the fs-verity layer still holds. Classic IMA files (no tree) are
  anchored only when appraised: a tree of the very bytes whose whole-file hash matched.

Everything is read from the one open descriptor, never from the path again, and kept for the
life of the handle: an attribute changed while the file is open does not affect it. What the
policy measures is appended to the measurement list (:mod:`.measuring`), also for a failed open.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.errors import Error, FormatError, IntegrityError, Reason
from pyverity.format.descriptor import Descriptor
from pyverity.format.measurelist import DigestField
from pyverity.fs.xattr import VERITY_SUFFIX, attr_name, set_attr
from pyverity.hashing.api import build_tree
from pyverity.policy.context import context_for_fd
from pyverity.protect.attrs import (
    InvalidProtectionError,
    Protection,
    ProtectionKind,
    read_protection,
)
from pyverity.protect.content import hash_and_tree
from pyverity.protect.gate import (
    SignatureCheck,
    Verdict,
    appraisal_result,
    classic_hash_algo,
    compute,
    failure_result,
)
from pyverity.reader.kernelread import kernel_descriptor_of, kernel_enforces
from pyverity.reader.measuring import file_hash_algo, measure_open
from pyverity.reader.options import Access, ReaderOptions
from pyverity.reader.tree import MemoryTree, TreeSource

if TYPE_CHECKING:
    from pyverity.format.merkletree import MerkleTree
    from pyverity.format.params import TreeParams
    from pyverity.keys.keyring import Keyring
    from pyverity.policy.engine import Decision

__all__ = ["ReadAnchor", "StaleError", "VerityOpenError", "check_open"]

log = logging.getLogger(__name__)


class VerityOpenError(IntegrityError):
    """fs-verity refuses the open (EIO on the mount), whatever the policy says: the content
    does not match the file's descriptor, or the descriptor is malformed. ``cause`` is the
    gate's error."""

    def __init__(self, cause: Error) -> None:
        super().__init__(f"fs-verity: {cause}", remedy=cause.remedy)
        self.cause = cause
        self.reason = cause.reason


class StaleError(IntegrityError):
    """The caller saw the file written since its attributes were (the mount's STALE)."""

    reason = Reason.STALE


@dataclass(frozen=True)
class ReadAnchor:
    """What reads of one open file are checked against: a descriptor and its (untrusted) tree.

    Classic IMA files get a tree built at open from the same bytes whose whole-file hash was
    appraised, so their reads are checked block by block too.
    """

    descriptor: Descriptor
    tree: TreeSource
    #: Where the tree came from: ``cache`` or ``inline``; ``kernel``: none needed, the kernel's
    #: fs-verity verifies every page read (see :mod:`pyverity.reader.kernelread`).
    tree_origin: str
    #: Classic IMA files: the whole-file hash that was appraised (what is measured).
    content_digest: DigestField | None = None

    @property
    def fs_verity(self) -> bool:
        """A descriptor or a v3 signature (not a classic value): ``FS_IOC_MEASURE_VERITY``
        answers this descriptor's digest."""
        return self.content_digest is None


def check_open(fd: int, access: Access, options: ReaderOptions) -> ReadAnchor | None:
    """The anchor of the open file ``fd``'s reads; None when it is served unverified (no
    descriptor and no v3 signature, and not an appraised classic file).

    Raises the appraisal's error when it fails and is enforced, and :class:`VerityOpenError`
    when fs-verity refuses the file.
    """
    return _Opening(fd, access, options).run()


class _Opening:
    """One open's checks (kept together so each tree is built at most once)."""

    def __init__(self, fd: int, access: Access, options: ReaderOptions) -> None:
        self.fd = fd
        self.access = access
        self.name = access.path
        self.options = options
        decision: Decision | None = None
        if options.policy is not None:
            ctx = context_for_fd(
                fd, path=access.path, uid=access.uid, gid=access.gid, policy=options.policy
            )
            decision = options.policy.decide(ctx)
        self.decision = decision
        self.appraise = decision.appraise if decision is not None else True
        self.enforce = decision.enforce if decision is not None else options.enforce
        required = (
            decision.signature_required if decision is not None else options.keyring is not None
        )
        self.signature = SignatureCheck.REQUIRE if required else SignatureCheck.IF_KEYRING
        self.verity = decision.verity if decision is not None else False
        self._keyring: Keyring | None = None
        #: What the attributes declare (for the measurement, also when the open fails).
        self.protection: Protection | None = None
        #: The whole-file hash a measure rule without ``digest_type=verity`` records, when
        #: an inline tree build took it in the same pass (see :mod:`.measuring`).
        self.file_hash: DigestField | None = None

    @property
    def keyring(self) -> Keyring | None:
        if self._keyring is None:
            self._keyring = self.options.keyring_for(self.decision)
        return self._keyring

    def run(self) -> ReadAnchor | None:
        anchor: ReadAnchor | None = None
        failure: Error | None = None
        try:
            anchor = self._checks()
        except Error as e:
            failure = e
        decision, measurements = self.decision, self.options.measurements
        if decision is not None and decision.measure and measurements is not None:
            measure_open(
                self.fd,
                self.name,
                decision,
                protection=self.protection,
                anchor=anchor,
                measurements=measurements,
                precomputed=self.file_hash,
                pool=self.options.hash_pool,
                ima_hash=self.options.ima_hash,
            )
        if failure is not None:
            raise failure
        return anchor

    # -- the two layers --------------------------------------------------------------
    def _checks(self) -> ReadAnchor | None:
        try:
            protection = read_protection(self.fd, self.options.xattr_ns)
        except InvalidProtectionError as e:
            if self.appraise:
                self._failed(failure_result(e))
            if e.bad_descriptor:
                raise VerityOpenError(e) from e
            self.protection = e.verity
            # A valid descriptor beside a bad IMA value: fs-verity still holds.
            return self._verity(e.verity, appraised=False) if e.verity is not None else None
        self.protection = protection
        appraised = self.appraise and not self._failed(self._declared(protection))
        if protection.kind is ProtectionKind.CLASSIC:
            return self._classic(protection) if appraised else None
        if not protection.has_tree:
            return None
        return self._verity(protection, appraised=appraised)

    def _declared(self, protection: Protection) -> Verdict:
        """The declaration judged before anything is hashed (and STALE, as the caller saw)."""
        if self.access.stale:
            log.warning("'%s' was written since it was protected (STALE)", self.name)
            stale = StaleError(f"'{self.name}' was written since it was protected (STALE)")
            return failure_result(stale, protection)
        return self._judge(protection, None)

    def _judge(self, protection: Protection, computed: Descriptor | bytes | None) -> Verdict:
        return appraisal_result(
            protection,
            computed,
            self.keyring,
            signature=self.signature,
            verity=self.verity,
            name=self.name,
        )

    def _failed(self, verdict: Verdict) -> bool:
        """Whether the appraisal failed; raises when the failure is enforced."""
        if not verdict.failed:
            return False
        if self.enforce:
            log.warning("appraisal of '%s' failed, access denied: %s", self.name, verdict.message)
            verdict.raise_if_failed()
        log.warning("appraisal of '%s' failed (not enforced): %s", self.name, verdict.message)
        return True

    def _classic(self, protection: Protection) -> ReadAnchor | None:
        try:
            computed = compute(self.fd, protection, keep_tree=True)
        except Error as e:  # e.g. an algorithm hashlib lacks
            self._failed(failure_result(e, protection))
            return None
        if self._failed(self._judge(protection, computed.value)):
            return None
        tree, whole = computed.tree, computed.value
        if tree is None or not isinstance(whole, bytes):  # pragma: no cover - compute's contract
            raise FormatError("a classic file hashed without its tree (caller error)")
        # Reads are then checked against a tree of the very bytes that matched.
        content = DigestField(classic_hash_algo(protection).name, whole, kind="ima")
        return ReadAnchor(tree.descriptor, MemoryTree(tree.tree or b""), "inline", content)

    def _verity(self, protection: Protection, *, appraised: bool) -> ReadAnchor:
        declared = protection.unverified_descriptor
        if declared is None:
            return self._signature_only(protection, appraised=appraised)
        try:
            return self._descriptor_anchor(protection, declared)
        except VerityOpenError as e:
            if appraised:  # the content is what the appraisal had still to check
                self._failed(failure_result(e.cause, protection))
            raise

    def _descriptor_anchor(self, protection: Protection, declared: Descriptor) -> ReadAnchor:
        if kernel_enforces(self.fd, declared):
            # The kernel's fs-verity checks every page against this descriptor's tree.
            return ReadAnchor(declared, MemoryTree(b""), "kernel")
        cached = self._from_store(declared)
        if cached is not None:
            return cached
        tree = self._build(declared.params)
        verdict = appraisal_result(
            protection, tree.descriptor, None, signature=SignatureCheck.IGNORE, name=self.name
        )
        if verdict.error is not None:
            raise VerityOpenError(verdict.error)
        self._put(tree)
        return ReadAnchor(declared, MemoryTree(tree.tree or b""), "inline")

    def _signature_only(self, protection: Protection, *, appraised: bool) -> ReadAnchor:
        """A v3 signature alone: the digest is known once the tree is built (or from the
        kernel, which then verifies every page); reads are checked against that tree.

        Where the kernel cannot give its descriptor back (btrfs), it is rebuilt with the
        signature's parameters when the file is fs-verity: one hash of the file, as the inline
        build it replaces (a second one only when the kernel has other parameters)."""
        params = protection.tree_params()
        enforced = kernel_descriptor_of(self.fd, params)
        if enforced is not None and (
            enforced.params == params and enforced.data_size == protection.data_size
        ):
            if appraised:
                self._failed(self._judge(protection, enforced))
            return ReadAnchor(enforced, MemoryTree(b""), "kernel")
        tree = self._build(params)
        ok = not appraised or not self._failed(self._judge(protection, tree.descriptor))
        if ok:
            self._put(tree)
        decision = self.decision
        if ok and appraised and decision is not None and decision.fix:
            self._fix_descriptor(tree.descriptor)
        return ReadAnchor(tree.descriptor, MemoryTree(tree.tree or b""), "inline")

    # -- trees -----------------------------------------------------------------------
    def _fix_descriptor(self, descriptor: Descriptor) -> None:
        """Mode ``fix``: record the descriptor of content a v3 signature has just vouched for.

        Never for content seen for the first time without a signature (IMA's fix mode trusts
        whatever is there; this one only writes what the signature proved). Later opens then
        find the tree by digest in the cache instead of rebuilding it.
        """
        try:
            set_attr(
                self.fd, attr_name(self.options.xattr_ns, VERITY_SUFFIX), descriptor.to_bytes()
            )
        except Error as e:
            log.warning("fix: could not write the descriptor of '%s': %s", self.name, e)
            return
        log.info("fix: wrote the descriptor of '%s' (its signature verified over it)", self.name)

    def _from_store(self, descriptor: Descriptor) -> ReadAnchor | None:
        """The cached tree for ``descriptor``, asking the daemon for a first-use build on a
        miss."""
        store, options, name = self.options.store, self.options, self.name
        if store is None:
            return None
        alg, digest = descriptor.hash_alg.name, descriptor.digest()
        cached = store.get(alg, digest)
        if cached is not None:
            return ReadAnchor(descriptor, MemoryTree(cached.unverified_tree), "cache")
        if options.first_use_build is None or self.access.source_path is None:
            return None
        t0 = time.monotonic()
        try:
            options.first_use_build(self.access.source_path)
        except Error as e:
            log.info("first-use build of '%s' by the daemon failed (%s): building inline", name, e)
            return None
        cached = store.get(alg, digest)
        if cached is None:
            log.info("the daemon built no tree for '%s': building inline", name)
            return None
        log.info("the daemon built the tree of '%s' in %.3f s", name, time.monotonic() - t0)
        return ReadAnchor(descriptor, MemoryTree(cached.unverified_tree), "cache")

    def _measures_file_hash(self) -> bool:
        decision = self.decision
        return (
            decision is not None
            and decision.measure
            and not decision.verity
            and self.options.measurements is not None
        )

    def _build(self, params: TreeParams) -> MerkleTree:
        t0 = time.monotonic()
        alg = None
        if self._measures_file_hash():
            raw = self.protection.raw_ima if self.protection else None
            alg = file_hash_algo(raw, self.options.ima_hash)
        if alg is not None and alg.hashlib_name is not None:
            # One read for both: the tree compared with the descriptor, and the whole-file
            # hash the measurement records (of the same, then verified, bytes).
            whole, tree = hash_and_tree(self.fd, alg, params)
            self.file_hash = DigestField(alg.name, whole, kind="ima")
        else:
            tree = build_tree(self.fd, params)
        elapsed = time.monotonic() - t0
        log.info("built the Merkle tree of '%s' inline in %.3f s", self.name, elapsed)
        if self.options.on_inline_build is not None:
            self.options.on_inline_build(elapsed)
        return tree

    def _put(self, tree: MerkleTree) -> None:
        if self.options.store is not None:
            self.options.store.put(tree)
