"""``export_policy``: every key of keylime's schema, paths as the kernel records them, file hashes
only, verification keys with the certificates' SKID keyids, boot_aggregate, excludes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pyverity.attest.keylime import (
    REQUIRED,
    ExportOptions,
    check_member,
    check_required,
    export_policy,
    kernel_path,
    verification_keys,
)
from pyverity.errors import FormatError, PolicyError, UsageError
from pyverity.keys import Keyring, keyid_from_public_key
from pyverity.manifest.model import FileEntry
from tests.unit.attest.helpers import FILES, manifest_and_ring, open_verified, sha256
from tests.unit.keys.keyhelpers import ec_certificate, make_key
from tests.unit.manifest.helpers import keyring, make_manifest, resign


def _export(tmp: Path, options: ExportOptions | None = None) -> dict[str, Any]:
    manifest, ring = manifest_and_ring(tmp)
    out = io.StringIO()
    with open_verified(manifest, ring) as m:
        export_policy(m, out, Keyring.from_directory(ring), options or ExportOptions())
    policy: dict[str, Any] = json.loads(out.getvalue())
    return policy


def test_every_required_key_and_shape(tmp_path: Path) -> None:
    policy = _export(tmp_path, ExportOptions(prefix="/opt/app", log_hash_alg="sha256"))
    assert set(REQUIRED) <= set(policy)
    assert policy["meta"]["version"] == 1
    assert policy["meta"]["generator"] == 3
    assert policy["meta"]["timestamp"] == "2026-01-02T03:04:05Z"  # the manifest's created
    assert policy["release"] == 1  # the manifest's serial
    assert policy["ima"] == {"ignored_keyrings": [], "log_hash_alg": "sha256", "dm_policy": None}
    assert policy["excludes"] == []
    assert policy["keyrings"] == {}
    assert policy["ima-buf"] == {}
    for key, value in policy.items():
        if key != "digests":
            check_member(key, value)  # our own schema agrees with what we write
    check_required(policy)


def test_paths_as_the_kernel_records_them(tmp_path: Path) -> None:
    digests = _export(tmp_path, ExportOptions(prefix="/opt/app/"))["digests"]
    assert set(digests) == {"/opt/app/bin/tool", "/opt/app/lib/with_space.so", "/opt/app/etc/c"}
    assert _export(tmp_path / "root")["digests"].keys() >= {"/bin/tool"}  # default prefix /


def test_digests_are_whole_file_hashes_only(tmp_path: Path) -> None:
    manifest, ring = manifest_and_ring(tmp_path)
    out = io.StringIO()
    with open_verified(manifest, ring) as m:
        export_policy(m, out, None, ExportOptions(prefix="/p"))
        verity = {e.path.decode(): e.verity.hex() for e in m.entries() if isinstance(e, FileEntry)}
    digests = json.loads(out.getvalue())["digests"]
    data = FILES["bin/tool"]
    assert digests["/p/bin/tool"] == [sha256(data), hashlib.sha512(data).hexdigest()]
    everything = {d for ds in digests.values() for d in ds}
    assert not everything & set(verity.values())  # never an fs-verity digest


def test_names_one_to_the_kernel_are_merged(tmp_path: Path) -> None:
    files = {"a b": b"spaced", "a_b": b"underscored", "c": b"plain"}
    manifest, ring = manifest_and_ring(tmp_path, files)
    out = io.StringIO()
    with open_verified(manifest, ring) as m:
        report = export_policy(m, out, None, ExportOptions(prefix="/x"))
    digests = json.loads(out.getvalue())["digests"]
    assert report.merged == 1
    assert report.files == 3
    assert set(digests) == {"/x/a_b", "/x/c"}
    assert sha256(b"spaced") in digests["/x/a_b"]
    assert sha256(b"underscored") in digests["/x/a_b"]


def test_symlinks_and_non_utf8_names_left_out(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    (tree / "link").symlink_to("f")
    with open(os.fsencode(tree) + b"/bad\xff", "wb") as f:
        f.write(b"y")
    manifest = make_manifest(tmp_path, tree, make_key())
    out = io.StringIO()
    with open_verified(manifest, keyring(make_key())) as m:
        report = export_policy(m, out, None)
    assert report.symlinks == 1
    assert report.not_utf8 == ["bad\\xff"]
    assert set(json.loads(out.getvalue())["digests"]) == {"/f"}


def test_boot_aggregate_and_excludes(tmp_path: Path) -> None:
    boot = "ab" * 32
    options = ExportOptions(boot_aggregate=(boot, boot), excludes=("^/tmp/", r".*\.log$"))
    policy = _export(tmp_path, options)
    assert policy["digests"]["boot_aggregate"] == [boot]
    assert policy["excludes"] == ["^/tmp/", r".*\.log$"]
    assert "boot_aggregate" not in _export(tmp_path / "no")["digests"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prefix": "opt"}, UsageError, "absolute"),
        ({"log_hash_alg": "md5"}, UsageError, "log hash algorithm"),
        ({"boot_aggregate": ("xyz",)}, FormatError, "hex"),
        ({"excludes": ("(a)\\1",)}, PolicyError, "backreference"),
    ],
)
def test_bad_options_refused(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ExportOptions(**kwargs)


def test_kernel_path() -> None:
    assert kernel_path("/", b"a b/c") == "/a_b/c"
    assert kernel_path("/opt/", b"x") == "/opt/x"
    assert kernel_path("/opt", b"x") == "/opt/x"
    assert kernel_path("/", b"\xff") is None


def _cert_with_skid(tmp: Path, skid: bytes) -> Path:
    """A keyring of one certificate whose SKID is ``skid`` (not the SHA-1 of the key)."""
    _key, cert = ec_certificate("skid test", skid=skid)
    ring = tmp / "ring"
    ring.mkdir()
    (ring / "c.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return ring


def test_verification_keys_carry_the_skid_keyids(tmp_path: Path) -> None:
    skid = bytes(range(16, 36))
    ring = Keyring.from_directory(_cert_with_skid(tmp_path, skid))
    keys = json.loads(verification_keys(ring))
    assert keys["keyids"] == [int.from_bytes(skid[-4:], "big")]
    (cert,) = list(ring)
    public = cert.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert keys["keyids"] != [keyid_from_public_key(public)]  # what keylime derives by itself
    listed = serialization.load_der_public_key(base64.b64decode(keys["pubkeys"][0]))
    assert isinstance(listed, ec.EllipticCurvePublicKey)
    assert listed.public_numbers() == public.public_numbers()
    check_member("verification-keys", verification_keys(ring))
    assert verification_keys(None) == ""
    assert verification_keys(Keyring()) == ""


def test_a_bad_manifest_entry_writes_nothing(tmp_path: Path) -> None:
    manifest, _ring = manifest_and_ring(tmp_path)
    lines = manifest.read_bytes().splitlines(keepends=True)[:-1]
    lines[2] = lines[2].replace(b'"type":"file"', b'"type":"fifo"')
    manifest.write_bytes(resign(lines))
    out = io.StringIO()
    with open_verified(manifest, keyring(make_key())) as m, pytest.raises(FormatError):
        export_policy(m, out, None)
    assert out.getvalue() == ""
