"""PKCS#11 keys against a real token (SoftHSM2): ``sign`` v3, ``--imasig`` and ``--builtin-sig``.

The RSA signatures are byte-equal to the same key used from a file; the v2 ones (RSA and the
DER-encoded ECDSA) verify with the real ``evmctl ima_verify``, the v3 ones with ``pyverity
verify``. Bad input: one line and exit 1 or 2, and a wrong PIN makes exactly one ``C_Login``
(counted by OpenSC's ``pkcs11-spy`` logging the calls between pyverity and SoftHSM).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.errors import SignatureError
from pyverity.format.ima import ImaSignature, parse_ima_value
from tests.interop.softhsm import SPY_CANDIDATES, SoftToken, first_existing, softhsm
from tests.support.needs import need
from tests.unit.keys.keyhelpers import keyring_dir

pytestmark = [pytest.mark.interop]


@pytest.fixture
def token() -> SoftToken:
    return softhsm()


def _file(tmp_path: Path, name: str = "data", size: int = 70000) -> Path:
    f = tmp_path / name
    f.write_bytes(os.urandom(size))
    return f


def _pyverity(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from pyverity.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )


def _sign(token: SoftToken, obj: str, *args: str) -> int:
    return main(["sign", "--key", token.uri(obj), "--pass-file", str(token.pin_file), *args])


def _signature(f: Path) -> ImaSignature:
    value = parse_ima_value(os.getxattr(f, "user.ima"))
    assert isinstance(value, ImaSignature), value
    return value


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR:")]


def test_rsa_v2_byte_equal_to_file_key_and_evmctl_verifies(
    token: SoftToken, tmp_path: Path
) -> None:
    need("evmctl (ima-evm-utils)", shutil.which("evmctl") is not None)
    f = _file(tmp_path)
    args = ["--imasig", "--xattr-user", str(f)]
    assert main(["sign", "--key", str(token.rsa.key_path), "--cert", str(token.rsa.cert_path), *args]) == 0  # noqa: E501
    from_file = os.getxattr(f, "user.ima")
    os.removexattr(f, "user.ima")
    assert _sign(token, "rsa", *args) == 0
    from_token = os.getxattr(f, "user.ima")
    assert from_token == from_file
    ok = subprocess.run(
        ["evmctl", "ima_verify", "--xattr-user", "--key", str(token.rsa.der_path), str(f)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_ecdsa_v2_is_der_encoded_and_evmctl_verifies(
    token: SoftToken, tmp_path: Path, alg: str
) -> None:
    need("evmctl (ima-evm-utils)", shutil.which("evmctl") is not None)
    f = _file(tmp_path)
    assert _sign(token, "ec", "--imasig", "--hash-alg", alg, "--xattr-user", str(f)) == 0
    value = _signature(f)
    assert value.signature[0] == 0x30  # DER SEQUENCE, not the token's raw r||s
    assert value.keyid == token.ec.keyid
    ok = subprocess.run(
        ["evmctl", "ima_verify", "--xattr-user", "--key", str(token.ec.der_path), str(f)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    f.write_bytes(b"changed")
    bad = subprocess.run(
        ["evmctl", "ima_verify", "--xattr-user", "--key", str(token.ec.der_path), str(f)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0


@pytest.mark.parametrize("obj", ["rsa", "ec"])
def test_v3_verifies_with_pyverity_verify(
    token: SoftToken, tmp_path: Path, obj: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = token.rsa if obj == "rsa" else token.ec
    f = _file(tmp_path)
    assert _sign(token, obj, "--xattr-user", str(f)) == 0
    ring = keyring_dir(key)
    assert main(["verify", "--xattr-user", "--keyring", str(ring), str(f)]) == 0
    capsys.readouterr()
    f.write_bytes(f.read_bytes() + b"x")
    assert main(["verify", "--xattr-user", "--keyring", str(ring), str(f)]) != 0


def test_rsa_v3_and_builtin_byte_equal_to_file_key(token: SoftToken, tmp_path: Path) -> None:
    f = _file(tmp_path)
    file_key = ["--key", str(token.rsa.key_path), "--cert", str(token.rsa.cert_path)]
    assert main(["sign", *file_key, "--sigfile", str(f)]) == 0
    from_file = Path(f"{f}.sig").read_bytes()
    assert _sign(token, "rsa", "--sigfile", str(f)) == 0
    assert Path(f"{f}.sig").read_bytes() == from_file
    ours, theirs = tmp_path / "token.p7", tmp_path / "file.p7"
    assert main(["sign", *file_key, "--builtin-sig", str(theirs), str(f)]) == 0
    # No --cert: the token's certificate object with the key's CKA_ID names the signer.
    assert _sign(token, "rsa", "--builtin-sig", str(ours), str(f)) == 0
    assert ours.read_bytes() == theirs.read_bytes()


def test_token_builtin_sig_and_outputs_equal_fsverity_sign(
    token: SoftToken, tmp_path: Path
) -> None:
    """``sign --builtin-sig --out-merkle-tree --out-descriptor`` with the token's RSA key writes
    what ``fsverity sign`` writes with the same key from a file (signature, tree, descriptor)."""
    need("fsverity", shutil.which("fsverity") is not None)
    f = _file(tmp_path, size=700_000)  # two tree levels
    opts = ["--hash-alg=sha512", "--salt=0a0b0c"]
    theirs = subprocess.run(
        ["fsverity", "sign", str(f), str(tmp_path / "sig.ref"), f"--key={token.rsa.key_path}",
         f"--cert={token.rsa.cert_path}", *opts, f"--out-merkle-tree={tmp_path}/tree.ref",
         f"--out-descriptor={tmp_path}/desc.ref"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert theirs.returncode == 0, theirs.stderr
    assert _sign(token, "rsa", "--builtin-sig", str(tmp_path / "sig"), *opts,
                 "--out-merkle-tree", str(tmp_path / "tree"),
                 "--out-descriptor", str(tmp_path / "desc"), str(f)) == 0  # fmt: skip
    for name in ("sig", "tree", "desc"):
        assert (tmp_path / name).read_bytes() == (tmp_path / f"{name}.ref").read_bytes(), name


def test_ecdsa_builtin_signature_verifies(token: SoftToken, tmp_path: Path) -> None:
    from pyverity.format.formatted_digest import FormattedDigest
    from pyverity.hashing import compute_digest
    from pyverity.keys import Keyring, load_certificate
    from pyverity.keys.pkcs7 import verify_builtin_signature

    f = _file(tmp_path)
    out = tmp_path / "ec.p7"
    assert _sign(token, "ec", "--builtin-sig", str(out), str(f)) == 0
    digest = compute_digest(f)
    formatted = FormattedDigest(1, digest.digest)
    ring = Keyring.from_certificates([load_certificate(token.ec.cert_path)])
    assert verify_builtin_signature(out.read_bytes(), formatted, ring).keyid == token.ec.keyid


def test_load_signer_from_python(token: SoftToken) -> None:
    from pyverity import load_signer
    from pyverity.keys import sign_v3

    signer = load_signer(token.uri("ec", pin=True))
    assert signer.keyid == token.ec.keyid  # the SKID of the token's certificate
    sig = sign_v3(signer, 1, bytes(32))
    from pyverity.keys import Keyring, load_certificate

    ring = Keyring.from_certificates([load_certificate(token.ec.cert_path)])
    ring.verify_ima_signature(sig, bytes(32))


def test_key_without_certificate_uses_cert_option_or_computed_keyid(
    token: SoftToken, tmp_path: Path
) -> None:
    from pyverity import load_signer

    with_cert = load_signer(token.uri("bare", pin=True), cert=token.bare.cert_path)
    assert with_cert.keyid == token.bare.keyid
    with pytest.raises(SignatureError, match="no certificate given"):
        load_signer(token.uri("bare", pin=True))
    computed = load_signer(token.uri("bare", pin=True), allow_computed_keyid=True)
    assert computed.keyid == token.bare.keyid  # SKID = SHA-1 of the key: both agree
    with pytest.raises(SignatureError, match="does not match certificate"):
        load_signer(token.uri("bare", pin=True), cert=token.rsa.cert_path)


def test_recursive_signing_hashes_in_workers_and_signs_in_the_parent(
    token: SoftToken, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    files = [_file(tree, f"f{i}", 5000 + i) for i in range(6)]
    assert _sign(token, "rsa", "-r", "--jobs", "2", "--xattr-user", str(tree)) == 0
    ring = keyring_dir(token.rsa)
    assert main(["verify", "--xattr-user", "--keyring", str(ring), *map(str, files)]) == 0


def test_signer_refuses_to_sign_after_fork(token: SoftToken) -> None:
    from pyverity import load_signer

    signer = load_signer(token.uri("rsa", pin=True))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            signer.sign_digest(bytes(32), 4)
        except SignatureError as e:
            os._exit(3 if "fork" in str(e) else 4)
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert len(signer.sign_digest(bytes(32), 4)) == 256  # the parent still signs


def test_default_module_is_the_p11_kit_proxy(token: SoftToken, tmp_path: Path) -> None:
    from pyverity.keys.pkcs11 import find_proxy_module

    try:
        find_proxy_module()
    except Exception:  # noqa: BLE001
        need("the p11-kit proxy (p11-kit-modules)", False)
    f = _file(tmp_path)
    uri = token.uri("rsa", module=False, pin=True)
    proc = _pyverity("sign", "--key", uri, "--imasig", "--xattr-user", str(f), env=token.env())
    assert proc.returncode == 0, proc.stderr
    assert _signature(f).keyid == token.rsa.keyid


def test_module_path_comes_before_the_option(token: SoftToken, tmp_path: Path) -> None:
    """The URI's module-path, else --pkcs11-module (else the p11-kit proxy, tested above)."""
    f = _file(tmp_path)
    argv = ["--pass-file", str(token.pin_file), "--imasig", "--xattr-user", str(f)]
    assert main(["sign", "--key", token.uri("rsa"), "--pkcs11-module", "/nonexistent.so",
                 *argv]) == 0  # fmt: skip
    os.removexattr(f, "user.ima")
    assert main(["sign", "--key", token.uri("rsa", module=False), "--pkcs11-module",
                 token.module, *argv]) == 0  # fmt: skip
    assert _signature(f).keyid == token.rsa.keyid
    os.removexattr(f, "user.ima")
    assert main(["sign", "--key", token.uri("rsa", module=False), "--pkcs11-module",
                 "/nonexistent.so", *argv]) == 1  # fmt: skip
    assert "user.ima" not in os.listxattr(f)


