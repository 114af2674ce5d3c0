"""``pyverity manifest export --format keylime`` and ``pyverity log verify --allowlist`` as a user
runs them: bad input is one line and exit 1, never a traceback; ``--json`` shapes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pyverity.cli import main
from pyverity.format.measurelist import DigestField
from pyverity.keys import load_signer, sign_v2
from pyverity.measure import MeasurementLog
from tests.unit.attest.helpers import FILES, manifest_and_ring, write_list
from tests.unit.attest.test_allowlist import policy
from tests.unit.keys.keyhelpers import keyring_dir, make_key
from tests.unit.manifest.helpers import resign


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    manifest, ring = manifest_and_ring(tmp_path)
    lst = write_list(tmp_path / "list", FILES)
    return {"tmp": tmp_path, "manifest": manifest, "ring": ring, "list": lst}


def _one_line_exit_1(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: "), err
    assert err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err


def _export(s: dict[str, Path], *extra: str) -> list[str]:
    return ["manifest", "export", "--format", "keylime", "--keyring", str(s["ring"]),
            "--prefix", "/opt/app", *extra, str(s["manifest"])]  # fmt: skip


def _policy_file(s: dict[str, Path], text: str) -> str:
    path = s["tmp"] / "bad.json"
    path.write_text(text)
    return str(path)


_SCHEMA_FAILURES = [
    ("[1, 2]", "expected '{'"),
    ('{"meta": {"version": 1, "generator": 3}}', "lacks 'release', 'digests'"),
    (json.dumps(policy(digests={"/a": ["nothex"]})), "not 40-128 lowercase hex"),
    (json.dumps(policy(ima={"ignored_keyrings": [], "log_hash_alg": "sha1"})), "'ima' must hold"),
]
_UNSAFE = [
    ("(a)\\1", "a backreference"),
    ("(?P<x>a)(?P=x)", "a backreference"),
    ("(?=/usr)", "lookaround"),
    ("(?<=/)x", "lookaround"),
    ("a*+", "possessive"),
    ("(?>a)", "atomic"),
    ("(?i)/tmp", "group extension"),
    ("\\b/tmp", "word boundary"),
    ("a{2000}", "repeat bound"),
    ("(/tmp", "not a valid regex"),
]


@pytest.mark.parametrize(("text", "message"), [("not json", "not JSON"), *_SCHEMA_FAILURES])
def test_policy_not_json_or_failing_the_schema(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    if message == "not JSON":
        message = "expected '{'"  # the first character already says so
    bad = _policy_file(setup, text)
    _one_line_exit_1(capsys, ["log", "verify", "--allowlist", bad, str(setup["list"])], message)


@pytest.mark.parametrize(("regex", "message"), _UNSAFE)
def test_unsafe_regex_in_a_policy_or_an_option(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], regex: str, message: str
) -> None:
    bad = _policy_file(setup, json.dumps(policy(excludes=["^/tmp/", regex])))
    lst = str(setup["list"])
    _one_line_exit_1(capsys, ["log", "verify", "--allowlist", bad, lst], message)
    good = _policy_file(setup, json.dumps(policy()))
    argv = ["log", "verify", "--allowlist", good, "--exclude", regex, lst]
    _one_line_exit_1(capsys, argv, message)
    _one_line_exit_1(capsys, _export(setup, "--exclude", regex), message)


def test_manifest_that_does_not_verify(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = str(keyring_dir(make_key("ecdsa", "P-256")))
    m, lst = str(setup["manifest"]), str(setup["list"])
    verify = ["log", "verify", "--allowlist", m, "--prefix", "/opt/app", str(lst)]
    _one_line_exit_1(capsys, [*verify[:4], "--keyring", other, *verify[4:]], "key")
    _one_line_exit_1(capsys, [*_export(setup)[:4], "--keyring", other, m], "key")
    data = bytearray(setup["manifest"].read_bytes())
    data[data.index(b'"size":') + 7] ^= 1  # one byte of an entry changed
    altered = setup["tmp"] / "altered.jsonl"
    altered.write_bytes(bytes(data))
    ring = str(setup["ring"])
    _one_line_exit_1(
        capsys, ["log", "verify", "--allowlist", str(altered), "--keyring", ring, lst], "altered"
    )
    _one_line_exit_1(capsys, [*_export(setup)[:-1], str(altered)], "altered")
    argv = ["log", "verify", "--allowlist", m, lst]
    assert main(argv) == 2  # a manifest without --keyring: a usage error
    assert "give --allowlist-keyring (or --keyring)" in capsys.readouterr().err
    argv = ["log", "verify", "--allowlist", m, "--allowlist-keyring", other, lst]
    _one_line_exit_1(capsys, argv, "key")


def test_manifest_with_a_bad_entry_signed(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = setup["manifest"].read_bytes().splitlines(keepends=True)[:-1]
    lines[1] = lines[1].replace(b'"type":"file"', b'"type":"door"')
    bad = setup["tmp"] / "bad.jsonl"
    bad.write_bytes(resign(lines, make_key()))
    out = setup["tmp"] / "policy.json"
    _one_line_exit_1(capsys, [*_export(setup, "-o", str(out))[:-1], str(bad)], "unknown type")
    assert not out.exists()  # nothing published
    assert not list(setup["tmp"].glob(".policy.json.*"))


def test_export_json_summary_and_output(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_export(setup, "--json")) == 0
    captured = capsys.readouterr()
    written: dict[str, Any] = json.loads(captured.out)
    assert set(written["digests"]) == {"/opt/app/bin/tool", "/opt/app/lib/with_space.so",
                                       "/opt/app/etc/c"}  # fmt: skip
    assert json.loads(captured.err) == {
        "files": 3,
        "keys": 1,
        "names_merged": 0,
        "not_utf8_left_out": 0,
        "symlinks_left_out": 0,
    }
    out = setup["tmp"] / "p.json"
    assert main(_export(setup, "-o", str(out))) == 0
    assert "Wrote runtime policy" in capsys.readouterr().out
    assert json.loads(out.read_text()) == written


def test_export_boot_aggregate_of_a_list(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_export(setup, "--boot-aggregate", str(setup["list"]))) == 0
    digests = json.loads(capsys.readouterr().out)["digests"]
    assert digests["boot_aggregate"] == ["00" * 32]  # pyverity's lists: a zero sha256 aggregate
    empty = setup["tmp"] / "empty"
    empty.write_bytes(b"")
    _one_line_exit_1(capsys, _export(setup, "--boot-aggregate", str(empty)), "empty")
    kernel = Path(__file__).resolve().parents[2] / "vectors" / "kernel-6.1-ima-pyverity"
    for name in ("ascii_runtime_measurements", "binary_runtime_measurements"):
        assert main(_export(setup, "--boot-aggregate", str(kernel / name))) == 0
        digests = json.loads(capsys.readouterr().out)["digests"]
        assert digests["boot_aggregate"] == [  # a real TPM's (swtpm), from either form
            "6f8ff0bb6a5a8f76a8b01a60571b954695cf7ac31f2666b7756d357bf21cb3d4"
        ]
    headless = setup["tmp"] / "headless"
    log = MeasurementLog.open(headless, boot_aggregate=False)
    log.append(DigestField("sha256", bytes(32)), "/opt/app/bin/tool")
    log.close()
    argv = _export(setup, "--boot-aggregate", str(headless))
    _one_line_exit_1(capsys, argv, "does not start with a boot_aggregate entry")


def test_verify_json_shape(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tmp = setup["tmp"]
    assert main(_export(setup, "--boot-aggregate", str(setup["list"]), "-o", str(tmp / "p"))) == 0
    capsys.readouterr()
    bad = write_list(tmp / "bad", {**FILES, "bin/tool": b"changed", "bin/new": b"new"})
    assert main(["log", "verify", "--json", "--allowlist", str(tmp / "p"), str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["allowlist"] == {"checked": 5, "allowed": 3, "excluded": 0, "signed": 0,
                                   "unknown": 1, "mismatch": 1, "other": 0}  # fmt: skip
    problems = {(p["kind"], p["name"]) for p in report["problems"]}
    assert problems == {("mismatch", "/opt/app/bin/tool"), ("unknown", "/opt/app/bin/new")}
    for p in report["problems"]:
        assert set(p) == {"index", "kind", "name", "reason"}
        assert isinstance(p["index"], int)
    ring = str(setup["ring"])
    via_manifest = ["log", "verify", "--json", "--allowlist", str(setup["manifest"]), "--keyring",
                    ring, "--prefix", "/opt/app", "--boot-aggregate", "00" * 32]  # fmt: skip
    assert main([*via_manifest, str(bad)]) == 1
    again = json.loads(capsys.readouterr().out)
    assert {(p["kind"], p["name"]) for p in again["problems"]} == problems
    assert main([*via_manifest, str(setup["list"])]) == 0
    good = json.loads(capsys.readouterr().out)
    assert good["ok"] is True
    assert good["allowlist"]["allowed"] == 4
    assert good["problems"] == []


def test_verify_text_names_problems_by_path(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = _policy_file(setup, json.dumps(policy()))
    assert main(["log", "verify", "--allowlist", good, str(setup["list"])]) == 1
    out, err = capsys.readouterr()
    assert "FAIL entry 2 (/opt/app/bin/tool): not in the allowlist" in out
    assert err.count("\n") == 1
    assert "4 problem(s)" in err


def test_allowlist_keyring_verifies_the_manifest_only(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # a list signed by a key the manifest's keyring does not hold: --keyring would check its
    # signatures with the manifest's certificates; --allowlist-keyring does not
    other = make_key("ecdsa", "P-256")
    data = FILES["bin/tool"]
    digest = hashlib.sha256(data).digest()
    sig = sign_v2(load_signer(other.key_path, cert=other.der_path), 4, digest).to_bytes()
    lst = setup["tmp"] / "signed"
    log = MeasurementLog.open(lst, default_template="ima-sig")
    log.append(DigestField("sha256", digest), "/opt/app/bin/tool", signature=sig)
    log.close()
    base = ["log", "verify", "--allowlist", str(setup["manifest"]), "--prefix", "/opt/app",
            "--boot-aggregate", "00" * 32]  # fmt: skip
    ring = str(setup["ring"])
    assert main([*base, "--keyring", ring, str(lst)]) == 1
    assert "signature does not verify" in capsys.readouterr().out
    assert main([*base, "--allowlist-keyring", ring, str(lst)]) == 0
    assert "allowlist: 2 allowed, 0 by signature" in capsys.readouterr().out
    both = str(keyring_dir(other))
    assert main([*base, "--allowlist-keyring", ring, "--keyring", both, str(lst)]) == 0
    assert "allowlist: 1 allowed, 1 by signature" in capsys.readouterr().out


def test_excludes_that_match_everything_are_warned_of(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    everything = _policy_file(setup, json.dumps(policy(excludes=["^/tmp/", ""])))
    assert main(["log", "verify", "--allowlist", everything, str(setup["list"])]) == 0
    assert "WARNING: the excludes match every name" in capsys.readouterr().err
    assert main(_export(setup, "--exclude", ".*")) == 0
    assert "WARNING: --exclude match every name" in capsys.readouterr().err
