"""``pyverity measure``: kernel digest first, then the ``<ns>.verity`` descriptor attribute.

Attributes are written by ``setfattr`` from descriptors made by the real
``fsverity digest --out-descriptor`` where those tools exist (the comparison is then with the
line ``fsverity digest`` prints).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.fs import ioctl

FSVERITY = shutil.which("fsverity")
SETFATTR = shutil.which("setfattr")
needs_tools = pytest.mark.skipif(
    FSVERITY is None or SETFATTR is None,
    reason="needs `fsverity` and `setfattr` (Debian packages fsverity, attr; .ci/run has them)",
)


def _xattrs_work(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.probe")
    return True


@pytest.fixture
def work(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    if not _xattrs_work(probe):
        pytest.skip(f"no user.* extended attributes on {tmp_path}")
    return tmp_path


def protect(path: Path, *opts: str, ns: str = "user") -> str:
    """Write ``<ns>.verity`` with setfattr from ``fsverity digest --out-descriptor``."""
    assert FSVERITY is not None
    assert SETFATTR is not None
    desc = path.with_name(path.name + ".desc")
    line = subprocess.run(
        [FSVERITY, "digest", str(path), *opts, f"--out-descriptor={desc}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    value = "0x" + desc.read_bytes().hex()
    subprocess.run([SETFATTR, "-n", f"{ns}.verity", "-v", value, str(path)], check=True)
    desc.unlink()
    return line


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["measure", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@needs_tools
def test_descriptor_attribute_gives_fsverity_digest_line(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = work / "a"
    a.write_bytes(os.urandom(50_000))
    b = work / "b"
    b.write_bytes(b"b" * 3000)
    line_a = protect(a, "--hash-alg=sha512", "--block-size=1024", "--salt=0102")
    line_b = protect(b)
    rc, out, err = run(["--xattr-ns", "user", str(a), str(b)], capsys)
    assert (rc, err) == (0, "")
    assert out == line_a + line_b
    rc, out2, _ = run(["--xattr-user", str(a)], capsys)
    assert (rc, out2) == (0, line_a)


@needs_tools
def test_security_namespace_is_the_default(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = work / "f"
    f.write_bytes(b"x" * 10)
    try:
        line = protect(f, ns="security")
    except subprocess.CalledProcessError:
        pytest.skip("cannot write security.* attributes here (needs root)")
    rc, out, _ = run([str(f)], capsys)
    assert (rc, out) == (0, line)


@needs_tools
def test_stops_at_first_failure(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = work / "good"
    good.write_bytes(b"g")
    line = protect(good)
    bare = work / "bare"
    bare.write_bytes(b"b")
    rc, out, err = run(["--xattr-ns=user", str(good), str(bare), str(good)], capsys)
    assert rc == 1
    assert out == line
    assert err.startswith(f"ERROR: '{bare}' has no fs-verity digest")
    assert "user.verity" in err
    assert "pyverity digest" in err


@needs_tools
def test_size_must_match_data_size(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = work / "f"
    f.write_bytes(b"x" * 5000)
    protect(f)
    with f.open("ab") as h:
        h.write(b"more")
    rc, out, err = run(["--xattr-ns=user", str(f)], capsys)
    assert (rc, out) == (1, "")
    assert "invalid" in err
    assert "data_size 5000" in err
    assert "5004" in err
    assert "Traceback" not in err


@needs_tools
def test_block_size_out_of_bounds_is_refused(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = work / "f"
    f.write_bytes(b"x" * 5000)
    protect(f, "--block-size=512")  # fsverity accepts it; an attribute must not
    rc, _out, err = run(["--xattr-ns=user", str(f)], capsys)
    assert rc == 1
    assert "block size 512 is out of bounds" in err


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"\x01" * 256, "sig_size"),
        (b"\x02" + bytes(255), "version"),
        (b"\x01\x01\x0c\x00" + bytes(100), "256"),
        (b"", "256"),
    ],
)
def test_malformed_descriptor(
    work: Path, value: bytes, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = work / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.verity", value)
    rc, out, err = run(["--xattr-ns=user", str(f)], capsys)
    assert (rc, out) == (1, "")
    assert "attributes are invalid" in err
    assert words in err


def test_v3_signature_alone_says_file_must_be_hashed(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = work / "f"
    f.write_bytes(b"x")
    # 0x06 v3 signature header: type, version 3, hash_algo 4 (sha256), keyid, size, bytes.
    os.setxattr(f, "user.ima", b"\x06\x03\x04" + b"\x12\x34\x56\x78" + b"\x00\x04" + b"sig!")
    rc, out, err = run(["--xattr-ns=user", str(f)], capsys)
    assert (rc, out) == (1, "")
    assert "v3 signature" in err
    assert "does not carry the fs-verity digest" in err
    assert "pyverity verify" in err


def test_classic_ima_hash_is_not_a_verity_digest(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = work / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.ima", b"\x04\x04" + hashlib.sha256(b"x").digest())
    rc, _out, err = run(["--xattr-ns=user", str(f)], capsys)
    assert rc == 1
    assert "classic IMA value" in err


def test_kernel_digest_comes_first(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = work / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.verity", b"junk")  # ignored: the kernel's digest wins
    digest = ioctl.MeasuredDigest(2, bytes(range(64)))
    monkeypatch.setattr(ioctl, "measure_verity", lambda fd: digest)
    rc, out, _ = run(["--xattr-ns=user", str(f)], capsys)
    assert (rc, out) == (0, f"sha512:{bytes(range(64)).hex()} {f}\n")


def test_unsupported_ioctl_falls_back_on_this_host(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This host's filesystems have no fs-verity: the ioctl fails and the attribute is used."""
    f = work / "f"
    f.write_bytes(b"a")
    with pytest.raises((ioctl.VerityUnsupportedError, ioctl.NotVerityError)):
        ioctl.measure_verity(f)
    from pyverity.format.descriptor import Descriptor
    from pyverity.hashing import build_tree

    desc: Descriptor = build_tree(f).descriptor
    os.setxattr(f, "user.verity", desc.to_bytes())
    rc, out, _ = run(["--xattr-ns=user", str(f)], capsys)
    # spec §3: the 1-byte file "a" (sha256, 4096-byte blocks)
    expected = "sha256:bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557"
    assert (rc, out) == (0, f"{expected} {f}\n")


def test_fifo_and_missing_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, _out, err = run([str(fifo)], capsys)
    assert rc == 1
    assert "not a regular file" in err
    rc, _out, err = run([str(tmp_path / "missing")], capsys)
    assert rc == 1
    assert "can't open" in err
    rc, _out, err = run([], capsys)
    assert rc == 2
    assert "usage:" in err
    rc, _out, err = run(["--xattr-ns=trusted", str(fifo)], capsys)
    assert rc == 2