@pytest.mark.parametrize(
    ("uri", "message", "code"),
    [
        ("pkcs11:token=nosuch;object=rsa?module-path={module}", "no token matches", 1),
        ("pkcs11:token=pyverity;object=nosuch?module-path={module}", "no private key matches", 1),
        ("pkcs11:object=rsa?module-path={module}", "2 tokens match", 1),
        ("pkcs11:token=pyverity?module-path={module}", "3 private keys match", 1),
        ("pkcs11:token=pyverity;object=rsa?module-path=/nonexistent.so", "does not exist", 1),
        ("pkcs11:token=pyverity;object=rsa?module-path={garbage}", "cannot load PKCS#11 module", 1),
        ("pkcs11:token=pyverity;object=rsa?pin-value=1234", "pin-value is refused", 2),
        ("pkcs11:token=pyverity;type=cert?module-path={module}", "cannot sign", 2),
    ],
)
def test_bad_input_is_one_line(  # noqa: PLR0917 - fixtures and parameters
    token: SoftToken,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    uri: str,
    message: str,
    code: int,
) -> None:
    f = _file(tmp_path)
    garbage = tmp_path / "not-a-module.so"  # an unreachable token: no PKCS#11 library there
    garbage.write_bytes(b"\x7fELF not really")
    key = uri.format(module=token.module, garbage=garbage)
    rc = main(["sign", "--key", key, "--pass-file", str(token.pin_file), "--xattr-user", str(f)])
    err = capsys.readouterr().err
    assert rc == code
    assert len(_errors(err)) == 1
    assert message in _errors(err)[0]
    assert "Traceback" not in err
    assert "user.ima" not in os.listxattr(f)


