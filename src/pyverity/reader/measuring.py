"""Recording an open in the measurement list, as the policy's ``measure`` rule says.

What an entry holds is what the kernel's ``ima_collect_measurement`` collects (spec/ima.md
§1.4, §3.2) and its template fields render (``ima_eventdigest_ng_init``,
``ima_eventdigest_ngv2_init``, ``ima_eventsig_init``):

- under a rule **with** ``digest_type=verity``: the fs-verity digest, in its own algorithm
  (``ima-ngv2``/``ima-sigv2`` show it as ``verity:<alg>:<hex>``); a file without one is not
  measured ("no-verity-digest");
- under any other rule: the **whole-file hash** of the content, in the algorithm the file's
  ``security.ima`` value names (a v2 or v3 signature's ``hash_algo``, a 0x04 hash's algorithm,
  a 0x01 hash's sha1 or md5), else ``ima_hash=``'s (sha256 by default); ``ima-ngv2``
  shows it as ``ima:<alg>:<hex>``, ``ima-ng``/``ima-sig`` as ``<alg>:<hex>``, whatever else
  the file carries;
- the ``sig`` field (``ima-sig``, ``ima-sigv2``): the whole ``security.ima`` value when it is
  a signature (type 0x03 or 0x06), else empty.

The whole-file hash of a file that has an fs-verity digest is a hash of *verified* content:
taken in the same pass that builds the tree compared with the descriptor (the open passes it
in), over reads the kernel's fs-verity checks, or over blocks checked against the cached tree.
It is remembered by that fs-verity digest, which fixes the content, so later opens of the same
content do not read it again; a file without one is remembered by its identity (device,
inode, size, mtime), as the kernel remembers a measurement until the inode changes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from pyverity.errors import Error, FileChangedError
from pyverity.format.ima import (
    HASH_ALGO_LAST,
    HashAlgoId,
    KernelHashAlgo,
    XattrType,
    algo_by_id,
    algo_named,
    kernel_algo_for_verity,
)
from pyverity.format.measurelist import DigestField
from pyverity.fs.openfile import FileIdentity, identity
from pyverity.fs.readexact import pread_exact
from pyverity.protect.sign import whole_file_hash
from pyverity.reader.verifier import BlockVerifier

if TYPE_CHECKING:
    from collections.abc import Hashable

    from pyverity.format.descriptor import Descriptor
    from pyverity.measure.log import MeasurementLog
    from pyverity.policy.engine import Decision
    from pyverity.protect.attrs import Protection
    from pyverity.reader.hashpool import HashPool
    from pyverity.reader.opening import ReadAnchor

__all__ = ["FILE_HASHES", "FileHashCache", "file_hash_algo", "measure_open", "signature_field"]

log = logging.getLogger(__name__)

#: The kernel's default file hash (``ima_hash=``, ``CONFIG_IMA_DEFAULT_HASH``).
DEFAULT_FILE_HASH = HashAlgoId.SHA256

_CHUNK = 4 << 20


def file_hash_algo(raw_ima: bytes | None, default: str = "sha256") -> KernelHashAlgo:
    """The algorithm the kernel hashes a file's content with, from its raw ``security.ima``
    value (``ima_get_hash_algo``, spec/ima.md §1.4); ``default`` is ``ima_hash=``'s."""
    named = algo_named(default)
    algo_id: int = named.id if named is not None else DEFAULT_FILE_HASH
    value = raw_ima or b""
    if len(value) >= 2:
        kind = value[0]
        if kind in (XattrType.IMA_VERITY_DIGSIG, XattrType.EVM_IMA_XATTR_DIGSIG):
            version = 3 if kind == XattrType.IMA_VERITY_DIGSIG else 2
            if value[1] == version and len(value) > 9 and value[2] < HASH_ALGO_LAST:
                algo_id = value[2]
        elif kind == XattrType.IMA_XATTR_DIGEST_NG:
            if value[1] < HASH_ALGO_LAST:
                algo_id = value[1]
        elif kind == XattrType.IMA_XATTR_DIGEST:
            if len(value) == 17 or (len(value) == 21 and not any(value[17:21])):
                algo_id = HashAlgoId.MD5
            elif len(value) == 21:
                algo_id = HashAlgoId.SHA1
    return algo_by_id(algo_id)


def signature_field(raw_ima: bytes | None) -> bytes:
    """The ``sig`` field: the whole value when it is a v2 or v3 signature, else empty."""
    if raw_ima and raw_ima[0] in (XattrType.EVM_IMA_XATTR_DIGSIG, XattrType.IMA_VERITY_DIGSIG):
        return raw_ima
    return b""


