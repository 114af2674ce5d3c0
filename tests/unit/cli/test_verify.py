"""``pyverity verify``: the kernel-6.1-ima vectors reproduce the kernel's verdicts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pyverity.cli import main
from tests.unit.keys.keyhelpers import VECTORS

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="security.* attributes need root")


def _verdicts() -> tuple[dict[str, str], dict[str, str]]:
    verdicts, measured = {}, {}
    for line in (VECTORS / "kernel-verdicts.txt").read_text().splitlines():
        parts = line.split()
        if parts[0] == "VERDICT":
            verdicts[parts[1]] = parts[2]
        elif parts[0] == "MEASURE" and len(parts) == 3:
            measured[parts[2]] = parts[1]
    return verdicts, measured


def _install(tmp_path: Path, ns: str) -> tuple[Path, list[str]]:
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    shutil.copy(VECTORS / "cert.der", keyring / "cert.der")
    names = ["hello", "big", "denied", "classic", "ngv2"]
    for name in names:
        shutil.copy(VECTORS / name, tmp_path / name)
        sig = VECTORS / f"{name}.sig"
        if sig.exists():
            value = bytes.fromhex(sig.read_text().strip().removeprefix("0x"))
            os.setxattr(tmp_path / name, f"{ns}.ima", value)
    return keyring, [str(tmp_path / n) for n in names]


@pytest.mark.parametrize("ns", [pytest.param("security", marks=NEEDS_ROOT), "user"])
def test_kernel_vectors(tmp_path: Path, capsys: pytest.CaptureFixture[str], ns: str) -> None:
    keyring, files = _install(tmp_path, ns)
    rc = main(["verify", "--keyring", str(keyring), "--xattr-ns", ns, "--json", *files])
    assert rc == 1  # denied fails (and ngv2 carries no attribute)
    results = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    verdicts, measured = _verdicts()
    for name in ("hello", "big", "denied"):
        # the kernel appraised these three (fowner=1000 rule): same verdict here
        assert results[name]["ok"] == (verdicts[name] == "allowed"), name
    assert results["denied"]["reason"] == "bad signature"
    assert results["classic"]["ok"]  # evmctl's 0x03 v2 signature verifies
    assert results["ngv2"]["reason"] == "no attribute"
    for name, digest in measured.items():
        if name in ("hello", "big"):
            assert results[name]["digest"] == digest  # the kernel's FS_IOC_MEASURE_VERITY


def test_lines_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyring, files = _install(tmp_path, "user")
    assert main(["verify", "--xattr-user", "--keyring", str(keyring), files[0], files[1]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{files[0]}: ok (verity-signed, sha256:"
        "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92, key 872439d8)"
    )
    assert len(out) == 2
    assert main(["verify", "--xattr-user", "--keyring", str(keyring), files[2]]) == 1
    assert capsys.readouterr().out.strip() == (
        f"{files[2]}: FAILED: bad signature: signature does not verify with key 872439d8"
    )
    # content changed after protection: the reason is named once, then the detail
    plain = tmp_path / "plain"
    plain.write_bytes(b"original")
    assert main(["enable", "--xattr-user", str(plain)]) == 0
    plain.write_bytes(b"0riginal")  # same size, other content
    capsys.readouterr()
    assert main(["verify", "--xattr-user", str(plain)]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{plain}: FAILED: content does not match: ")
    assert line.count("content does not match") == 1
    # without a keyring a signed file cannot pass
    assert main(["verify", "--xattr-user", files[0]]) == 1
    assert "FAILED: no keyring" in capsys.readouterr().out
    os.setxattr(files[0], "user.ima", b"\x06\x03\x04\x87\x24\x39\xd8\x01\x00")
    assert main(["verify", "--xattr-user", "--keyring", str(keyring), files[0]]) == 1
    assert "FAILED: malformed: IMA signature is 9 bytes" in capsys.readouterr().out


def test_recursive_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyring, _ = _install(tmp_path, "user")
    rc = main(["verify", "-r", "--xattr-user", "--keyring", str(keyring), str(tmp_path)])
    assert rc == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert sum(": ok (" in line for line in lines) == 3  # hello, big, classic
    assert "verify: " not in captured.out
    assert main(["verify", "--keyring", str(tmp_path / "nope"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ")
    assert "keyring" in err.splitlines()[0]
    assert main(["verify", str(tmp_path / "missing")]) == 1
    assert "FAILED: unreadable" in capsys.readouterr().out
    assert main(["verify"]) == 2
