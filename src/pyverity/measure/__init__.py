"""The measurement list: record what was opened, in the kernel's format, and replay it.

API (spec/ima.md §4; DESIGN.md §7):

- :class:`MeasurementLog` — the single writer of a list file::

      log = MeasurementLog.open("/var/lib/pyverity/measurements", default_template="ima-sigv2")
      rec = log.append(DigestField("sha256", digest, kind="verity"), "/mnt/f.txt",
                       template="ima-sigv2", signature=ima_xattr_value)
      # rec is None when (PCR, name, digest) was already measured
      log.records, log.pcrs          # read back: records, PcrValues (sha1 + sha256, PCR 10)
      log.close()

  ``append`` writes exactly the kernel's ``binary_runtime_measurements`` record (templates
  ``ima-ng``, ``ima-ngv2``, ``ima-sig``, ``ima-sigv2``), fsyncs it, then publishes the new
  PCR values in ``LIST.pcrs`` (kept apart from the list), and the value after each entry in
  ``LIST.chain`` (so ``verify`` can name a moved entry). One writer per list (``LIST.lock``);
  a torn tail left by a crash is repaired on open. A fresh list starts with a zero
  ``boot_aggregate`` entry (``boot_aggregate=False`` to omit it).
- :func:`read_list` — a consistent snapshot of any list (ours or a kernel's) with its stored
  PCR values, if any.
- :class:`PcrValues` — software PCR banks; ``replay``, ``extend``, JSON and evmctl forms.
- :func:`verify_result` / :func:`verify_list` — template hashes, replay against expected PCR
  values, signatures of ``ima-sig``/``ima-sigv2`` entries against a keyring.

The record format itself (field encodings, template hashes, binary and ascii forms) is the
pure :mod:`pyverity.format.measurelist`.
"""

from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.measure.log import ListSnapshot, MeasurementLog, chain_path, pcr_path, read_list
from pyverity.measure.pcr import BANKS, PcrValues
from pyverity.measure.verify import EntryProblem, VerifyReport, verify_list, verify_result

__all__ = [
    "BANKS",
    "DigestField",
    "EntryProblem",
    "ListSnapshot",
    "MeasurementLog",
    "MeasurementRecord",
    "PcrValues",
    "VerifyReport",
    "chain_path",
    "pcr_path",
    "read_list",
    "verify_list",
    "verify_result",
]