def test_wrong_pin_is_tried_once(token: SoftToken, tmp_path: Path) -> None:
    spy = first_existing(SPY_CANDIDATES)
    need("OpenSC's pkcs11-spy.so (Debian: opensc)", spy is not None)
    assert spy is not None
    log = tmp_path / "spy.log"
    env = {**token.env(), "PKCS11SPY": token.module, "PKCS11SPY_OUTPUT": str(log)}
    f = _file(tmp_path)
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000\n")
    uri = f"pkcs11:token=pyverity;object=rsa?module-path={spy}"
    proc = _pyverity("sign", "--key", uri, "--pass-file", str(wrong), str(f), env=env)
    assert proc.returncode == 1
    assert _errors(proc.stderr) == [
        "ERROR: wrong PIN for token 'pyverity' (not retried: tokens lock after a few wrong PINs)"
    ]
    calls = log.read_text(errors="replace")
    assert calls.count("C_Login") == 1
    assert "CKR_PIN_INCORRECT" in calls
    # The same path with the right PIN signs, still with one C_Login.
    log.unlink()
    ok = _pyverity("sign", "--key", uri, "--pass-file", str(token.pin_file), "--imasig",
                   "--xattr-user", str(f), env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert log.read_text(errors="replace").count("C_Login") == 1


def test_pin_from_uri_and_option_is_ambiguous(
    token: SoftToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _file(tmp_path)
    rc = main(["sign", "--key", token.uri("rsa", pin=True), "--pass-file", str(token.pin_file),
               "--xattr-user", str(f)])  # fmt: skip
    assert rc == 2
    assert "the PIN is given twice" in capsys.readouterr().err


def test_manifest_create_with_a_token_key(token: SoftToken, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        _file(src, f"f{i}", 9000 + i)
    out = tmp_path / "m"
    argv = ["manifest", "create", "-o", str(out), "--key", token.uri("rsa", pin=True),
            "--signatures", "--jobs", "2", str(src)]  # fmt: skip
    assert main(argv) == 0
    ring = keyring_dir(token.rsa)
    assert main(["manifest", "verify", "--keyring", str(ring), str(out), str(src)]) == 0


def test_manifest_create_takes_the_module_and_pin_options(token: SoftToken, tmp_path: Path) -> None:
    """``--pkcs11-module`` and ``--pass-env`` as for ``sign`` (the URI names neither)."""
    src = tmp_path / "src"
    src.mkdir()
    _file(src, "f", 5000)
    out = tmp_path / "m"
    env = {**token.env(), "TOKEN_PIN": token.pin_file.read_text().strip()}
    proc = _pyverity("manifest", "create", "-o", str(out), "--key", token.uri("ec", module=False),
                     "--pkcs11-module", token.module, "--pass-env", "TOKEN_PIN", "--signatures",
                     "--jobs", "1", str(src), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ring = keyring_dir(token.ec)
    assert main(["manifest", "verify", "--keyring", str(ring), str(out), str(src)]) == 0
    env["TOKEN_PIN"] = "0000"  # noqa: S105 - a wrong PIN on purpose
    proc = _pyverity("manifest", "create", "-o", str(tmp_path / "m2"), "--key",
                     token.uri("ec", module=False), "--pkcs11-module", token.module,
                     "--pass-env", "TOKEN_PIN", str(src), env=env)  # fmt: skip
    assert proc.returncode == 1
    assert len(_errors(proc.stderr)) == 1, proc.stderr
    assert not (tmp_path / "m2").exists()


def test_no_pin_and_no_terminal_is_a_usage_error(token: SoftToken, tmp_path: Path) -> None:
    f = _file(tmp_path)
    proc = _pyverity("sign", "--key", token.uri("rsa"), "--xattr-user", str(f), env=token.env())
    assert proc.returncode == 2
    assert _errors(proc.stderr) == [
        "ERROR: token 'pyverity' needs a PIN and there is no terminal to ask for it"
    ]
