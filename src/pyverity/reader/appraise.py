"""Appraisal at open: policy → attributes → signature → descriptor → a tree to check reads with.

Everything is read from the one open descriptor, never from the path again, and kept for the
life of the handle: an attribute changed while the file is open does not affect it. The
signature is checked here, against the keyring, never taken from the daemon's word. The tree
comes from the caller's store (untrusted: checked block by block on read, and discarded when a
block fails), or is built inline — the time it took is logged — and compared with the
descriptor before use. What the policy measures is appended to the measurement list.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pyverity.errors import Error, IntegrityError, SignatureError
from pyverity.format.descriptor import Descriptor
from pyverity.format.ima import algo_by_id, kernel_algo_for_verity
from pyverity.format.measurelist import DigestField
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import VERITY_SUFFIX, attr_name, set_attr
from pyverity.hashing.api import build_tree
from pyverity.hashing.result import MerkleTree
from pyverity.keys.keyring import Keyring
from pyverity.measure.log import MeasurementLog
from pyverity.policy.context import context_for_fd
from pyverity.policy.engine import Decision, Policy
from pyverity.protect.attrs import Protection, ProtectionKind, read_protection
from pyverity.protect.content import hash_and_tree
from pyverity.protect.gate import (
    NotProtectedError,
    classic_hash_algo,
    verify_declared_signature,
    verify_protection,
)
from pyverity.protect.sign import whole_file_hash
from pyverity.reader.kernelread import kernel_descriptor_of, kernel_enforces
from pyverity.reader.pool import HashPool
from pyverity.reader.tree import MemoryTree, TreeSource

__all__ = ["Appraisal", "ReaderOptions", "TreeProvider", "appraise_open"]

log = logging.getLogger(__name__)

#: Algorithm for measuring files that carry no verity digest (the kernel's default).
_MEASURE_ALGO = 4  # sha256 in the kernel's numbering


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
    policy: Policy | None = None
    #: Trusted certificates (rules with ``keyring=`` name their own directory).
    keyring: Keyring | None = None
    #: Without a policy: deny a failed appraisal (True) or log it and serve unverified.
    enforce: bool = True
    #: Where first opens are recorded, when the policy measures them.
    measurements: MeasurementLog | None = None
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
            ring = Keyring.from_directory(directory)
            self._keyrings[directory] = ring
        return ring


@dataclass(frozen=True)
class Appraisal:
    """What reads of one open file are checked against: a descriptor and its (untrusted) tree.

    Classic IMA files get a tree built at open from the same bytes whose whole-file hash was
    appraised, so their reads are checked block by block too.
    """

    descriptor: Descriptor | None
    tree: TreeSource
    #: Where the tree came from: ``cache`` or ``inline``; ``kernel``: none needed, the kernel's
    #: fs-verity verifies every page read (see :mod:`pyverity.reader.kernelread`).
    tree_origin: str
    #: Classic IMA files: the whole-file hash that was appraised (what is measured).
    content_digest: DigestField | None = None


@dataclass(frozen=True)
class Access:
    """Who opens the file, for the policy's conditions (default: this process)."""

    path: str
    uid: int | None = None
    gid: int | None = None
    #: The file's own path (the backing file under a mount), for the daemon's first-use build.
    source_path: str | None = None


def appraise_open(fd: int, access: Access, options: ReaderOptions) -> Appraisal | None:
    """Appraise the open file ``fd``; None when it is to be served unverified.

    Unverified means: the policy does not appraise it, or appraisal failed and is not
    enforced (logged). An enforced failure raises the :class:`~pyverity.errors.Error`.
    """
    decision = None
    if options.policy is not None:
        ctx = context_for_fd(
            fd, path=access.path, uid=access.uid, gid=access.gid, policy=options.policy
        )
        decision = options.policy.decide(ctx)
    appraise = decision.appraise if decision is not None else True
    enforce = decision.enforce if decision is not None else options.enforce
    appraisal: Appraisal | None = None
    protection: Protection | None = None
    failure: Error | None = None
    try:
        protection = read_protection(fd, options.xattr_ns)
        if appraise:
            appraisal = _appraise(fd, protection, access, decision, options)
    except Error as e:
        failure = e
    if decision is not None and decision.measure and options.measurements is not None:
        _measure(
            fd,
            access.path,
            decision,
            protection=protection,
            appraisal=appraisal,
            measurements=options.measurements,
        )
    if failure is not None:
        if enforce:
            log.warning("appraisal of '%s' failed, access denied: %s", access.path, failure)
            raise failure
        log.warning("appraisal of '%s' failed (not enforced): %s", access.path, failure)
        return None
    if appraisal is None or appraisal.descriptor is None:
        return None
    return appraisal


