"""The top-level API: every advertised name resolves, and hashing alone stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pyverity


@pytest.mark.parametrize("name", pyverity.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(pyverity, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = pyverity.no_such_thing  # type: ignore[attr-defined]


def test_hashing_does_not_import_cryptography(tmp_path: object) -> None:
    code = (
        "import sys, pyverity; pyverity.compute_digest(sys.executable);"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sign_and_verify_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    key = pyverity.generate_key(d / "keys", kind="ecdsa")
    f = d / "f"
    f.write_bytes(b"content" * 1000)
    pyverity.sign_file(f, pyverity.load_signer(key.key_path, cert=key.cert_path), namespace="user")
    keyring = pyverity.Keyring.from_directory(d / "keys")
    pyverity.verify_file(f, keyring, namespace="user")
    f.write_bytes(b"Content" * 1000)
    with pytest.raises(pyverity.Error):
        pyverity.verify_file(f, keyring, namespace="user")
