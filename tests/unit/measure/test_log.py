"""MeasurementLog: append-only, one writer, crash recovery, PCR values kept apart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pyverity.errors import StorageError
from pyverity.format.measurelist import DigestField, MeasurementRecord, parse_binary
from pyverity.measure import MeasurementLog, PcrValues, pcr_path, read_list


def _digest(n: int, kind: str = "verity") -> DigestField:
    return DigestField("sha256", n.to_bytes(32, "big"), kind)


def _fill(path: Path, count: int, template: str = "ima-sigv2") -> list[MeasurementRecord]:
    with MeasurementLog.open(path, default_template=template) as log:
        for i in range(count):
            log.append(_digest(i), f"/f{i}", signature=b"\x06\x03" + bytes([i]))
        return list(log.records)


def test_records_are_the_kernel_binary_format(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 3)
    assert parse_binary(path.read_bytes()).records == tuple(recs)
    assert recs[0].file_name == "boot_aggregate"
    assert recs[0].digest == DigestField("sha256", bytes(32), "ima")
    assert [r.template_name for r in recs] == ["ima-sigv2"] * 4
    assert recs[2].signature == b"\x06\x03\x01"


def test_pcrs_kept_apart_and_match_a_replay(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 5)
    stored = PcrValues.from_json(pcr_path(path).read_text())
    assert stored.count == 6
    assert stored.size == path.stat().st_size
    assert stored.values == PcrValues.replay(recs).values
    assert set(stored.banks) == {"sha1", "sha256"}


def test_one_entry_per_file_and_digest(tmp_path: Path) -> None:
    with MeasurementLog.open(tmp_path / "list", boot_aggregate=False) as log:
        assert log.append(_digest(1), "/a") is not None
        assert log.append(_digest(1), "/a") is None
        assert log.append(_digest(2), "/a") is not None  # new content: new entry
        assert log.append(_digest(1), "/b") is not None
        assert log.append(_digest(1), "/a", pcr=11) is not None
        assert len(log) == 4
    with MeasurementLog.open(tmp_path / "list") as log:  # dedup survives a reopen
        assert log.append(_digest(2), "/a") is None
        assert len(log) == 4  # no boot_aggregate added to a non-empty list


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list"
    with MeasurementLog.open(path), pytest.raises(StorageError, match="another writer"):
        MeasurementLog.open(path)
    MeasurementLog.open(path).close()  # free again after close


def test_concurrent_appends_are_serialized(tmp_path: Path) -> None:
    path = tmp_path / "list"
    with MeasurementLog.open(path, boot_aggregate=False) as log:

        def work(base: int) -> None:
            for i in range(20):
                log.append(_digest(base + i), f"/t{base + i}")
                log.append(_digest(base + i), f"/t{base + i}")

        threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(log) == 80
    snap = read_list(path)
    assert len(snap.records) == 80
    assert snap.pcrs is not None
    assert snap.pcrs.values == PcrValues.replay(snap.records).values


def test_torn_tail_is_repaired_and_nothing_earlier_lost(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 3)
    good = path.read_bytes()
    extra = MeasurementRecord.for_file("ima-ng", _digest(99), "/torn").to_bytes()
    for cut in (1, 10, len(extra) - 1):
        path.write_bytes(good + extra[:cut])
        assert read_list(path).tail_problem is not None
        with MeasurementLog.open(path) as log:
            assert list(log.records) == recs
        assert path.read_bytes() == good
    path.write_bytes(good + bytes(57))  # a zero-filled tail (delayed allocation after a crash)
    with MeasurementLog.open(path) as log:
        assert len(log) == len(recs)
        assert log.append(_digest(7), "/after") is not None
    assert read_list(path).tail_problem is None


def test_record_written_but_pcrs_not_yet_published(tmp_path: Path) -> None:
    path = tmp_path / "list"
    _fill(path, 2)
    before = pcr_path(path).read_text()
    with MeasurementLog.open(path) as log:
        log.append(_digest(50), "/late")
        after = log.pcrs
    pcr_path(path).write_text(before)  # as if the crash came between the two fsyncs
    with MeasurementLog.open(path) as log:
        assert log.pcrs == after
    assert PcrValues.from_json(pcr_path(path).read_text()) == after


def test_removed_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 3)
    data = path.read_bytes()
    last = len(recs[-1].to_bytes())
    path.write_bytes(data[:-last])
    with pytest.raises(StorageError, match="entries were removed"):
        MeasurementLog.open(path)


def test_changed_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 3)
    raw = b"".join(r.to_bytes() for r in (recs[0], recs[2], recs[1], recs[3]))
    path.write_bytes(raw)  # reordered
    with pytest.raises(StorageError, match="does not replay"):
        MeasurementLog.open(path)


def test_corruption_in_the_middle_is_not_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "list"
    _fill(path, 3)
    raw = bytearray(path.read_bytes())
    raw[30] = ord("X")  # the first record's template name
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="corrupt at byte 0"):
        MeasurementLog.open(path)
    assert path.read_bytes() == bytes(raw)  # nothing truncated


def test_list_without_pcr_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list"
    _fill(path, 1)
    pcr_path(path).unlink()
    with pytest.raises(StorageError, match="no PCR values"):
        MeasurementLog.open(path)


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = MeasurementLog.open(tmp_path / "list")
    log.close()
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(_digest(1), "/x")


def test_templates(tmp_path: Path) -> None:
    with MeasurementLog.open(tmp_path / "list", default_template="ima-ng") as log:
        ng = log.append(_digest(1, "ima"), "/ng", signature=b"\x03dropped")
        sig = log.append(_digest(2, "ima"), "/sig", template="ima-sig", signature=b"\x03\x02")
        assert ng is not None
        assert sig is not None
        assert ng.template_name == "ima-ng"
        assert len(ng.fields) == 2
        assert sig.signature == b"\x03\x02"
    with pytest.raises(StorageError, match="cannot be written"):
        MeasurementLog.open(tmp_path / "other", default_template="ima-buf")


def test_unacknowledged_garbage_tail_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "list"
    recs = _fill(path, 2)
    good = path.read_bytes()
    partial = MeasurementRecord.for_file("ima-ng", _digest(9), "/p").to_bytes()
    # A record whose header reached the disk but whose data pages did not (zeros).
    path.write_bytes(good + partial[:40] + bytes(len(partial) - 40))
    with MeasurementLog.open(path) as log:
        assert list(log.records) == recs
    assert path.read_bytes() == good


def test_a_file_that_is_not_a_list_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a measurement list\n" * 3)
    with pytest.raises(StorageError, match="corrupt at byte 0"):
        MeasurementLog.open(path)
    assert path.read_bytes().startswith(b"these are my notes")


def test_crash_during_the_first_append_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "list"
    first = MeasurementRecord.for_file("ima-ng", _digest(0), "boot_aggregate").to_bytes()
    path.write_bytes(first[:50])  # no LIST.pcrs was ever published
    with MeasurementLog.open(path) as log:
        assert len(log) == 1
        assert log.records[0].file_name == "boot_aggregate"
