"""``load_allowlist`` and ``AllowlistChecker``: each verdict of keylime's ``ima.py`` (allowed,
excluded, by signature, unknown, mismatch; ima-buf by keyrings and ima-buf; violations), a
manifest judged by the kind of digest, and bad policies refused in one line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pyverity.attest.allowlist import AllowlistChecker, load_allowlist
from pyverity.errors import Error, FormatError, PolicyError, UsageError
from pyverity.format.listascii import parse_ascii_line
from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.keys import Keyring, load_signer, sign_v2
from pyverity.manifest.model import FileEntry
from tests.unit.attest.helpers import FILES, manifest_and_ring, open_verified, sha256
from tests.unit.keys.keyhelpers import keyring_dir, make_key

_VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "keylime"
#: ima-buf entries of keylime's own test data: a key for the .ima keyring, a device-mapper one.
_BUFFERS = [
    ln
    for name in ("ima_ast.ascii", "ima_verification.ascii")
    for ln in (_VECTORS / name).read_text().splitlines()
    if " ima-buf " in ln
]


def policy(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "meta": {"version": 1, "generator": 3},
        "release": 0,
        "digests": {"/bin/a": [sha256(b"a")], "/bin/b": [sha256(b"b"), sha256(b"b2")]},
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }
    base.update(members)
    return base


def write(tmp: Path, obj: object, name: str = "policy.json") -> str:
    path = tmp / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def ng(name: str, data: bytes, template: str = "ima-ng", sig: bytes = b"") -> MeasurementRecord:
    return MeasurementRecord.for_file(
        template, DigestField("sha256", hashlib.sha256(data).digest(), "ima"), name, sig
    )


def v2(name: str, digest: bytes) -> MeasurementRecord:
    return MeasurementRecord.for_file("ima-ngv2", DigestField("sha256", digest, "verity"), name)


def judge(
    allowlist_path: str, records: list[MeasurementRecord], keyring: Keyring | None = None, **kw: Any
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    with load_allowlist(allowlist_path, keyring=keyring, **kw) as allow:
        checker = AllowlistChecker(allow, keyring)
        problems = [checker.check(i, r) for i, r in enumerate(records, 1)]
    return [(p.kind, p.name) for p in problems if p], checker.counts.as_dict()


def test_policy_verdicts(tmp_path: Path) -> None:
    path = write(tmp_path, policy(excludes=["^/tmp/", r".*\.log$"]))
    records = [
        ng("/bin/a", b"a"),
        ng("/bin/b", b"b2"),  # any listed digest
        ng("/bin/b", b"changed"),
        ng("/bin/new", b"x"),
        ng("/tmp/anything", b"x"),
        ng("/var/x.log", b"x"),
        ng("/var/x.logs", b"x"),
    ]
    problems, counts = judge(path, records)
    assert problems == [("mismatch", "/bin/b"), ("unknown", "/bin/new"), ("unknown", "/var/x.logs")]
    assert counts == {"checked": 7, "allowed": 2, "excluded": 2, "signed": 0, "unknown": 2,
                      "mismatch": 1, "other": 0}  # fmt: skip


def test_verity_digest_never_matches_a_keylime_policy(tmp_path: Path) -> None:
    # a 256-byte descriptor file's sha256 is the fs-verity digest: listing it must not help
    digest = hashlib.sha256(b"a").digest()
    with load_allowlist(write(tmp_path, policy()), keyring=None) as allow:
        p = AllowlistChecker(allow).check(1, v2("/bin/a", digest))
    assert p is not None
    assert p.kind == "mismatch"
    assert "holds file hashes only" in p.reason


def test_manifest_by_kind_of_digest(tmp_path: Path) -> None:
    manifest, ring = manifest_and_ring(tmp_path)
    keyring = Keyring.from_directory(ring)
    with open_verified(manifest, ring) as m:
        verity = {e.path.decode(): e.verity for e in m.entries() if isinstance(e, FileEntry)}
    tool = FILES["bin/tool"]
    records = [
        ng("/opt/app/bin/tool", tool),
        MeasurementRecord.for_file(
            "ima-ng", DigestField("sha512", hashlib.sha512(tool).digest()), "/opt/app/bin/tool"
        ),
        v2("/opt/app/lib/with_space.so", verity["lib/with space.so"]),  # spaces as _
        v2("/opt/app/etc/c", verity["bin/tool"]),  # another file's verity digest
        # the verity digest as a file hash (ima-ng): a different kind, never allowed
        MeasurementRecord.for_file(
            "ima-ng", DigestField("sha256", verity["bin/tool"]), "/opt/app/bin/tool"
        ),
        ng("/opt/app/bin/other", b"x"),
    ]
    problems, counts = judge(str(manifest), records, keyring, prefix="/opt/app")
    assert problems == [
        ("mismatch", "/opt/app/etc/c"),
        ("mismatch", "/opt/app/bin/tool"),
        ("unknown", "/opt/app/bin/other"),
    ]
    assert counts["allowed"] == 3


def test_manifest_needs_a_keyring_and_must_verify(tmp_path: Path) -> None:
    manifest, _ring = manifest_and_ring(tmp_path)
    with pytest.raises(UsageError, match="give --allowlist-keyring"):
        load_allowlist(str(manifest), keyring=None)
    other = Keyring.from_directory(keyring_dir(make_key("ecdsa", "P-256")))
    with pytest.raises(Error) as info:
        load_allowlist(str(manifest), keyring=other)
    assert "\n" not in str(info.value)


def test_signature_passes_with_a_keyring(tmp_path: Path) -> None:
    key = make_key()
    ring = Keyring.from_directory(keyring_dir(key))
    digest = hashlib.sha256(b"signed content").digest()
    sig = sign_v2(load_signer(key.key_path, cert=key.der_path), 4, digest).to_bytes()
    record = MeasurementRecord.for_file(
        "ima-sig", DigestField("sha256", digest), "/usr/bin/signed", sig
    )
    path = write(tmp_path, policy())
    problems, counts = judge(path, [record], ring)
    assert problems == []
    assert counts["signed"] == 1
    assert judge(path, [record])[0] == [("unknown", "/usr/bin/signed")]  # no keyring given


def test_boot_aggregate_and_extra_excludes(tmp_path: Path) -> None:
    boot = MeasurementRecord.for_file("ima-ng", DigestField("sha1", bytes(20)), "boot_aggregate")
    path = write(tmp_path, policy())
    assert judge(path, [boot])[0] == [("unknown", "boot_aggregate")]
    assert judge(path, [boot], boot_aggregate=("00" * 20,))[0] == []
    assert judge(path, [ng("/srv/x", b"x")], excludes=("^/srv/",))[0] == []
    with pytest.raises(FormatError, match="hex"):
        judge(path, [boot], boot_aggregate=("zz",))


def test_buffers_by_keyrings_and_ima_buf(tmp_path: Path) -> None:
    records = [parse_ascii_line(line) for line in _BUFFERS]
    by_name = {r.file_name: r for r in records}
    assert {".ima", "device_resume"} <= set(by_name), by_name
    key_entry, dm_entry = by_name[".ima"], by_name["device_resume"]  # a certificate; dm text
    assert key_entry.digest is not None
    assert dm_entry.digest is not None
    key_hex, dm_hex = key_entry.digest.digest.hex(), dm_entry.digest.digest.hex()
    both = [key_entry, dm_entry]
    allowed = policy(keyrings={".ima": [key_hex]}, **{"ima-buf": {"device_resume": [dm_hex]}})
    assert judge(write(tmp_path, allowed), both)[0] == []
    # as keylime: a key is judged by keyrings only, other buffers by ima-buf only
    swapped = policy(keyrings={"device_resume": [dm_hex]}, **{"ima-buf": {".ima": [key_hex]}})
    assert judge(write(tmp_path, swapped), both)[0] == [
        ("unknown", ".ima"),
        ("unknown", "device_resume"),
    ]
    wrong = policy(keyrings={".ima": ["00" * 32]}, **{"ima-buf": {"device_resume": ["00" * 20]}})
    assert judge(write(tmp_path, wrong), both)[0] == [
        ("mismatch", ".ima"),
        ("mismatch", "device_resume"),
    ]
    ima = {"log_hash_alg": "sha1", "dm_policy": None}
    ignored = policy(ima={"ignored_keyrings": ["*"], **ima})
    assert judge(write(tmp_path, ignored), both)[0] == [("unknown", "device_resume")]
    assert judge(write(tmp_path, ignored), both, excludes=("^device_",))[0] == []


def test_violation_is_a_problem(tmp_path: Path) -> None:
    record = dataclasses.replace(ng("/bin/a", b"a"), template_digest=bytes(20))
    assert record.is_violation
    assert judge(write(tmp_path, policy()), [record])[0] == [("other", "/bin/a")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "expected '{'"),
        ("{", "the end"),
        ('{"meta": {"version": 1, "generator": 3}}', "lacks 'release'"),
        (json.dumps(policy()) + " []", "text after the JSON document"),
        (json.dumps(policy()).replace('"release": 0', '"release": 0, "release": 1'), "duplicate"),
        (json.dumps(policy()).replace('"/bin/b"', '"/bin/a"'), "listed twice"),
        (json.dumps(policy(digests={"/a": []})), "non-empty list"),
        (json.dumps(policy(digests={"/a": ["ABCD" * 10]})), "lowercase hex"),
        (json.dumps(policy(meta={"version": 1})), "'meta' must be an object"),
        (json.dumps(policy(meta={"version": 1, "generator": 9})), "generator"),
        (json.dumps(policy(release=-1)), "'release'"),
        (json.dumps(policy(excludes="x")), "'excludes' must be a list"),
        (json.dumps(policy(keyrings=[])), "'keyrings' must be an object"),
        (json.dumps(policy(ima={"log_hash_alg": "sha1"})), "'ima' must hold"),
        (
            json.dumps(
                policy(ima={"ignored_keyrings": [], "log_hash_alg": "md5", "dm_policy": None})
            ),
            "log_hash_alg",
        ),
        (
            json.dumps(
                policy(ima={"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": {}})
            ),
            "dm_policy must be null",
        ),
        (json.dumps(policy(**{"verification-keys": "{"})), "not JSON"),
        (
            json.dumps(policy(**{"verification-keys": '{"keyids": ["x"], "pubkeys": []}'})),
            "keyids must be a list of integers",
        ),
        ('{"payload": "e30=", "payloadType": "x", "signatures": []}', "DSSE envelope"),
        (b"\xff\xfe".decode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_policies_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(Error) as info:
        load_allowlist(str(path), keyring=None)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("regex", ["(a)\\1", "(?=x)", "(?<!x)y", "a++", "(?i)x", "\\bx"])
def test_unsafe_excludes_refused(tmp_path: Path, regex: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_allowlist(write(tmp_path, policy(excludes=[regex])), keyring=None)
    assert "without backtracking" in str(info.value)
    assert "\n" not in str(info.value)


def test_prefix_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="absolute"):
        load_allowlist(write(tmp_path, policy()), keyring=None, prefix="opt")
