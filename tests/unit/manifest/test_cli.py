"""``pyverity manifest create|verify|apply`` as a user runs them (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyverity.cli import main
from tests.unit.keys.keyhelpers import make_key
from tests.unit.manifest.helpers import CREATED, keyring, make_tree


def _create(tmp_path: Path, *extra: str) -> Path:
    k = make_key()
    out = tmp_path / "m.jsonl"
    args = [
        "manifest",
        "create",
        "-o",
        str(out),
        "--key",
        str(k.key_path),
        "--cert",
        str(k.cert_path),
    ]
    assert main([*args, "--created", CREATED, "--name", "n", "--serial", "7", *extra]) == 0
    return out


def test_help_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["manifest", "--help"])
    out = capsys.readouterr().out
    for action in ("create", "verify", "apply"):
        assert action in out


def test_create_verify_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = _create(tmp_path, "--signatures", "--file-hash", "sha256,sha384", "--jobs", "2", str(src))
    assert "13 entries (12 files, 1 symlinks), 1 other files skipped" in capsys.readouterr().out
    ring = str(keyring())
    assert (
        main(["manifest", "verify", "--keyring", ring, "--name", "n", "--min-serial", "7", str(m)])
        == 0
    )
    assert "serial 7" in capsys.readouterr().out
    assert main(["manifest", "verify", "--keyring", ring, "--min-serial", "8", str(m)]) == 1
    assert "older than the minimum 8" in capsys.readouterr().err
    (src / "a.b").write_text("x")
    assert main(["manifest", "verify", "--keyring", ring, "--json", str(m), str(src)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["differences"] == [
        {"kind": "changed", "path": "a.b", "detail": "size 1, manifest 7"}
    ]
    assert report["summary"]["ok"] == 12
    assert main(["manifest", "apply", "--keyring", ring, "--xattr-user", str(m), str(src)]) == 1
    out = capsys.readouterr().out
    assert "differs: a.b" in out
    assert "1 differs, 11 written" in out


def test_bad_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = make_key()
    base = [
        "manifest",
        "create",
        "-o",
        str(tmp_path / "m"),
        "--key",
        str(k.key_path),
        str(tmp_path),
    ]
    assert main([*base, "--created", "yesterday"]) == 2
    assert main([*base, "--file-hash", "md4"]) == 2
    assert main([*base, "--file-hash", "sha256,sha256"]) == 2
    assert "ERROR:" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
