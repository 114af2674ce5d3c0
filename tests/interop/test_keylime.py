"""pyverity's runtime policies and allowlist verdicts checked with keylime's own code (7.14.3):
``validate_runtime_policy`` accepts every policy ``manifest export`` writes, and
``process_measurement_list`` (with ``log_hash_alg`` the list's template-hash algorithm) passes
a list pyverity wrote for the tree, fails it once a file outside the policy is measured and
once a file's content no longer matches; ``log verify --allowlist`` says the same, entry by
entry. The lists: written by ``MeasurementLog``, by a real pyverity FUSE mount, and a real 6.1
kernel's (tests/vectors/kernel-6.1-ima). Signatures by pyverity verify in keylime through the
exported ``verification-keys``."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from pyverity.attest.keylime import verification_keys
from pyverity.format.ima import algo_by_name
from pyverity.format.measurelist import DigestField
from pyverity.keys import Keyring, load_signer, sign_v2
from pyverity.keys.generate import GeneratedKey, generate_key
from pyverity.measure import MeasurementLog
from pyverity.protect.sign import imasign_file, sign_file
from tests.interop.fuse_helpers import fuse_skip_reason, mounted, protect
from tests.interop.keylime_support import keylime_ima
from tests.unit.keys.keyhelpers import ec_certificate, pkcs8_pem
from tests.unit.manifest.helpers import make_tree

pytestmark = pytest.mark.interop

FILES = {"bin/tool": b"a tool\n" * 100, "lib/with space.so": b"\x7fELF" + bytes(300), "etc/c": b""}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *args], capture_output=True, text=True, check=False
    )


def _key_and_ring(tmp: Path) -> tuple[GeneratedKey, Path]:
    """A fresh RSA-2048 key (``generate_key``'s files under ``tmp/key``) and a keyring
    directory ``tmp/ring`` holding its certificate."""
    key = generate_key(tmp / "key", "rsa", bits=2048)
    ring = tmp / "ring"
    ring.mkdir()
    (ring / "ima.der").write_bytes(key.der_path.read_bytes())
    return key, ring


def _create_manifest(manifest: Path, key: GeneratedKey, tree: Path) -> None:
    """``pyverity manifest create -o manifest`` of ``tree``, signed with ``key``."""
    made = _cli("manifest", "create", "-o", str(manifest), "--key", str(key.key_path),
                "--cert", str(key.der_path), str(tree))  # fmt: skip
    assert made.returncode == 0, made.stderr


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    key, ring = _key_and_ring(tmp_path)
    tree = tmp_path / "tree"
    for rel, data in FILES.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    manifest = tmp_path / "m.jsonl"
    _create_manifest(manifest, key, tree)
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


def test_awkward_names_pass_keylime_schema(tmp_path: Path) -> None:
    """Names JSON must escape (quotes, backslashes, newlines, tabs), non-ASCII ones, spaces, a
    symlink and names that are not UTF-8 (left out): keylime accepts the policy, and reads
    back each name as the kernel would record it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    paths = make_tree(tree)
    key, ring = _key_and_ring(tmp_path)
    manifest = tmp_path / "m.jsonl"
    _create_manifest(manifest, key, tree)
    res = _cli("manifest", "export", "--format", "keylime", "--keyring", str(ring),
               "--prefix", "/srv/x y", str(manifest))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "not UTF-8" in res.stderr
    policy = json.loads(res.stdout)
    keylime_ima().validate_runtime_policy(policy)
    wanted = set()
    for p in paths:
        if p in (b"link", b"fifo"):
            continue
        try:
            wanted.add(("/srv/x y/" + p.decode()).replace(" ", "_"))
        except UnicodeDecodeError:
            continue
    assert set(policy["digests"]) == wanted


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


# -- per-entry verdicts ---------------------------------------------------------------------------


def _keylime_failing(policy: dict[str, Any], lines: list[str], keyrings: Any = None) -> set[str]:
    """The names of the entries keylime's ``process_measurement_list`` fails, each judged on
    its own (keylime's failure events name a path only for files not in the policy)."""
    ima = keylime_ima()
    from keylime.common.algorithms import Hash

    failing = set()
    for line in lines:
        _hash, failure = ima.process_measurement_list(
            None, [line], copy.deepcopy(policy), ima_keyrings=keyrings, hash_alg=Hash.SHA1
        )
        if failure:
            failing.add(line.split(" ")[4].rstrip("\n"))
    return failing


def _pyverity_failing(*argv: str) -> set[str]:
    """The names ``log verify --json`` reports problems for (it must exit 1 if there are)."""
    res = _cli("log", "verify", "--json", *argv)
    report = json.loads(res.stdout)
    assert (res.returncode == 0) is report["ok"], res.stdout + res.stderr
    return {p["name"] for p in report["problems"]}


# -- a real kernel's list -------------------------------------------------------------------------

KERNEL = Path(__file__).resolve().parents[1] / "vectors" / "kernel-6.1-ima"
#: The measured files of the kernel vector (README: /mnt/NAME in the guest).
KERNEL_FILES = ("hello", "big", "ngv2", "classic", "denied")


def _kernel_policy(tmp: Path, tampered: str | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """A manifest of the guest's files (``tampered``'s content changed first), the keyring
    verifying it, and the Keylime policy exported from it (--prefix /mnt, the list's
    boot_aggregate)."""
    tree = tmp / "guest"
    tree.mkdir()
    for name in KERNEL_FILES:
        data = (KERNEL / name).read_bytes()
        if name == tampered:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        (tree / name).write_bytes(data)
    key, ring = _key_and_ring(tmp)
    manifest = tmp / "guest.manifest"
    _create_manifest(manifest, key, tree)
    out = tmp / "policy.json"
    res = _cli("manifest", "export", "--format", "keylime", "--keyring", str(ring),
               "--prefix", "/mnt", "--boot-aggregate", str(KERNEL / "binary_runtime_measurements"),
               "-o", str(out), str(manifest))  # fmt: skip
    assert res.returncode == 0, res.stderr
    policy: dict[str, Any] = json.loads(out.read_text())
    keylime_ima().validate_runtime_policy(policy)
    return manifest, ring, policy


def _kernel_lines() -> tuple[list[str], list[str]]:
    """The kernel's ascii list: all lines, and those keylime 7.14 can read (not -ngv2/-sigv2)."""
    lines = (KERNEL / "ascii_runtime_measurements").read_text().splitlines(keepends=True)
    return lines, [ln for ln in lines if ln.split(" ")[2] in ("ima-ng", "ima-sig")]


def test_real_kernel_list(tmp_path: Path) -> None:
    manifest, ring, policy = _kernel_policy(tmp_path)
    assert set(policy["digests"]) == {"boot_aggregate", *(f"/mnt/{n}" for n in KERNEL_FILES)}
    assert policy["digests"]["boot_aggregate"] == ["00" * 32]  # TPM-bypass: zero (sha256)
    lines, readable = _kernel_lines()
    assert [ln.split(" ")[4].strip() for ln in readable] == ["boot_aggregate", "/mnt/classic"]
    # keylime passes what it can read (the ima-sig entries: boot_aggregate, classic by its
    # sha256) and fails exactly the ima-sigv2/ima-ngv2 entries, which it cannot parse
    ima = keylime_ima()
    from keylime.common.algorithms import Hash

    _h, failure = ima.process_measurement_list(None, readable, policy, hash_alg=Hash.SHA1)
    assert not failure, failure.get_event_ids()
    verity = {"/mnt/hello", "/mnt/big", "/mnt/ngv2", "/mnt/denied"}
    assert _keylime_failing(policy, lines) == verity
    _h, failure = ima.process_measurement_list(None, lines, policy, hash_alg=Hash.SHA1)
    assert set(failure.get_event_ids()) == {"ima.parser.entry"}
    # pyverity with the same policy: the same verdicts (an fs-verity digest is never in a
    # Keylime policy), on the kernel's binary list and on the readable part in ascii
    policy_path = tmp_path / "policy.json"
    binary = str(KERNEL / "binary_runtime_measurements")
    assert _pyverity_failing("--allowlist", str(policy_path), binary) == verity
    sub = tmp_path / "readable"
    sub.write_text("".join(readable))
    assert _pyverity_failing("--allowlist", str(policy_path), str(sub)) == set()
    # pyverity with the manifest, which holds the verity digests too: every entry allowed
    via_manifest = ("--allowlist", str(manifest), "--allowlist-keyring", str(ring),
                    "--prefix", "/mnt", "--boot-aggregate", "00" * 32)  # fmt: skip
    assert _pyverity_failing(*via_manifest, binary) == set()
    # and with the kernel's certificate as --keyring: the one entry the kernel refused
    # (denied: the signature of another file's content) is named, as the kernel judged it
    kernel_ring = tmp_path / "kernel-ring"
    kernel_ring.mkdir()
    (kernel_ring / "cert.der").write_bytes((KERNEL / "cert.der").read_bytes())
    assert _pyverity_failing(*via_manifest, "--keyring", str(kernel_ring), binary) == {
        "/mnt/denied"
    }


@pytest.mark.parametrize("tampered", ["classic", "ngv2"])
def test_real_kernel_list_tampered_content(tmp_path: Path, tampered: str) -> None:
    # the guest ran content other than the manifest's (one byte of it)
    manifest, ring, policy = _kernel_policy(tmp_path, tampered)
    _all, readable = _kernel_lines()
    name = f"/mnt/{tampered}"
    binary = str(KERNEL / "binary_runtime_measurements")
    via_manifest = ("--allowlist", str(manifest), "--allowlist-keyring", str(ring),
                    "--prefix", "/mnt", "--boot-aggregate", "00" * 32)  # fmt: skip
    assert _pyverity_failing(*via_manifest, binary) == {name}
    res = _cli("log", "verify", *via_manifest, binary)
    index = {"ngv2": 4, "classic": 6}[tampered]  # boot_aggregate, hello, big, ngv2, denied, classic
    assert f"FAIL entry {index} ({name}):" in res.stdout
    assert "is not an allowed digest of this path" in res.stdout
    if tampered == "classic":  # an ima-sig entry: keylime reads it and says the same
        assert _keylime_failing(policy, readable) == {name}
        assert _pyverity_failing("--allowlist", str(tmp_path / "policy.json"), binary) == {
            name, "/mnt/hello", "/mnt/big", "/mnt/ngv2", "/mnt/denied"
        }  # fmt: skip


# -- verification keys --------------------------------------------------------------------------


def test_pyverity_signatures_verify_in_keylime(tmp_path: Path) -> None:
    """An ``ima-sig`` entry signed by pyverity with a key whose certificate's SKID is not the
    SHA-1 of the key: keylime, given the exported ``verification-keys``, passes it by signature
    (its path is in no ``digests``); with the keyid keylime would derive itself, it does not."""
    skid = bytes(range(40, 60))
    key, cert = ec_certificate("keylime keyid", skid=skid)
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "ima.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path = tmp_path / "ima.key"
    key_path.write_bytes(pkcs8_pem(key))
    signer = load_signer(key_path, cert=ring / "ima.der")
    assert signer.keyid == int.from_bytes(skid[-4:], "big")
    data = b"signed, not listed"
    sig = sign_v2(signer, 4, hashlib.sha256(data).digest()).to_bytes()
    lst = tmp_path / "list"
    log = MeasurementLog.open(lst, default_template="ima-sig")
    log.append(DigestField("sha256", hashlib.sha256(data).digest()), "/usr/bin/signed",
               signature=sig)  # fmt: skip
    log.close()
    lines = [ln for ln in _ascii(lst) if "/usr/bin/signed" in ln]
    keys = verification_keys(Keyring.from_directory(ring))
    policy = {**_empty_policy(), "verification-keys": keys}
    keylime_ima().validate_runtime_policy(policy)
    from keylime.ima.file_signatures import ImaKeyring, ImaKeyrings

    keyrings = ImaKeyrings()
    keyrings.set_tenant_keyring(ImaKeyring.from_string(keys))
    assert _keylime_failing(policy, lines, keyrings) == set()
    derived = ImaKeyrings()  # the same public key, keyid derived by keylime (SHA-1 of the key)
    own = ImaKeyring()
    own.add_pubkey(key.public_key(), None)
    derived.set_tenant_keyring(own)
    assert _keylime_failing(policy, lines, derived) == {"/usr/bin/signed"}
    # pyverity: the same verdicts with the same key, and without it
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(policy))
    argv = ("--allowlist", str(policy_path), "--exclude", "^boot_aggregate$")
    assert _pyverity_failing(*argv, "--keyring", str(ring), str(lst)) == set()
    assert _pyverity_failing(*argv, str(lst)) == {"/usr/bin/signed"}


def _empty_policy() -> dict[str, Any]:
    return {
        "meta": {"version": 1, "generator": 3},
        "release": 0,
        "digests": {},
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


# -- lists written by the pyverity mount -------------------------------------------------------

MOUNT_FILES = {
    "bin/tool": b"a protected tool\n" * 700,  # with a descriptor: verified on every read
    "lib/with space.so": b"\x7fELF" + bytes(5000),  # protected too; spaces as _ in the list
    "etc/conf": b"plain, never protected\n",
}


def _mount_list(src: Path, mnt: Path, lst: Path, policy: Path, reads: list[str]) -> list[str]:
    """Mount ``src`` measuring under ``policy`` into ``lst``, read ``reads`` through it; the
    list in ascii."""
    with mounted(src, mnt, "--policy", str(policy), "--log", str(lst)):
        for rel in reads:
            assert (mnt / rel).read_bytes() == (src / rel).read_bytes()
    return _ascii(lst)


@pytest.mark.root
@pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason()))
def test_lists_written_by_the_mount(tmp_path: Path) -> None:
    """The mount, under a ``measure`` rule without ``digest_type=verity``, records whole-file
    hashes in its ``ima-ng`` entries as the kernel does (issue 10 item 2), so keylime's
    ``process_measurement_list`` and ``log verify --allowlist`` judge its lists alike: a list of
    the manifest's files passes; reading a file outside the policy fails it; so does a file
    whose content (and descriptor) changed."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    for rel, data in MOUNT_FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel == "etc/conf":
            (src / rel).write_bytes(data)
        else:
            protect(src / rel, data)
    key, ring = _key_and_ring(tmp_path)
    manifest = tmp_path / "m.jsonl"
    _create_manifest(manifest, key, src)
    rule = tmp_path / "ima-policy"
    rule.write_text("measure func=FILE_CHECK template=ima-ng\n")
    reads = list(MOUNT_FILES)
    good = tmp_path / "good"
    good_lines = _mount_list(src, mnt, good, rule, reads)
    policy_path = tmp_path / "policy.json"
    res = _cli("manifest", "export", "--format", "keylime", "--keyring", str(ring),
               "--prefix", str(mnt), "--boot-aggregate", str(good), "-o", str(policy_path),
               str(manifest))  # fmt: skip
    assert res.returncode == 0, res.stderr
    policy = json.loads(policy_path.read_text())
    keylime_ima().validate_runtime_policy(policy)
    # the mount's entries: ima-ng, the whole-file sha256 of each file (as the kernel records)
    recorded = {ln.split(" ")[4].rstrip("\n"): ln.split(" ")[3] for ln in good_lines}
    for rel, data in MOUNT_FILES.items():
        name = f"{mnt}/{rel}".replace(" ", "_")
        assert recorded.get(name) == "sha256:" + hashlib.sha256(data).hexdigest(), (name, recorded)
    # an intruder read; then a file whose content and descriptor changed, a plain file changed
    protect(src / "bin/intruder", b"not in the policy")
    unknown_lines = _mount_list(src, mnt, tmp_path / "unknown", rule, [*reads, "bin/intruder"])
    protect(src / "bin/tool", b"another tool\n" * 700)
    (src / "etc/conf").write_bytes(b"changed\n")
    changed_lines = _mount_list(src, mnt, tmp_path / "changed", rule, reads)
    via_manifest = ("--allowlist", str(manifest), "--allowlist-keyring", str(ring),
                    "--prefix", str(mnt), "--boot-aggregate", "00" * 32)  # fmt: skip
    expected = {
        "good": set(),
        "unknown": {f"{mnt}/bin/intruder"},
        "changed": {f"{mnt}/bin/tool", f"{mnt}/etc/conf"},
    }
    for what, lines in (("good", good_lines), ("unknown", unknown_lines),
                        ("changed", changed_lines)):  # fmt: skip
        assert _keylime_ok(policy, lines) is (what == "good"), what
        assert _keylime_failing(policy, lines) == expected[what], what
        lst = str(tmp_path / what)
        assert _pyverity_failing("--allowlist", str(policy_path), lst) == expected[what], what
        assert _pyverity_failing(*via_manifest, lst) == expected[what], what


@pytest.mark.root
@pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason()))
def test_signed_files_on_the_mount(tmp_path: Path) -> None:
    """``ima-sig`` entries of the mount (whole-file hash and the file's signature): a file
    signed by pyverity (v2) passes by signature where its path is in no policy, in keylime
    (through the exported ``verification-keys``) as in ``log verify --keyring``; one changed
    after signing fails both; a v3-signed file (its signature is over the fs-verity digest, not
    the file hash) passes by the policy's file hash in both."""
    key, ring = _key_and_ring(tmp_path)
    signer = load_signer(key.key_path, cert=key.der_path)
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    (src / "bin").mkdir(parents=True)
    (src / "bin/listed-v3").write_bytes(b"signed over its fs-verity digest\n" * 300)
    sign_file(src / "bin/listed-v3", signer)
    (src / "bin/listed-v2").write_bytes(b"signed over its sha256\n" * 200)
    imasign_file(src / "bin/listed-v2", signer, algo_by_name("sha256"))
    manifest = tmp_path / "m.jsonl"
    _create_manifest(manifest, key, src)
    # after the manifest: a signed file no policy lists, and one changed after signing
    (src / "bin/unlisted").write_bytes(b"signed later\n" * 50)
    imasign_file(src / "bin/unlisted", signer, algo_by_name("sha256"))
    (src / "bin/tampered").write_bytes(b"signed, then changed\n" * 50)
    imasign_file(src / "bin/tampered", signer, algo_by_name("sha256"))
    with (src / "bin/tampered").open("r+b") as f:
        f.write(b"S")
    rule = tmp_path / "ima-policy"
    rule.write_text("measure func=FILE_CHECK template=ima-sig\n")
    lst = tmp_path / "list"
    lines = _mount_list(src, mnt, lst, rule, ["bin/listed-v3", "bin/listed-v2", "bin/unlisted",
                                               "bin/tampered"])  # fmt: skip
    assert {ln.split(" ")[2] for ln in lines[1:]} == {"ima-sig"}  # after the boot_aggregate
    policy_path = tmp_path / "policy.json"
    res = _cli("manifest", "export", "--format", "keylime", "--keyring", str(ring),
               "--prefix", str(mnt), "--boot-aggregate", str(lst), "-o", str(policy_path),
               str(manifest))  # fmt: skip
    assert res.returncode == 0, res.stderr
    policy = json.loads(policy_path.read_text())
    from keylime.ima.file_signatures import ImaKeyring, ImaKeyrings

    keyrings = ImaKeyrings()
    keyrings.set_tenant_keyring(ImaKeyring.from_string(policy["verification-keys"]))
    by_signature = {f"{mnt}/bin/tampered"}
    by_digest = {f"{mnt}/bin/unlisted", f"{mnt}/bin/tampered"}
    assert _keylime_failing(policy, lines, keyrings) == by_signature
    assert _keylime_failing(policy, lines) == by_digest
    argv = ("--allowlist", str(policy_path), str(lst))
    assert _pyverity_failing("--keyring", str(ring), *argv) == by_signature
    assert _pyverity_failing(*argv) == by_digest
