from __future__ import annotations

from pathlib import Path

from pyverity.measure import DigestField, MeasurementLog, read_list, verify_list


def test_append_read_back_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "list"
    with MeasurementLog.open(path, default_template="ima-sigv2") as log:
        rec = log.append(DigestField("sha256", bytes(32), "verity"), "/a b")
        assert rec is not None
        assert log.append(DigestField("sha256", bytes(32), "verity"), "/a b") is None
        assert len(log) == 2  # boot_aggregate + one file
        pcrs = log.pcrs
    snap = read_list(path)
    assert snap.records[1] == rec
    assert snap.pcrs == pcrs
    assert verify_list(snap.records, expected=snap.pcrs).ok