class FileHashCache:
    """Whole-file hashes already taken, newest last; at most ``size`` of them. Thread-safe."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._hashes: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        #: Hashes taken (a read of the whole file), for tests and metrics.
        self.computed = 0

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._hashes.get(key)
            if value is not None:
                self._hashes.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes, *, computed: bool = False) -> None:
        """Remember ``value``; ``computed``: it was just taken by a read of the file."""
        with self._lock:
            self.computed += computed
            self._hashes[key] = value
            self._hashes.move_to_end(key)
            while len(self._hashes) > self._size:
                self._hashes.popitem(last=False)

    def clear(self) -> None:
        """Forget every hash (and reset :attr:`computed`)."""
        with self._lock:
            self._hashes.clear()
            self.computed = 0


#: The process's whole-file hashes (shared by every mount and open in it).
FILE_HASHES = FileHashCache()


def verity_key(descriptor: Descriptor, alg: KernelHashAlgo) -> tuple[str, str, bytes, int]:
    """The cache key of the content an fs-verity digest fixes, hashed with ``alg``."""
    return ("verity", descriptor.hash_alg.name, descriptor.digest(), alg.id)


def _identity_key(fd: int, alg: KernelHashAlgo) -> tuple[str, FileIdentity, int]:
    return ("file", identity(os.fstat(fd)), alg.id)


def _verified_hash(
    fd: int, anchor: ReadAnchor, alg: KernelHashAlgo, name: str, pool: HashPool | None
) -> bytes:
    """The whole-file hash of ``fd``'s content, every block checked against the anchor's
    tree on the way (the kernel's fs-verity checks the pages of a ``kernel`` anchor)."""
    if anchor.tree_origin == "kernel":
        return whole_file_hash(fd, alg)
    h = alg.new()  # UnsupportedError for an algorithm hashlib lacks here
    verifier = BlockVerifier(anchor.descriptor, anchor.tree, name=name, pool=pool)
    bs = verifier.block_size
    size = verifier.data_size
    span = max(bs, _CHUNK - _CHUNK % bs)
    offset = 0
    while offset < size:
        data = pread_exact(fd, min(span, size - offset), offset)
        if not data:
            break
        h.update(data)
        padded = data + bytes(-len(data) % bs)
        verifier.verify_blocks(offset // bs, padded)
        offset += len(data)
    if offset != size:
        raise FileChangedError("file changed while it was being hashed")
    return h.digest()


def _file_digest(
    fd: int,
    name: str,
    alg: KernelHashAlgo,
    *,
    anchor: ReadAnchor | None,
    precomputed: DigestField | None,
    pool: HashPool | None,
) -> DigestField:
    """The whole-file hash to record (``kind="ima"``), from the cache when it can be."""
    classic = anchor.content_digest if anchor is not None else None
    if classic is not None and classic.algo == alg.name:
        return classic  # the appraised classic hash: the same bytes
    if precomputed is not None and precomputed.algo == alg.name:
        if anchor is not None:
            FILE_HASHES.put(verity_key(anchor.descriptor, alg), precomputed.digest)
        return precomputed
    if anchor is not None and anchor.fs_verity:
        key: Hashable = verity_key(anchor.descriptor, alg)
    else:
        key = _identity_key(fd, alg)
    digest = FILE_HASHES.get(key)
    if digest is None:
        if anchor is not None and anchor.fs_verity:
            digest = _verified_hash(fd, anchor, alg, name, pool)
        else:
            digest = whole_file_hash(fd, alg)
        FILE_HASHES.put(key, digest, computed=True)
    return DigestField(alg.name, digest, kind="ima")


def measure_open(
    fd: int,
    name: str,
    decision: Decision,
    *,
    protection: Protection | None,
    anchor: ReadAnchor | None,
    measurements: MeasurementLog,
    precomputed: DigestField | None = None,
    pool: HashPool | None = None,
    ima_hash: str = "sha256",
) -> None:
    """Record the first open of (name, digest), as the kernel would (see the module's doc).

    ``anchor`` is what the open's reads are checked against (None when the open failed or
    the file is served unverified); under a ``digest_type=verity`` rule its digest is
    recorded, else the declared one (IMA measures what it collected even when appraisal then
    fails). ``precomputed`` is a whole-file hash the open already took while building the
    tree it compared with the descriptor; ``ima_hash`` the algorithm for a file whose
    ``security.ima`` names none. A failure to measure is logged, never raised.
    """
    raw_ima = protection.raw_ima if protection is not None else None
    signature = signature_field(raw_ima)
    try:
        if decision.verity:
            descriptor = anchor.descriptor if anchor is not None and anchor.fs_verity else None
            if descriptor is None and protection is not None:
                descriptor = protection.unverified_descriptor
            if descriptor is None:
                # As the kernel: a digest_type=verity rule on a file without an fs-verity
                # digest records nothing ("no-verity-digest").
                log.info("not measuring '%s': no fs-verity digest (no-verity-digest)", name)
                return
            algo = kernel_algo_for_verity(descriptor.hash_algorithm).name
            digest = DigestField(algo, descriptor.digest(), kind="verity")
        else:
            alg = file_hash_algo(raw_ima, ima_hash)
            digest = _file_digest(fd, name, alg, anchor=anchor, precomputed=precomputed, pool=pool)
        measurements.append(
            digest, name, template=decision.template, signature=signature, pcr=decision.pcr
        )
    except (Error, OSError) as e:
        # As the kernel: content whose fs-verity check fails (EIO) gets no entry.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        log.warning("could not measure '%s': %s", name, reason)
