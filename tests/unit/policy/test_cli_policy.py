"""pyverity policy check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.policy.context import fs_magic

POLICY = """\
# appraise and measure fs-verity signed files of uid 1000
appraise func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity appraise_type=sigv3
measure func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity template=ima-sigv2
measure func=FILE_CHECK mask=^MAY_READ
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    pol = tmp_path / "policy"
    pol.write_text(POLICY)
    owned = tmp_path / "owned"
    owned.write_bytes(b"x")
    os.chown(owned, 1000, 1000)
    other = tmp_path / "other"
    other.write_bytes(b"y")
    os.chown(other, 0, 0)
    return pol, owned, other


def test_check_paths(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pol, owned, other = setup
    assert main(["policy", "check", str(pol), str(owned), str(other)]) == 0
    out = capsys.readouterr().out
    assert f"{owned}: measured (fs-verity digest, template ima-sigv2, PCR 10); appraised: " in out
    assert "needs a v3 fs-verity signature; otherwise denied (EACCES) [enforce]" in out
    assert f"{other}: measured (file hash, template ima-ng, PCR 10); not appraised" in out
    assert "  *   2  appraise func=FILE_CHECK" in out
    assert "     4  measure func=FILE_CHECK mask=^MAY_READ" in out  # matches, not deciding


def test_check_json_and_options(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pol, owned, _ = setup
    argv = ["policy", "check", "--json", "--appraise-mode", "log", "--uid", "5"]
    assert main([*argv, "--mask", "MAY_READ|MAY_WRITE", str(pol), str(owned)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (res,) = doc["paths"]
    assert doc["mode"] == "log"
    assert res["uid"] == 5
    assert res["fowner"] == 1000
    assert res["decision"]["appraise"] is False  # mask=MAY_READ is exact in the kernel
    assert res["decision"]["measure_rule"]["line"] == 4


def test_check_without_paths_lists_rules(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pol, _, _ = setup
    assert main(["policy", "check", str(pol)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{pol}: 3 rules, mode enforce\n")
    assert "    3  measure func=FILE_CHECK" in out


def test_errors(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pol, _, other = setup
    pol.write_text("measure\nappraise appraise_type=sigv3 digest_type=verity\n")
    assert main(["policy", "check", str(pol)]) == 1
    err = capsys.readouterr().err
    assert err == f"ERROR: {pol}:2:10: appraise_type=sigv3 needs digest_type=verity before it\n"
    pol.write_text("measure\n")
    assert main(["policy", "check", str(pol), str(pol.parent / "missing")]) == 1
    assert "ERROR can't open" in capsys.readouterr().out
    assert main(["policy", "check", "--mask", "MAY_FLY", str(pol), str(other)]) == 2
    assert main(["policy", "check", "--func", "NOPE", str(pol), str(other)]) == 2


def test_builtin_policy(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, _, other = setup
    assert main(["policy", "check", "--uid", "0", "ima_policy=tcb|appraise_tcb", str(other)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ima_policy=tcb|appraise_tcb: 36 rules, mode enforce")
    fd = os.open(other, os.O_RDONLY)
    try:
        pseudo = fs_magic(fd) in {0x01021994, 0x858458F6}  # tmpfs, ramfs: never appraised
    finally:
        os.close(fd)
    if pseudo:
        assert f"{other}: not measured; not appraised" in out
    else:
        assert "appraised: needs a valid hash or signature" in out
