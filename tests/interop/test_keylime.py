"""pyverity's runtime policies and allowlist verdicts checked with keylime's own code (7.14.3):
``validate_runtime_policy`` accepts every policy ``manifest export`` writes, and
``process_measurement_list`` (with ``log_hash_alg`` the list's template-hash algorithm) passes
a list pyverity wrote for the tree, fails it once a file outside the policy is measured and
once a file's content no longer matches; ``log verify --allowlist`` says the same."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyverity.format.measurelist import DigestField
from pyverity.keys.generate import generate_key
from pyverity.measure import MeasurementLog
from tests.interop.keylime_support import keylime_ima

pytestmark = pytest.mark.interop

FILES = {"bin/tool": b"a tool\n" * 100, "lib/with space.so": b"\x7fELF" + bytes(300), "etc/c": b""}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    key = generate_key(tmp_path / "key", "rsa", bits=2048)
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "ima.der").write_bytes(key.der_path.read_bytes())
    tree = tmp_path / "tree"
    for rel, data in FILES.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    manifest = tmp_path / "m.jsonl"
    made = _cli("manifest", "create", "-o", str(manifest), "--key", str(key.key_path),
                "--cert", str(key.der_path), str(tree))  # fmt: skip
    assert made.returncode == 0, made.stderr
    return {"tmp": tmp_path, "ring": ring, "tree": tree, "manifest": manifest}


def _list(path: Path, files: dict[str, bytes]) -> Path:
    log = MeasurementLog.open(path, default_template="ima-ng")
    for rel, data in files.items():
        digest = DigestField("sha256", hashlib.sha256(data).digest())
        log.append(digest, "/opt/app/" + rel, template="ima-ng")
    log.close()
    return path


def _ascii(path: Path) -> list[str]:
    shown = _cli("log", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.splitlines(keepends=True)


def _export(s: dict[str, Path], *extra: str) -> dict[str, Any]:
    out = s["tmp"] / "policy.json"
    res = _cli("manifest", "export", "--format", "keylime", "--keyring", str(s["ring"]),
               "--prefix", "/opt/app", "-o", str(out), *extra, str(s["manifest"]))  # fmt: skip
    assert res.returncode == 0, res.stderr
    policy: dict[str, Any] = json.loads(out.read_text())
    return policy


def _keylime_ok(policy: dict[str, Any], lines: list[str]) -> bool:
    ima = keylime_ima()
    from keylime.common.algorithms import Hash

    _hash, failure = ima.process_measurement_list(
        None, lines, json.loads(json.dumps(policy)), hash_alg=Hash.SHA1
    )
    return not failure


def test_policy_passes_keylime_schema(setup: dict[str, Path]) -> None:
    ima = keylime_ima()
    policy = _export(setup, "--exclude", r"^/tmp/", "--exclude", r".*\.log$")
    ima.validate_runtime_policy(policy)
    assert set(policy["digests"]) == {"/opt/app/bin/tool", "/opt/app/lib/with_space.so",
                                      "/opt/app/etc/c"}  # fmt: skip
    assert policy["digests"]["/opt/app/bin/tool"] == [hashlib.sha256(FILES["bin/tool"]).hexdigest()]
    keys = json.loads(policy["verification-keys"])
    from pyverity.keys import Keyring

    assert keys["keyids"] == [c.keyid for c in Keyring.from_directory(setup["ring"])]


def test_same_verdicts_as_keylime(setup: dict[str, Path]) -> None:
    tmp = setup["tmp"]
    good = _list(tmp / "good", FILES)
    boot = _cli("log", "show", "--json", str(good))
    boot_hex = json.loads(boot.stdout)[0]["digest"].split(":")[1]
    policy = _export(setup, "--boot-aggregate", str(good))
    keylime_ima().validate_runtime_policy(policy)
    policy_path = tmp / "policy.json"
    unknown = _list(tmp / "unknown", {**FILES, "bin/intruder": b"not in the policy"})
    changed = _list(tmp / "changed", {**FILES, "bin/tool": b"changed content"})
    for lst, ok in ((good, True), (unknown, False), (changed, False)):
        assert _keylime_ok(policy, _ascii(lst)) is ok, lst
        res = _cli("log", "verify", "--allowlist", str(policy_path), str(lst))
        assert (res.returncode == 0) is ok, res.stdout + res.stderr
        via_manifest = _cli("log", "verify", "--allowlist", str(setup["manifest"]), "--keyring",
                            str(setup["ring"]), "--prefix", "/opt/app", "--boot-aggregate",
                            boot_hex, str(lst))  # fmt: skip
        assert (via_manifest.returncode == 0) is ok, via_manifest.stdout + via_manifest.stderr
    assert "/opt/app/bin/intruder" in _cli("log", "verify", "--allowlist", str(policy_path),
                                           str(unknown)).stdout  # fmt: skip
    res = _cli("log", "verify", "--json", "--allowlist", str(policy_path), str(changed))
    kinds = {(p["kind"], p["name"]) for p in json.loads(res.stdout)["problems"]}
    assert ("mismatch", "/opt/app/bin/tool") in kinds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "expected"),
        ('{"meta": {"version": 1, "generator": 3}}', "lacks"),
        (('{"meta": {"version": 1, "generator": 3}, "release": 0, "digests": {"/a": ["xyz"]},'
          ' "excludes": [], "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg":'
          ' "sha1", "dm_policy": null}, "ima-buf": {}, "verification-keys": ""}'), "hex"),
        (('{"meta": {"version": 1, "generator": 3}, "release": 0, "digests": {},'
          ' "excludes": ["(a)\\\\1"], "keyrings": {}, "ima": {"ignored_keyrings": [],'
          ' "log_hash_alg": "sha1", "dm_policy": null}, "ima-buf": {}, "verification-keys": ""}'),
         "backreference"),
    ],
)  # fmt: skip
def test_bad_policies_one_line(setup: dict[str, Path], text: str, message: str) -> None:
    lst = _list(setup["tmp"] / "l", FILES)
    bad = setup["tmp"] / "bad.json"
    bad.write_text(text)
    res = _cli("log", "verify", "--allowlist", str(bad), str(lst))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
