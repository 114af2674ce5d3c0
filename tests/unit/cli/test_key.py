"""``pyverity key generate|list``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyverity.cli import main


def test_generate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert main(["key", "generate", "--type", "ecdsa", "--curve", "P-384", "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("keyid ")
    keyid = first.split()[1]
    assert (out / "ima.key").stat().st_mode & 0o777 == 0o600
    assert main(["key", "generate", "--bits", "2048", "--out", str(out), "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["key", "list", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["algorithm"] for r in rows} == {"ecdsa-p384", "rsa-2048"}
    assert keyid in {r["keyid"] for r in rows}
    assert all(r["subject"] == "CN=pyverity IMA signing key" for r in rows)
    assert main(["key", "list", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{keyid}  ecdsa-p384" in text


def test_generate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--bits", "1024"], 2, "2048–4096"),
        (["--type", "ecdsa", "--curve", "P-521"], 2, "unknown curve"),
        (["--type", "ecdsa", "--bits", "2048"], 2, "--bits is for rsa"),
        (["--type", "dsa"], 2, "invalid choice"),
        (["--days", "0"], 2, "--days"),
    ]
    for extra, code, message in cases:
        assert main(["key", "generate", "--out", str(tmp_path / "k"), *extra]) == code
        assert message in capsys.readouterr().err
    assert main(["key", "generate", "--out", str(tmp_path / "k"), "--type", "ecdsa"]) == 0
    assert main(["key", "generate", "--out", str(tmp_path / "k"), "--type", "ecdsa"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["key"]) == 2
    assert main(["key", "list", str(tmp_path / "empty")]) == 1


def test_generate_encrypted_then_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PV_KEY_PASS", "correct horse")
    out = tmp_path / "k"
    assert (
        main(["key", "generate", "--type", "ecdsa", "--out", str(out), "--pass-env", "PV_KEY_PASS"])
        == 0
    )
    assert b"ENCRYPTED" in (out / "ima.key").read_bytes()
    f = tmp_path / "f"
    f.write_bytes(b"data")
    base = ["sign", "--xattr-user", "--key", str(out / "ima.key"), "--cert", str(out / "ima.pem")]
    assert main([*base, "--pass-env", "PV_KEY_PASS", str(f)]) == 0
    monkeypatch.setenv("PV_KEY_PASS", "wrong")
    capsys.readouterr()
    assert main([*base, "--pass-env", "PV_KEY_PASS", str(f)]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
