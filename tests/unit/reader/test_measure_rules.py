"""What a measure rule records at open, with the kernel's meaning of ``digest_type=verity``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyverity
from pyverity.measure.log import MeasurementLog
from pyverity.policy.engine import Policy
from tests.unit.reader.helpers import OPTIONS, protect

VERITY_RULE = "measure func=FILE_CHECK mask=MAY_READ digest_type=verity template=ima-ngv2\n"


def _names(log: MeasurementLog) -> list[str]:
    return [r.file_name for r in log.records[1:]]  # after boot_aggregate


def test_verity_rule_measures_protected_files_only(tmp_path: Path) -> None:
    tree = protect(tmp_path / "signed", b"protected content")
    (tmp_path / "plain").write_bytes(b"no attribute")
    log = MeasurementLog.open(tmp_path / "list")
    options = replace(OPTIONS, measurements=log)
    policy = Policy.parse(VERITY_RULE)
    for name in ("signed", "plain", "signed"):
        with pyverity.open(tmp_path / name, policy=policy, options=options) as f:
            f.read()
    # The kernel records nothing for a file without an fs-verity digest under a verity rule
    # ("no-verity-digest"), and records each (file, digest) once.
    assert _names(log) == [str(tmp_path / "signed")]
    digest = log.records[1].digest
    assert digest is not None
    assert digest.digest == tree.file_digest().digest


def test_plain_rule_measures_a_content_hash(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"no attribute")
    log = MeasurementLog.open(tmp_path / "list")
    options = replace(OPTIONS, measurements=log)
    policy = Policy.parse("measure func=FILE_CHECK mask=MAY_READ template=ima-ng\n")
    with pyverity.open(tmp_path / "plain", policy=policy, options=options) as f:
        assert f.read() == b"no attribute"
    assert _names(log) == [str(tmp_path / "plain")]
