"""Recording an open in the measurement list, as the policy's ``measure`` rule says."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyverity.errors import Error
from pyverity.format.ima import algo_by_id, kernel_algo_for_verity
from pyverity.format.measurelist import DigestField
from pyverity.protect.attrs import Protection, ProtectionKind
from pyverity.protect.sign import whole_file_hash

if TYPE_CHECKING:
    from pyverity.format.descriptor import Descriptor
    from pyverity.measure.log import MeasurementLog
    from pyverity.policy.engine import Decision

__all__ = ["measure_open"]

log = logging.getLogger(__name__)

#: Algorithm for measuring files that carry no verity digest (the kernel's default).
_MEASURE_ALGO = 4  # sha256 in the kernel's numbering


def measure_open(
    fd: int,
    name: str,
    decision: Decision,
    *,
    protection: Protection | None,
    verified: Descriptor | None,
    content_digest: DigestField | None,
    measurements: MeasurementLog,
) -> None:
    """Record the first open of (name, digest). The digest is the fs-verity digest reads are
    checked against (``verified``), else the declared one (IMA measures what it collected even
    when appraisal then fails), or for a file without a descriptor a sha256 of its content (a
    v3 signature, which cannot be checked against a content hash, is then left out of the
    entry). A classic file appraised at open is measured by the whole-file hash that matched
    (``content_digest``). Under a ``digest_type=verity`` rule a file without a descriptor is
    not measured, as in the kernel. A failure to measure is logged, never raised."""
    signature = protection.raw_ima if protection is not None and protection.raw_ima else b""
    try:
        if content_digest is not None:
            measurements.append(
                content_digest, name, template=decision.template, signature=signature,
                pcr=decision.pcr,
            )  # fmt: skip
            return
        descriptor = verified
        if descriptor is None and protection is not None:
            descriptor = protection.unverified_descriptor
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