def _appraise(
    fd: int,
    protection: Protection,
    access: Access,
    decision: Decision | None,
    options: ReaderOptions,
) -> Appraisal:
    name = access.path
    kind = protection.kind
    keyring = options.keyring_for(decision)
    sig_required = decision.signature_required if decision is not None else keyring is not None
    verity_required = decision.verity if decision is not None else False
    sig = protection.signature
    if kind is ProtectionKind.NONE:
        raise NotProtectedError(
            f"'{name}' is not protected (no {options.xattr_ns}.verity or .ima attribute)",
            remedy="protect it with `pyverity enable` or `pyverity sign`",
        )
    if sig_required and sig is None:
        raise SignatureError(f"'{name}' carries no signature, and the policy requires one")
    if kind is ProtectionKind.CLASSIC:
        if verity_required:
            raise SignatureError(
                f"'{name}': a verity signature is required (verity-signature-required)"
            )
        alg = classic_hash_algo(protection)
        computed, tree = hash_and_tree(fd, alg)
        verify_protection(protection, computed, keyring)
        # Reads are then checked against a tree of the very bytes that matched.
        content = DigestField(alg.name, computed, kind="ima")
        return Appraisal(tree.descriptor, MemoryTree(tree.tree or b""), "inline", content)
    descriptor = protection.unverified_descriptor
    if descriptor is None:
        enforced = kernel_descriptor_of(fd)
        if enforced is not None:
            # Signature only, fs-verity on: the signature is checked over the kernel's digest,
            # which verifies every page read against that descriptor's tree (kernelread).
            verify_protection(protection, enforced, keyring)
            return Appraisal(enforced, MemoryTree(b""), "kernel")
        # Signature only: the digest is known after a build; the signature is checked over it.
        tree = _build(fd, protection.tree_params(), name, options)
        verify_protection(protection, tree.descriptor, keyring)
        _put(options, tree)
        if decision is not None and decision.fix:
            _fix_descriptor(fd, tree.descriptor, name, options)
        return Appraisal(tree.descriptor, MemoryTree(tree.tree or b""), "inline")
    if sig is not None and (keyring is not None or sig_required):
        verify_declared_signature(protection, keyring)
    elif sig is not None:
        log.info("'%s' is signed but no keyring was given: checked against its descriptor", name)
    if kernel_enforces(fd, descriptor):
        # The kernel's fs-verity checks every page against this descriptor's tree (kernelread).
        return Appraisal(descriptor, MemoryTree(b""), "kernel")
    cached = _from_store(descriptor, access, options)
    if cached is not None:
        return cached
    tree = _build(fd, descriptor.params, name, options)
    if tree.descriptor.data_size != descriptor.data_size or not hmac.compare_digest(
        tree.descriptor.root_hash, descriptor.root_hash
    ):
        raise IntegrityError(
            f"'{name}': content does not match its descriptor (root hash differs)",
            remedy="the file changed since it was protected; sign or enable it again",
        )
    _put(options, tree)
    return Appraisal(descriptor, MemoryTree(tree.tree or b""), "inline")


