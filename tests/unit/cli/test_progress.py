"""The progress bar of the bulk verbs, driven by a local (non-cluster) ``manifest create``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from pyverity.cli import main
from tests.unit.keys.keyhelpers import write_key_files


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tree(root: Path, sizes: list[int]) -> Path:
    root.mkdir()
    for i, n in enumerate(sizes):
        (root / f"f{i}").write_bytes(os.urandom(n))
    (root / "link").symlink_to("f0")
    return root


def _create(tmp: Path, *extra: str) -> int:
    key, cert = write_key_files(tmp / "keys", "rsa-2048")
    tree = tmp / "t" if (tmp / "t").exists() else _tree(tmp / "t", [100, 5000, 70_000])
    out = tmp / "m"
    return main(["manifest", "create", "-o", str(out), "--key", str(key), "--cert", str(cert),
                 str(tree), "--jobs", "1", *extra])  # fmt: skip


def test_local_manifest_create_draws_the_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert _create(tmp_path) == 0
    last = term.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert last.startswith("manifest 3 files, 73.3 KiB, ")
    assert "/s" in last


def test_local_manifest_create_quiet_elsewhere_and_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _create(tmp_path, "--json") == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    run = json.loads(captured.out)["run"]
    assert run["files"] == 3
    assert run["bytes"] == 75_100
    assert run["failed"] == 0
    assert _create(tmp_path) == 0
    assert "\r" not in capsys.readouterr().err
