"""``pyverity sign-digest`` and ``apply-signatures``: line formats, strictness, round trips."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.cli.sign_digest import parse_digest_line
from pyverity.errors import FormatError, UsageError
from pyverity.format.ima import ImaSignature, parse_ima_value
from pyverity.hashing import compute_digest
from pyverity.keys import Keyring, load_certificate
from tests.unit.keys.keyhelpers import keyring_dir, make_key

H256 = hashlib.sha256(b"x").hexdigest()


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    argv: list[str],
    stdin: bytes,
) -> tuple[int, bytes, bytes]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = main(argv)
    out = capsysbinary.readouterr()
    return rc, out.out, out.err


def _key() -> list[str]:
    k = make_key("rsa", "2048")
    return ["--key", str(k.key_path), "--cert", str(k.cert_path)]


@pytest.mark.parametrize(
    ("line", "verity", "alg", "path"),
    [
        (f"sha256:{H256} some file", True, "sha256", b"some file"),
        (f"SHA512:{'ab' * 64} f", True, "sha512", b"f"),
        (f"{H256}  name with  spaces", False, "sha256", b"name with  spaces"),
        (f"{H256} *binary", False, "sha256", b"binary"),
        (f"{H256} single", False, "sha256", b"single"),
        (f"{H256}\ttabbed", False, "sha256", b"tabbed"),
        (H256.upper(), False, "sha256", None),
        (f"\\{H256}  back\\\\slash\\nnewline", False, "sha256", b"back\\slash\nnewline"),
    ],
)
def test_line_forms(line: str, verity: bool, alg: str, path: bytes | None) -> None:
    parsed = parse_digest_line(line.encode(), 1, hash_alg="sha256")
    assert parsed.verity is verity
    assert parsed.algorithm.name == alg
    assert parsed.path == path
    assert parsed.raw == line.encode()


def test_bare_hex_is_verity_with_veritysig() -> None:
    parsed = parse_digest_line(H256.encode(), 1, hash_alg="sha256", veritysig=True)
    assert parsed.verity
    assert parsed.verity_algorithm == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "empty line"),
        ("   ", "empty line"),
        ("xyz path", "not hexadecimal"),
        ("abc path", "not hexadecimal"),
        ("sha256: path", "not hexadecimal"),
        ("abcd path", "sha256 digest is 2 bytes, expected 32"),
        (f"sha512:{H256} path", "sha512 digest is 32 bytes, expected 64"),
        (f"md4:{H256} path", "hash algorithm 'md4'"),
        (f"{H256}  ", "the path after the digest is empty"),
    ],
)
def test_malformed_lines(line: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_digest_line(line.encode(), 7, hash_alg="sha256")


def test_bare_hex_needs_hash_alg() -> None:
    with pytest.raises(UsageError, match="needs --hash-alg"):
        parse_digest_line(H256.encode() + b"  f", 1)


def test_sign_digest_output_is_input_line_plus_value(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    k = make_key("rsa", "2048")
    name = b"/no/such/file \xff"  # never opened; not even UTF-8
    lines = f"sha256:{H256} ".encode() + name + b"\n" + f"{H256}  f2\n".encode()
    rc, out, err = _run(
        monkeypatch, capsysbinary, ["sign-digest", *_key(), "--hash-alg", "sha256"], lines
    )
    assert rc == 0, err
    first, second = out.splitlines()
    head, _, value = first.rpartition(b" ")
    assert head == f"sha256:{H256} ".encode() + name
    v3 = parse_ima_value(bytes.fromhex(value.decode()))
    assert isinstance(v3, ImaSignature)
    assert v3.is_verity
    ring = Keyring.from_certificates([load_certificate(k.cert_path)])
    ring.verify_ima_signature(v3, bytes.fromhex(H256))
    head, _, value = second.rpartition(b" ")
    assert head == f"{H256}  f2".encode()
    v2 = parse_ima_value(bytes.fromhex(value.decode()))
    assert isinstance(v2, ImaSignature)
    assert not v2.is_verity
    ring.verify_ima_signature(v2, bytes.fromhex(H256))


@pytest.mark.parametrize(
    ("stdin", "code", "message"),
    [
        (b"", 2, "no digest lines"),
        (f"sha256:{H256} a\nzz b\n".encode(), 1, "ERROR: line 2: the digest is not hexadecimal"),
        (f"sha256:{H256[:-2]} a\n".encode(), 1, "sha256 digest is 31 bytes, expected 32"),
        (f"{H256}  a\n".encode(), 2, "line 1: a bare hex digest needs --hash-alg"),
    ],
)
def test_bad_input_one_line_nothing_signed(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    stdin: bytes,
    code: int,
    message: str,
) -> None:
    rc, out, err = _run(monkeypatch, capsysbinary, ["sign-digest", *_key()], stdin)
    assert rc == code
    assert out == b""
    errors = [e for e in err.decode().splitlines() if e.startswith("ERROR:")]
    assert len(errors) == 1
    assert message in errors[0]


def test_encrypted_key_without_pass_option_does_not_read_stdin(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    from pyverity.keys.generate import generate_key

    monkeypatch.setenv("PW", "secret")
    k = generate_key(tmp_path, "ecdsa", curve="P-256", passphrase=b"secret")
    stdin = f"sha256:{H256} a\n".encode()
    argv = ["sign-digest", "--key", str(k.key_path), "--cert", str(k.cert_path)]
    rc, _, err = _run(monkeypatch, capsysbinary, argv, stdin)
    assert rc == 2
    assert b"standard input carries the digests" in err
    rc, out, _ = _run(monkeypatch, capsysbinary, [*argv, "--pass-env", "PW"], stdin)
    assert rc == 0
    assert out.startswith(stdin.rstrip())


def _signed_lines(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    files: list[Path],
) -> bytes:
    lines = b""
    for f in files:
        if f.name.startswith("v3"):
            lines += f"sha256:{compute_digest(f).hex()} {f}\n".encode()
        else:
            lines += f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f}\n".encode()
    rc, out, err = _run(
        monkeypatch, capsysbinary, ["sign-digest", *_key(), "--hash-alg", "sha256"], lines
    )
    assert rc == 0, err
    return out


def test_apply_signatures_writes_what_sign_would(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    k = make_key("rsa", "2048")
    files = [tmp_path / "v3-a", tmp_path / "v2-b"]
    for f in files:
        f.write_bytes(os.urandom(9000))
    signed = _signed_lines(monkeypatch, capsysbinary, files)
    ring = keyring_dir(k)
    argv = ["apply-signatures", "--root", "/", "--xattr-user", "--keyring", str(ring)]
    rc, out, err = _run(monkeypatch, capsysbinary, argv, signed)
    assert rc == 0, err
    assert out.count(b"Applied") == 2
    v3_value = os.getxattr(files[0], "user.ima")
    v2_value = os.getxattr(files[1], "user.ima")
    assert "user.verity" in os.listxattr(files[0])
    assert "user.verity" not in os.listxattr(files[1])
    # The same values `pyverity sign` writes (RSA is deterministic).
    for f in files:
        os.removexattr(f, "user.ima")
    assert main(["sign", *_key(), "--xattr-user", str(files[0])]) == 0
    assert main(["sign", *_key(), "--xattr-user", "--imasig", str(files[1])]) == 0
    assert os.getxattr(files[0], "user.ima") == v3_value
    assert os.getxattr(files[1], "user.ima") == v2_value
    capsysbinary.readouterr()
    rc, _, _ = _run(monkeypatch, capsysbinary, ["verify", "--xattr-user", "--keyring", str(ring),
                                                 *map(str, files)], b"")  # fmt: skip
    assert rc == 0


def test_apply_signatures_refuses_changed_files_and_bad_signatures(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    files = [tmp_path / "v3-a", tmp_path / "v2-b", tmp_path / "v3-c"]
    for f in files:
        f.write_bytes(os.urandom(5000))
    signed = _signed_lines(monkeypatch, capsysbinary, files)
    files[0].write_bytes(b"changed")
    files[1].write_bytes(b"changed")
    rc, _, err = _run(
        monkeypatch, capsysbinary, ["apply-signatures", "--root", "/", "--xattr-user"], signed
    )
    assert rc == 1
    assert err.count(b"does not have the digest that was signed") == 2
    assert os.listxattr(files[0]) == []
    assert os.listxattr(files[1]) == []
    assert "user.ima" in os.listxattr(files[2])  # the others are still applied
    # Another key's keyring: nothing is written.
    os.removexattr(files[2], "user.ima")
    other = keyring_dir(make_key("ecdsa", "P-256"))
    argv = ["apply-signatures", "--root", "/", "--xattr-user", "--keyring", str(other)]
    rc, _, err = _run(monkeypatch, capsysbinary, argv, signed.splitlines(keepends=True)[2])
    assert rc == 1
    assert b"unknown key" in err
    assert "user.ima" not in os.listxattr(files[2])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"nothing", "expected 'DIGEST PATH SIGNATURE-HEX'"),
        (f"sha256:{H256} f zz".encode(), "the signature is not hexadecimal"),
        (f"sha256:{H256} f 0102".encode(), "line 1:"),
        (f"sha256:{H256} 0601".encode(), "line 1:"),
    ],
)
def test_apply_signatures_malformed_line(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    line: bytes,
    message: str,
) -> None:
    rc, out, err = _run(monkeypatch, capsysbinary, ["apply-signatures"], line + b"\n")
    assert rc == 1
    assert message.encode() in err
    assert b"Applied" not in out


def test_apply_signatures_kind_must_match_the_line(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    f = tmp_path / "v2-x"
    f.write_bytes(b"data")
    signed = _signed_lines(monkeypatch, capsysbinary, [f])
    head, _, value = signed.strip().rpartition(b" ")
    swapped = f"sha256:{H256} {f} ".encode() + value + b"\n"  # a v2 value on a v3 line
    rc, _, err = _run(
        monkeypatch, capsysbinary, ["apply-signatures", "--root", "/", "--xattr-user"], swapped
    )
    assert rc == 1
    assert b"is not a type 0x06 (v3) signature" in err
    assert head


def test_apply_signatures_paths_stay_beneath_the_root(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "v2-in"
    inside.write_bytes(b"inside")
    outside = tmp_path / "v2-out"
    outside.write_bytes(b"inside")  # same content: the same signed line would fit it
    (root / "link").symlink_to(outside)
    signed = _signed_lines(monkeypatch, capsysbinary, [inside])
    value = signed.strip().rpartition(b" ")[2]
    sha = hashlib.sha256(b"inside").hexdigest()

    def apply(path: str, *extra: str) -> tuple[int, bytes]:
        line = f"{sha}  {path} ".encode() + value + b"\n"
        argv = ["apply-signatures", "--xattr-user", *extra]
        rc, _, err = _run(monkeypatch, capsysbinary, argv, line)
        return rc, err

    monkeypatch.chdir(root)
    for path, reason in [
        ("../v2-out", b"leads outside its root"),
        ("link", b"symbolic link"),
        (str(outside), b"absolute paths need --root /"),
    ]:
        rc, err = apply(path)
        assert rc == 1, path
        assert reason in err, (path, err)
    assert os.listxattr(outside) == []
    rc, err = apply("sub/v2-in")
    assert rc == 0, err
    assert "user.ima" in os.listxattr(inside)
    os.removexattr(inside, "user.ima")
    rc, err = apply("v2-in", "--root", str(root / "sub"))
    assert rc == 0, err
    assert "user.ima" in os.listxattr(inside)
