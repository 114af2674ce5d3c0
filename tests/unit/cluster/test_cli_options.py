"""The --cluster options at the CLI edge (no cluster started) and the progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.cli.progress import Bar


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["verify", "-r", "X", "--insecure"], "only with --cluster"),
        (["verify", "-r", "X", "--recheck", "0.5"], "only with --cluster"),
        (["verify", "-r", "X", "--cluster", "local", "--recheck", "2"], "invalid --recheck"),
        (["verify", "-r", "X", "--cluster", "local:0"], "invalid --cluster"),
        (["verify", "-r", "X", "--cluster", "http://h:1"], "invalid --cluster"),
    ],
)
def test_usage_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert text in capsys.readouterr().err


def test_sign_on_a_cluster_needs_r(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert main(["sign", str(f), "--key", str(tmp_path / "nokey"), "--cluster", "local"]) == 2
    assert "--cluster runs sign -r" in capsys.readouterr().err


def test_bar_quiet_off_a_terminal_and_line_with_eta() -> None:
    out = io.StringIO()
    bar = Bar("sign", files=4, nbytes=4096, stream=out)
    bar.advance(1024)
    bar.close()
    assert out.getvalue() == ""
    line = bar.line()
    assert "1/4 files" in line
    assert "ETA" in line
    assert bar.summary()["bytes"] == 1024
