"""``pyverity digest`` in-process and as a process: parsing, output lines, files, extensions.

Byte-for-byte comparisons with the real ``fsverity digest`` (errors included) are in
``tests/interop/test_fsverity_digest.py``; these tests need no external tool.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyverity.cli import digest as cli_digest
from pyverity.cli import main
from pyverity.cli.digest import GetoptError, getopt_long

A1 = "bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557"
A1_SHA512 = (
    "829b82e4646ed8804b8481d26202f11dafed5acde87623a34e9e813fed884e86"
    "a787bb38095921f6128e2a53f116145b4528b2bfe218c6df6717a03d0be90f4b"
)
Y4097 = "a590eea2232d95d6603f3ec229eb650ead55860e31c05cb3e19251e8a30fe156"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "a1").write_bytes(b"a")
    (tmp_path / "y4097").write_bytes((b"abcdefg\n" * 513)[:4097])
    (tmp_path / "empty").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["digest", *args])
    out, err = capsys.readouterr()
    return rc, out, err


LONG = cli_digest.LONGOPTS


@pytest.mark.parametrize(
    ("args", "opts", "operands"),
    [
        (["f"], [], ["f"]),
        (["--salt=ab", "f", "--compact"], [("salt", "ab"), ("compact", None)], ["f"]),
        (["--salt", "ab", "f"], [("salt", "ab")], ["f"]),
        (["--b", "1024", "f"], [("block-size", "1024")], ["f"]),
        (["--h=sha512", "f"], [("hash-alg", "sha512")], ["f"]),
        (["--salt", "--compact", "f"], [("salt", "--compact")], ["f"]),
        (["f", "--", "--compact", "-x"], [], ["f", "--compact", "-x"]),
        (["-", "f"], [], ["-", "f"]),
        (["--out-d=x", "f"], [("out-descriptor", "x")], ["f"]),
        (["--j", "2", "f"], [("jobs", "2")], ["f"]),
    ],
)
def test_getopt_long_accepts(
    args: list[str], opts: list[tuple[str, str | None]], operands: list[str]
) -> None:
    assert getopt_long(args, LONG) == (opts, operands)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus=3"], "digest: unrecognized option '--bogus=3'"),
        (
            ["--out=x"],
            (
                "digest: option '--out=x' is ambiguous; possibilities:"
                " '--out-merkle-tree' '--out-descriptor'"
            ),
        ),
        (["--salt"], "digest: option '--salt' requires an argument"),
        (["--comp=1"], "digest: option '--compact' doesn't allow an argument"),
        (["-ab"], "digest: invalid option -- 'a'"),
        (["--help"], "digest: unrecognized option '--help'"),
    ],
)
def test_getopt_long_refuses(args: list[str], message: str) -> None:
    with pytest.raises(GetoptError) as e:
        getopt_long(args, LONG)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1024", 1024),
        (" 1024", 1024),
        ("+8", 8),
        ("-1", (1 << 64) - 1),
        ("1e3", None),
        ("0x10", None),
        ("", None),
        ("99999999999999999999999", (1 << 64) - 1),
        ("١٢", None),  # non-ASCII digits are not digits to strtoul
    ],
)
def test_strtoul(text: str, value: int | None) -> None:
    assert cli_digest._strtoul(text) == value


def test_output_lines(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["a1", "y4097"], capsys) == (0, f"sha256:{A1} a1\nsha256:{Y4097} y4097\n", "")
    assert run(["a1", "--hash-alg=sha512"], capsys) == (0, f"sha512:{A1_SHA512} a1\n", "")
    assert run(["--compact", "a1"], capsys) == (0, f"{A1}\n", "")
    fdig = "465356657269747901002000" + A1
    assert run(["--for-builtin-sig", "a1"], capsys) == (0, f"{fdig} a1\n", "")
    assert run(["--for-builtin-sig", "--compact", "a1"], capsys) == (0, f"{fdig}\n", "")
    assert run(["--hash-alg=1", "--jobs=1", "a1"], capsys) == (0, f"sha256:{A1} a1\n", "")


def test_help_and_version(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["a1", "--help", "--bogus"], capsys)
    assert (rc, err) == (0, "")
    assert out.startswith("Usage:\n    pyverity digest FILE...")
    rc, out, _ = run(["--version"], capsys)
    assert rc == 0
    assert out.startswith("pyverity v")
    rc, _out, err = run(["--", "--help"], capsys)
    assert rc == 1
    assert "can't open '--help'" in err


@pytest.mark.parametrize(
    ("args", "rc", "first_line"),
    [
        ([], 2, "Usage:"),
        (["--block-size=3", "a1"], 2, "ERROR: Invalid block size: 3.  Must be power of 2"),
        (["--salt=abc", "a1"], 2, "ERROR: salt is not a valid hex string"),
        (["--salt=a b", "a1"], 2, "ERROR: salt is not a valid hex string"),
        (["--hash-alg=md5", "a1"], 2, "ERROR: unknown hash algorithm: 'md5'"),
        (["--jobs=0", "a1"], 2, "ERROR: Invalid number of jobs: 0."),
        (["--jobs=x", "a1"], 2, "ERROR: Invalid number of jobs: x."),
        (["--salt=", "--salt=", "a1"], 2, "ERROR: --salt can only be specified once"),
        (["--block-size=32", "a1"], 1, "ERROR: block size (32) too small for hash algorithm"),
        (["--salt=" + "00" * 33, "a1"], 1, "ERROR: unsupported salt size (33)"),
        (["--hash-alg=3", "a1"], 1, "ERROR: unknown hash algorithm: 3"),
        (["missing"], 1, "ERROR: can't open 'missing' for reading: No such file or directory"),
        (["."], 1, "ERROR: reading from '.': Is a directory"),
    ],
)
def test_errors(
    work: Path, args: list[str], rc: int, first_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got_rc, out, err = run(args, capsys)
    assert got_rc == rc
    assert out == ""
    assert err.splitlines()[0].startswith(first_line)
    assert ("Usage:" in err) == (rc == 2)
    assert "Traceback" not in err


def test_stops_at_first_failing_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["a1", "missing", "y4097"], capsys)
    assert rc == 1
    assert out == f"sha256:{A1} a1\n"
    assert err.startswith("ERROR: can't open 'missing'")


def test_stdin(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stdin:
        buffer = io.BytesIO(b"a")

    monkeypatch.setattr(sys, "stdin", Stdin())
    assert run(["-", "a1"], capsys) == (0, f"sha256:{A1} -\nsha256:{A1} a1\n", "")


def test_fifo_and_device_refused_at_once(work: Path) -> None:
    os.mkfifo(work / "fifo")
    start = time.monotonic()
    for target in ("fifo", "/dev/zero"):
        proc = subprocess.run(
            [sys.executable, "-m", "pyverity.cli", "digest", target],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 1
        assert proc.stderr == f"ERROR: '{target}' is not a regular file\n"
    assert time.monotonic() - start < 20


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_out_files_written(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, _err = run(["y4097", "--out-merkle-tree=t", "--out-descriptor", "d"], capsys)
    assert rc == 0
    tree = (work / "t").read_bytes()
    assert len(tree) == 4096
    import hashlib

    assert hashlib.sha256(tree).hexdigest() == (
        "ad7c67076d9b8b0045c6fbd6678c7f0bbbff44544cc1ef39660574f68ee30702"
    )  # the root hash of spec §11 T4
    desc = (work / "d").read_bytes()
    assert len(desc) == 256
    assert hashlib.sha256(desc).hexdigest() == Y4097
    mode = stat.S_IMODE((work / "t").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    # a file of at most one block has an empty tree
    assert run(["a1", "--out-merkle-tree=t"], capsys)[0] == 0
    assert (work / "t").read_bytes() == b""
    assert not [n for n in _listing(work) if n.endswith(".tmp")]


def test_out_files_untouched_on_error(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "t").write_bytes(b"old tree")
    before = _listing(work)
    rc, out, _err = run(["y4097", "missing", "--out-merkle-tree=t", "--out-descriptor=d"], capsys)
    assert rc == 1
    assert out.startswith("sha256:")
    assert (work / "t").read_bytes() == b"old tree"
    assert _listing(work) == before  # no descriptor, no temp files
    rc, *_ = run(["--block-size=3", "a1", "--out-descriptor=d"], capsys)
    assert rc == 2
    assert _listing(work) == before


def test_unwritable_output_is_a_usage_error(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, err = run(["a1", "--out-descriptor=nodir/d"], capsys)
    assert rc == 2
    assert err.startswith("ERROR: can't open 'nodir/d' for writing: No such file or directory\n")
    rc, _out, err = run(["a1", "--out-descriptor=."], capsys)
    assert rc == 2
    assert err.startswith("ERROR: can't open '.' for writing: Is a directory\n")


def test_unreadable_file(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyverity.fs import openfile

    real_open = os.open

    def deny(path: Any, flags: int, *rest: Any) -> int:
        if str(path) == "a1":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *rest)

    monkeypatch.setattr(openfile.os, "open", deny)
    rc, _out, err = run(["a1"], capsys)
    assert rc == 1
    assert err == "ERROR: can't open 'a1' for reading: Permission denied\n"


def test_no_cryptography_import(work: Path) -> None:
    code = (
        "import sys\n"
        "from pyverity.cli import main\n"
        "rc = main(['digest', '--out-descriptor=d', 'y4097'])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'cryptography']\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("clean\n")


def test_read_error_is_one_line(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyverity.hashing

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pyverity.hashing, "build_tree", broken)
    rc, out, err = run(["a1"], capsys)
    assert (rc, out) == (1, "")
    assert err == (
        "ERROR: reading from 'a1': Input/output error\n"
        "ERROR: error reading file\nERROR: failed to compute digest\n"
    )
