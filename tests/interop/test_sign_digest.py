"""``pyverity sign-digest`` against the real tools: it reads ``sha256sum`` (v2) and ``fsverity
digest`` (v3) output, its RSA v2 output is byte-equal to ``evmctl sign_hash`` (Debian's 1.4),
its v3 output equals evmctl's v2 signature over H(ima_file_id) with bytes 0..1 set to 06 03
(what ``evmctl sign_hash --veritysig`` writes; 1.4 lacks that option), and what
``apply-signatures`` writes verifies with ``evmctl ima_verify``. A PKCS#11 key signs the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.format.ima import file_id_hash
from tests.interop.softhsm import softhsm
from tests.support.needs import need
from tests.unit.keys.keyhelpers import make_key

pytestmark = [pytest.mark.interop]


def _tool(name: str) -> None:
    need(name, shutil.which(name) is not None)


def _run(args: list[str], stdin: bytes, env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(args, input=stdin, capture_output=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _pyverity(*args: str, stdin: bytes, env: dict[str, str] | None = None) -> bytes:
    code = "import sys; from pyverity.cli import main; sys.exit(main(sys.argv[1:]))"
    return _run([sys.executable, "-c", code, *args], stdin, env)


def _files(tmp_path: Path, n: int = 3) -> list[Path]:
    out = []
    for i in range(n):
        f = tmp_path / f"file {i}"
        f.write_bytes(os.urandom(3000 + 7919 * i))
        out.append(f)
    return out


@pytest.mark.parametrize("alg", ["sha256", "sha512", "sha1"])
def test_rsa_v2_from_sha_sum_is_byte_equal_to_evmctl(tmp_path: Path, alg: str) -> None:
    _tool("evmctl")
    _tool(f"{alg}sum")
    k = make_key("rsa", "2048")
    sums = _run([f"{alg}sum", *map(str, _files(tmp_path))], b"")
    theirs = _run(["evmctl", "sign_hash", "--key", str(k.key_path), "-a", alg], sums)
    ours = _pyverity("sign-digest", "--key", str(k.key_path), "--cert", str(k.cert_path),
                     "--hash-alg", alg, stdin=sums)  # fmt: skip
    assert ours == theirs
    assert ours.count(b"\n") == 3


def test_rsa_v3_from_fsverity_digest_equals_evmctl_over_the_file_id(tmp_path: Path) -> None:
    _tool("evmctl")
    _tool("fsverity")
    k = make_key("rsa", "2048")
    files = _files(tmp_path)
    digests = _run(["fsverity", "digest", *map(str, files)], b"")
    ours = _pyverity("sign-digest", "--key", str(k.key_path), "--cert", str(k.cert_path),
                     stdin=digests)  # fmt: skip
    for line, out in zip(digests.splitlines(), ours.splitlines(), strict=True):
        head, _, value_hex = out.rpartition(b" ")
        assert head == line
        token = line.split(b" ", 1)[0].split(b":", 1)[1]
        signed = file_id_hash(4, bytes.fromhex(token.decode()))
        theirs = _run(["evmctl", "sign_hash", "--key", str(k.key_path), "-a", "sha256"],
                      signed.hex().encode() + b"\n")  # fmt: skip
        their_value = bytes.fromhex(theirs.split()[-1].decode())
        assert bytes.fromhex(value_hex.decode()) == b"\x06\x03" + their_value[2:]


def test_apply_signatures_output_verifies_with_evmctl(tmp_path: Path) -> None:
    _tool("evmctl")
    _tool("sha256sum")
    k = make_key("ecdsa", "P-256")
    files = _files(tmp_path)
    sums = _run(["sha256sum", *map(str, files)], b"")
    signed = _pyverity("sign-digest", "--key", str(k.key_path), "--cert", str(k.cert_path),
                       "--hash-alg", "sha256", stdin=sums)  # fmt: skip
    _pyverity("apply-signatures", "--root", "/", "--xattr-user", stdin=signed)
    for f in files:
        ok = subprocess.run(
            ["evmctl", "ima_verify", "--xattr-user", "--key", str(k.der_path), str(f)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr


def test_pkcs11_key_signs_digests_like_the_file_key(tmp_path: Path) -> None:
    _tool("fsverity")
    token = softhsm()
    files = _files(tmp_path)
    digests = _run(["fsverity", "digest", *map(str, files)], b"")
    from_file = _pyverity("sign-digest", "--key", str(token.rsa.key_path), "--cert",
                          str(token.rsa.cert_path), stdin=digests)  # fmt: skip
    from_token = _pyverity("sign-digest", "--key", token.uri("rsa", pin=True), stdin=digests,
                           env=token.env())  # fmt: skip
    assert from_token == from_file
    out = _pyverity("apply-signatures", "--root", "/", "--xattr-user", stdin=from_token)
    assert out.count(b"Applied v3") == 3
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "rsa.der").write_bytes(token.rsa.der_path.read_bytes())
    _pyverity("verify", "--xattr-user", "--keyring", str(ring), *map(str, files), stdin=b"")


def test_pyverity_digest_output_signs_like_fsverity_digest_output(tmp_path: Path) -> None:
    """``pyverity digest`` lines (its default output) sign as ``fsverity digest`` lines do: the
    same v3 values (RSA is deterministic), each line given back as it was read."""
    _tool("fsverity")
    k = make_key("rsa", "2048")
    files = _files(tmp_path)
    key = ["--key", str(k.key_path), "--cert", str(k.cert_path)]
    theirs = _run(["fsverity", "digest", *map(str, files)], b"")
    ours = _pyverity("digest", *map(str, files), stdin=b"")
    signed_theirs = _pyverity("sign-digest", *key, stdin=theirs)
    signed_ours = _pyverity("sign-digest", *key, stdin=ours)
    values = [line.rpartition(b" ")[2] for line in signed_theirs.splitlines()]
    assert [line.rpartition(b" ")[2] for line in signed_ours.splitlines()] == values
    for line, out in zip(ours.splitlines(), signed_ours.splitlines(), strict=True):
        assert out.rpartition(b" ")[0] == line
    out = _pyverity("apply-signatures", "--root", "/", "--xattr-user", stdin=signed_ours)
    assert out.count(b"Applied v3") == 3