def _fix_descriptor(fd: int, descriptor: Descriptor, name: str, options: ReaderOptions) -> None:
    """Mode ``fix``: record the descriptor of content a v3 signature has just vouched for.

    Never for content seen for the first time without a signature (IMA's fix mode trusts
    whatever is there; this one only writes what the signature proved). Later opens then find
    the tree by digest in the cache instead of rebuilding it.
    """
    try:
        set_attr(fd, attr_name(options.xattr_ns, VERITY_SUFFIX), descriptor.to_bytes())
    except Error as e:
        log.warning("fix: could not write the descriptor of '%s': %s", name, e)
        return
    log.info("fix: wrote the descriptor of '%s' (its signature verified over it)", name)


def _from_store(descriptor: Descriptor, access: Access, options: ReaderOptions) -> Appraisal | None:
    """The cached tree for ``descriptor``, asking the daemon for a first-use build on a miss."""
    store = options.store
    if store is None:
        return None
    alg, digest = descriptor.hash_alg.name, descriptor.digest()
    cached = store.get(alg, digest)
    if cached is not None:
        return Appraisal(descriptor, MemoryTree(cached.unverified_tree), "cache")
    if options.first_use_build is None or access.source_path is None:
        return None
    t0 = time.monotonic()
    try:
        options.first_use_build(access.source_path)
    except Error as e:
        log.info(
            "first-use build of '%s' by the daemon failed (%s): building inline", access.path, e
        )
        return None
    cached = store.get(alg, digest)
    if cached is None:
        log.info("the daemon built no tree for '%s': building inline", access.path)
        return None
    log.info("the daemon built the tree of '%s' in %.3f s", access.path, time.monotonic() - t0)
    return Appraisal(descriptor, MemoryTree(cached.unverified_tree), "cache")


def _build(fd: int, params: TreeParams, name: str, options: ReaderOptions) -> MerkleTree:
    t0 = time.monotonic()
    tree = build_tree(fd, params)
    elapsed = time.monotonic() - t0
    log.info("built the Merkle tree of '%s' inline in %.3f s", name, elapsed)
    if options.on_inline_build is not None:
        options.on_inline_build(elapsed)
    return tree


def _put(options: ReaderOptions, tree: MerkleTree) -> None:
    if options.store is not None:
        options.store.put(tree)


def _measure(
    fd: int,
    name: str,
    decision: Decision,
    *,
    protection: Protection | None,
    appraisal: Appraisal | None,
    measurements: MeasurementLog,
) -> None:
    """Record the first open of (name, digest). The digest is the fs-verity digest (verified,
    else the declared one, as IMA measures what it collected even when appraisal then fails),
    or for a file without a descriptor a sha256 of its content (a v3 signature, which cannot
    be checked against a content hash, is then left out of the entry). Under a
    ``digest_type=verity`` rule a file without a descriptor is not measured, as in the kernel."""
    try:
        if appraisal is not None and appraisal.content_digest is not None:
            measurements.append(
                appraisal.content_digest,
                name,
                template=decision.template,
                signature=protection.raw_ima or b"" if protection is not None else b"",
                pcr=decision.pcr,
            )
            return
        descriptor = appraisal.descriptor if appraisal is not None else None
        if descriptor is None and protection is not None:
            descriptor = protection.unverified_descriptor
        signature = protection.raw_ima if protection is not None and protection.raw_ima else b""
        if descriptor is not None:
            algo = kernel_algo_for_verity(descriptor.hash_algorithm).name
            digest = DigestField(algo, descriptor.digest(), kind="verity")
        elif decision.verity:
            # As the kernel: a digest_type=verity rule on a file without an fs-verity digest
            # records nothing ("no-verity-digest").
            log.info("not measuring '%s': no fs-verity digest (no-verity-digest)", name)
            return
        else:
            alg = algo_by_id(_MEASURE_ALGO)
            digest = DigestField(alg.name, whole_file_hash(fd, alg), kind="ima")
            if protection is not None and protection.kind is not ProtectionKind.CLASSIC:
                signature = b""
        measurements.append(
            digest, name, template=decision.template, signature=signature, pcr=decision.pcr
        )
    except Error as e:
        log.warning("could not measure '%s': %s", name, e)
