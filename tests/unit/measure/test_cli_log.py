"""pyverity log show|verify|pcrs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.format.measurelist import DigestField
from pyverity.measure import MeasurementLog, pcr_path
from tests.unit.measure.kernel_vectors import kernel_vectors_dir


@pytest.fixture
def our_list(tmp_path: Path) -> Path:
    path = tmp_path / "list"
    with MeasurementLog.open(path, default_template="ima-sigv2") as log:
        for i in range(3):
            log.append(DigestField("sha256", bytes([i]) * 32, "verity"), f"/f {i}")
    return path


def test_show_is_the_ascii_list(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "show", str(our_list)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[1].startswith("10 ")
    assert out[2].endswith(" ima-sigv2 verity:sha256:" + "01" * 32 + " /f_1 ")


def test_show_json(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "show", "--json", str(our_list)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[3]["name"] == "/f_2"
    assert doc[3]["digest"] == "verity:sha256:" + "02" * 32


def test_kernel_show_matches_kernel_ascii(capsys: pytest.CaptureFixture[str]) -> None:
    d = kernel_vectors_dir()
    assert main(["log", "show", str(d / "binary_runtime_measurements")]) == 0
    assert capsys.readouterr().out == (d / "ascii_runtime_measurements").read_text()


@pytest.mark.parametrize("name", ["binary_runtime_measurements", "ascii_runtime_measurements"])
def test_verify_kernel_lists(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = kernel_vectors_dir() / name
    assert main(["log", "verify", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK {path}: 6 entries")
    assert "no PCR values" in captured.err


def test_verify_kernel_list_with_keyring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = kernel_vectors_dir()
    (tmp_path / "cert.der").write_bytes((d / "cert.der").read_bytes())
    rc = main(["log", "verify", "--keyring", str(tmp_path), str(d / "binary_runtime_measurements")])
    assert rc == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL entry 5 (/mnt/denied): signature does not verify")
    assert out.count("FAIL") == 1


def test_verify_ours_and_tampering(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "verify", str(our_list)]) == 0
    assert "PCR replay" in capsys.readouterr().out
    data = our_list.read_bytes()
    our_list.write_bytes(data[: len(data) - 1])  # torn tail
    assert main(["log", "verify", str(our_list)]) == 1
    assert "incomplete" in capsys.readouterr().out


def test_verify_with_pcr_option(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = json.loads(pcr_path(our_list).read_text())["banks"]
    pcr_path(our_list).unlink()
    good = ["--pcr", f"sha256:{stored['sha256']['10']}", "--pcr", f"sha1:10:{stored['sha1']['10']}"]
    assert main(["log", "verify", *good, str(our_list)]) == 0
    capsys.readouterr()
    assert main(["log", "verify", "--pcr", "sha256:" + "00" * 32, str(our_list)]) == 1
    assert "replaying entries 1..4 gives sha256 PCR 10" in capsys.readouterr().out
    assert main(["log", "verify", "--pcr", "md5:00", str(our_list)]) == 2


def test_verify_json(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "verify", "--json", str(our_list)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["pcrs_compared"] is True
    assert doc["entries"] == 4


def test_pcrs(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = json.loads(pcr_path(our_list).read_text())["banks"]
    assert main(["log", "pcrs", str(our_list)]) == 0
    assert f"sha256 PCR-10: {stored['sha256']['10']}" in capsys.readouterr().out
    assert main(["log", "pcrs", "--replay", "--json", str(our_list)]) == 0
    assert json.loads(capsys.readouterr().out)["banks"] == stored
    assert main(["log", "pcrs", "--evmctl", "sha1", str(our_list)]) == 0
    assert f"PCR-10: {stored['sha1']['10']}\n" in capsys.readouterr().out


def test_missing_list_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "verify", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    nope = tmp_path / "nope"
    assert err == f"ERROR: can't read measurement list '{nope}': No such file or directory\n"
    assert "Traceback" not in err


def test_verify_counts_violations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyverity.format.measurelist import MeasurementRecord

    fields = (b"sha256:\0" + bytes(32), b"/busy\0")
    violation = MeasurementRecord(10, bytes(20), "ima-ng", fields)
    ok = MeasurementRecord.for_file("ima-ng", DigestField("sha256", bytes(32)), "/ok")
    path = tmp_path / "kernel-like"
    path.write_bytes(ok.to_bytes() + violation.to_bytes())
    assert main(["log", "verify", str(path)]) == 0
    assert "1 violation entries" in capsys.readouterr().out
    assert main(["log", "verify", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["violations"] == 1


def test_verify_names_a_moved_entry(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyverity.measure import read_list

    recs = list(read_list(our_list).records)
    recs[1], recs[2] = recs[2], recs[1]
    our_list.write_bytes(b"".join(r.to_bytes() for r in recs))
    assert main(["log", "verify", str(our_list)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "FAIL entry 2 (/f_1): the replay leaves the recorded PCR chain here: this entry was "
        "changed or inserted, or an entry before it was dropped or moved"
    )


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("ERROR: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("action", [["show"], ["show", "--json"], ["verify"], ["pcrs"],
                                    ["pcrs", "--replay"]])  # fmt: skip
def test_random_bytes_and_text_are_not_a_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    rnd = tmp_path / "random"
    rnd.write_bytes(bytes(range(256)) * 4096)
    text = tmp_path / "text"
    text.write_text("Hello, this is a README.\n" * 100)
    for path in (rnd, text):
        assert main(["log", *action, str(path)]) == 1
        assert "not a measurement list" in _one_line_error(capsys)


@pytest.mark.parametrize("action", [["show"], ["verify"], ["pcrs"], ["pcrs", "--replay"]])
def test_truncated_list_is_exit_1_naming_the_offset(
    our_list: Path, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    from pyverity.measure import read_list

    offsets = read_list(our_list).offsets
    data = our_list.read_bytes()
    our_list.write_bytes(data[:-5])
    assert main(["log", *action, str(our_list)]) == 1
    assert f"record at offset {offsets[-1]} is incomplete" in _one_line_error(capsys)


def test_empty_list_without_pcr_values_is_not_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyverity.measure import PcrValues

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for action in ("show", "verify", "pcrs"):
        assert main(["log", action, str(empty)]) == 1
        assert "empty" in _one_line_error(capsys)
    pcr_path(empty).write_text(PcrValues().to_json())  # PCR values covering 0 entries
    assert main(["log", "verify", str(empty)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {empty}: 0 entries")


def test_entry_of_pcr_24_is_refused(our_list: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyverity.measure import read_list

    offset = read_list(our_list).offsets[2]
    data = bytearray(our_list.read_bytes())
    data[offset : offset + 4] = (24).to_bytes(4, "little")
    our_list.write_bytes(bytes(data))
    assert main(["log", "show", str(our_list)]) == 1
    assert capsys.readouterr().err == (
        f"ERROR: {our_list}: record at offset {offset}: PCR index 24 (a list has PCRs 0-23)\n"
    )


def test_show_streams_a_large_list_in_little_memory(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from pyverity.format.measurelist import MeasurementRecord

    rec = MeasurementRecord.for_file(
        "ima-sigv2", DigestField("sha256", bytes(32), "verity"), "/f" * 40, b"\x03" * 300
    ).to_bytes()
    big = tmp_path / "big"
    count = (48 << 20) // len(rec)
    big.write_bytes(rec * count)  # 48 MiB: the in-memory reader needed about ten times that
    # the peak of the child's own memory (VmHWM after the exec: ru_maxrss would count the
    # pytest process the child was forked from)
    probe = (
        "import atexit, sys\n"
        "from pyverity.cli import main\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'): sys.stderr.write(line)\n"
        "atexit.register(hwm)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    with open(os.devnull, "wb") as null:
        proc = subprocess.run(
            [sys.executable, "-c", probe, "log", "show", str(big)],
            stdout=null,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stderr.split()[-2])
    assert peak_kib < 80 * 1024, f"peak RSS {peak_kib} KiB"
