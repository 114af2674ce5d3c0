"""``pyverity key import`` against the host kernel's keyrings, through the system calls.

Each case runs in a child process with a new anonymous session keyring, holding a keyring made
with ``add_key`` (``%keyring:NAME``); the imported key is read back with ``KEYCTL_READ`` and
``KEYCTL_DESCRIBE``. ``_ima``/``.ima``/``.fs-verity`` as the kernel uses them are tested in the
kernel suite. Without keyrings (a sandbox refusing the calls) the tests skip, or fail under
``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.keys.keyhelpers import make_key

_CHILD = r"""
import json, os, sys
from pyverity.keys import kernel_keyring as kk
from pyverity.cli import main
kk.join_new_session_keyring()
ring = kk.new_keyring("pyverity-test", kk.KEY_SPEC_SESSION_KEYRING)
if os.environ.get("RESTRICT"):
    kk.restrict_keyring(ring, "asymmetric", os.environ["RESTRICT"])
rc = main(sys.argv[1:])
members = kk.keyring_members(ring)
print(json.dumps({"ring": ring, "rc": rc, "members": members,
                  "described": [kk.describe(m) for m in members]}))
"""


def _keyrings_work() -> bool:
    code = "from pyverity.keys import kernel_keyring as kk; kk.join_new_session_keyring()"
    return (
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode
        == 0
    )


@pytest.fixture(scope="module", autouse=True)
def _need_keyrings() -> None:
    if _keyrings_work():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("kernel keyrings (add_key/keyctl) are not usable here (CI=true)")
    pytest.skip("kernel keyrings (add_key/keyctl) are not usable here")


def _run(*argv: str, restrict: str = "") -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        capture_output=True, text=True, check=False, env={**os.environ, "RESTRICT": restrict},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1]) + "\n" + proc.stderr


@pytest.mark.parametrize("form", ["der", "pem"])
@pytest.mark.parametrize(("kind", "size"), [("rsa", "2048"), ("ecdsa", "P-256")])
def test_import_prints_the_serial_of_the_key_in_the_keyring(
    form: str, kind: str, size: str
) -> None:
    k = make_key(kind, size)
    cert = k.der_path if form == "der" else k.cert_path
    result, output = _run("key", "import", str(cert), "--keyring", "%keyring:pyverity-test")
    if kind == "ecdsa" and "cannot use the certificate's key type" in output:
        assert result["rc"] == 1
        pytest.skip("this kernel has no ECDSA for asymmetric keys (CONFIG_CRYPTO_ECDSA)")
    assert result["rc"] == 0
    members = result["members"]
    assert isinstance(members, list)
    assert len(members) == 1
    assert output.split()[0] == str(members[0])  # the serial, as evmctl import prints it
    described = result["described"]
    assert isinstance(described, list)
    key_type, description = described[0]
    assert key_type == "asymmetric"
    assert description.endswith(f"{k.keyid:08x}")  # the kernel names it by its SKID


def test_import_by_serial_and_special_keyring() -> None:
    k = make_key("rsa", "2048")
    result, output = _run("key", "import", str(k.der_path), "--keyring", "@s")
    assert result["rc"] == 0
    assert int(output.split()[0]) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keyring", "%keyring:no-such-ring"], "no keyring named 'no-such-ring'"),
        (["--keyring", ".no-such-system-ring"], "has no '.no-such-system-ring' keyring"),
        (["--keyring", "%keyring:"], "no name"),
    ],
)
def test_bad_keyrings_are_one_line(args: list[str], message: str) -> None:
    k = make_key("rsa", "2048")
    result, output = _run("key", "import", str(k.der_path), *args)
    assert result["rc"] in (1, 2)
    assert result["members"] == []
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1
    assert message in errors[0]


def test_a_non_certificate_is_refused_before_the_kernel(tmp_path: Path) -> None:
    junk = tmp_path / "junk.der"
    junk.write_bytes(os.urandom(300))
    result, output = _run("key", "import", str(junk), "--keyring", "%keyring:pyverity-test")
    assert result["rc"] == 1
    assert result["members"] == []
    assert "not an X.509 certificate" in output


def test_a_keyring_restricted_as_ima_refuses_a_self_signed_certificate() -> None:
    """The kernel's own refusal, as ``.ima`` gives it where it exists: the keyring accepts only
    certificates signed by a key in ``.builtin_trusted_keys`` (the restriction ``.ima`` has)."""
    k = make_key("rsa", "2048")
    result, output = _run("key", "import", str(k.der_path), "--keyring",
                          "%keyring:pyverity-test", restrict="builtin_trusted")  # fmt: skip
    assert result["rc"] == 1
    assert result["members"] == []
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, output
    assert "accepts only certificates signed by a key the kernel trusts" in errors[0]
    assert "a self-signed one is refused" in output
