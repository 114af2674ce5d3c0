"""Kernel keyrings, token signatures and dump-metadata, judged by the real kernels (one boot
each of ``harness.KERNELS``; expectations from ``cases.KernelFacts``, never a skip for what a
kernel lacks).

* ``pyverity key import`` inside the VM puts certificates where the kernel looks: into ``_ima``
  (made by the import) and ``%keyring:_ima``, after which IMA appraisal (``appraise_type=imasig``
  for v2, ``appraise_type=sigv3`` for v3) opens the files signed with those keys on the host and
  refuses tampered files and files signed by a key never imported; into ``.fs-verity``, after
  which ``pyverity enable --kernel --signature`` succeeds where it failed before.
* ``.ima``: Debian's 6.1 has none (``CONFIG_INTEGRITY_TRUSTED_KEYRING`` unset), and the import
  says so in one line; where it exists, a self-signed certificate is refused.
* v3 signatures made on the host with SoftHSM2 token keys (RSA; ECDSA, which 6.12 verifies and
  Debian's 6.1, without CONFIG_CRYPTO_ECDSA, refuses).
* fs-verity built-in signatures under ``fs.verity.require_signatures=1``, the certificate in
  ``.fs-verity``: the host's ``fsverity enable --signature`` (run inside the VM) accepts what
  ``pyverity sign --builtin-sig`` wrote; an unsigned enable is refused with EPERM, a signature
  of other content with EKEYREJECTED, one by a key not in the keyring with ENOKEY; ``pyverity
  measure`` shows the kernel's digest, and pyverity's own check of a built-in signature (the
  mount's, ``fuse.verity_ioctl.check_builtin_signature``) refuses with the same errno.
* ``pyverity dump-metadata`` of kernel-verity files, byte for byte ``fsverity dump_metadata``
  (the host's binary, run inside the VM) and the tree and descriptor pyverity computes here.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyverity.format import hashalg
from pyverity.format.params import TreeParams
from pyverity.hashing import build_tree
from pyverity.keys import Keyring
from tests.kernel import harness
from tests.kernel.cases import (
    GUEST_PY,
    HOST_ENTER,
    HOST_LEAVE,
    SALT11,
    KernelFacts,
    parse_lines,
    payload,
)
from tests.kernel.conftest import (
    _TIMING,
    KERNEL_IDS,
    _need_vm,
    boot_script,
    config_option,
    kernel_config,
)

pytestmark = pytest.mark.kernel

#: Appraised files: name -> (owner, fs-verity enabled). fowner 1000: v2 (imasig) rule; 1001: v3.
APPRAISED = {
    "v2-good": (1000, False),
    "v2-tampered": (1000, False),
    "v2-wrongkey": (1000, False),
    "v3tok-good": (1001, True),
    "v3tok-tampered": (1001, True),
    "v3tok-ec": (1001, True),
}
POLICY = (
    "appraise func=FILE_CHECK mask=MAY_READ fowner=1000 appraise_type=imasig\n"
    "appraise func=FILE_CHECK mask=MAY_READ fowner=1001 digest_type=verity appraise_type=sigv3\n"
)
DM_SIZES = {"dm-a": (1 << 20) + 1, "dm-b": 300_000, "dm-c": 5000}
#: Enabled by the host's ``fsverity enable`` under fs.verity.require_signatures=1: name ->
#: (the built-in signature given, the kernel's errno). "wrongsig": the imported key's signature
#: of another file; "unknown": signed by a key never imported.
REQUIRED = {
    "rs-good": ("rs-good", 0),
    "rs-unsigned": (None, errno.EPERM),
    "rs-wrongsig": ("rs-wrongsig", errno.EKEYREJECTED),
    "rs-unknown": ("rs-unknown", errno.ENOKEY),
}


@dataclass
class KeysRun:
    kernel: harness.KernelImage
    stage: Path
    results: Path
    lines: dict[tuple[str, str], str]
    steps: dict[str, dict[str, object]]
    token: bool  # SoftHSM2 signed the v3tok files
    config: str  # the kernel's /boot/config-<version>, "" if absent
    boot: harness.VMRun
    keyring: Path  # the certificates imported into .fs-verity (for pyverity's own check)

    guest_dir = "/mnt/keys"

    def step(self, name: str) -> dict[str, object]:
        assert name in self.steps, self.text("guest.out")
        return self.steps[name]

    def text(self, name: str) -> str:
        path = self.results / name
        return path.read_text() if path.exists() else f"(no {name})"

    def option(self, name: str) -> str:
        """``y``, ``m`` or ``not set`` in the kernel's config."""
        return config_option(self.config, name)

    @property
    def facts(self) -> KernelFacts:
        return KernelFacts(self.kernel.version)


def _pyverity(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *args],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, f"pyverity {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _token() -> object | None:
    """The SoftHSM2 token of the interop tests, or None where SoftHSM2 is missing (not CI)."""
    from tests.interop.softhsm import softhsm

    try:
        return softhsm()
    except pytest.skip.Exception:
        return None


def _sign_v3_with_token(d: Path, token: object) -> None:
    from tests.interop.softhsm import SoftToken

    assert isinstance(token, SoftToken)
    (d / "token-rsa.der").write_bytes(token.rsa.der_path.read_bytes())
    (d / "token-ec.der").write_bytes(token.ec.der_path.read_bytes())
    signing = d.parent / "token-signing"
    signing.mkdir()
    for name, obj in (("v3tok-good", "rsa"), ("v3tok-tampered", "rsa"), ("v3tok-ec", "ec")):
        (signing / name).write_bytes(payload(name, 7000))
        # certificate and keyid from the token's certificate object with the key's CKA_ID
        _pyverity("sign", "--key", token.uri(obj, pin=True), "--sigfile", str(signing / name),
                  env=token.env())  # fmt: skip
        shutil.copyfile(signing / f"{name}.sig", d / f"{name}.ima")
        data = payload(name, 7000)
        if name == "v3tok-tampered":
            data = data[:50] + bytes([data[50] ^ 1]) + data[51:]
        (d / name).write_bytes(data)


def _stage(d: Path, base: Path) -> bool:
    """Write keys, files and signatures to ``d`` (the guest's /mnt/keys); True with a token."""
    keys, other = base / "keys", base / "other"
    _pyverity("key", "generate", "--type", "rsa", "--out", str(keys), "--subject", "pyverity kr")
    _pyverity("key", "generate", "--type", "rsa", "--out", str(other), "--subject", "not imported")
    for name in ("ima.der", "ima.pem"):
        shutil.copyfile(keys / name, d / name)
    file_key = ["--key", str(keys / "ima.key"), "--cert", str(keys / "ima.der")]
    other_key = ["--key", str(other / "ima.key"), "--cert", str(other / "ima.der")]
    signing = base / "signing"
    signing.mkdir()
    # v2 (evmctl ima_sign's 0x03) signatures of whole files, made by pyverity with a file key.
    for name in ("v2-good", "v2-tampered", "v2-wrongkey"):
        (signing / name).write_bytes(payload(name, 9000))
        key = other_key if name == "v2-wrongkey" else file_key
        _pyverity("sign", "--imasig", "--sigfile", *key, str(signing / name))
        shutil.copyfile(signing / f"{name}.sig", d / f"{name}.ima")
        data = payload(name, 9000)
        (d / name).write_bytes(data + b"!" if name == "v2-tampered" else data)
    # fs-verity built-in signatures.
    for name in ("bsig-before", "bsig-good", "bsig-other"):
        (d / name).write_bytes(payload(name, 20_000))
        key = other_key if name == "bsig-other" else file_key
        _pyverity("sign", *key, "--builtin-sig", str(d / f"{name}.sig"), str(d / name))
    (d / "required.json").write_text(
        json.dumps({n: None if s is None else f"{s}.sig" for n, (s, _) in REQUIRED.items()})
    )
    for name, (signed, _) in REQUIRED.items():
        (d / name).write_bytes(payload(name, 30_000))
        if signed is None:
            continue
        key = other_key if name == "rs-unknown" else file_key
        content = d / name
        if name == "rs-wrongsig":
            content = signing / "rs-wrongsig.other"
            content.write_bytes(payload("rs-good", 30_000)[::-1])
        _pyverity("sign", *key, "--builtin-sig", str(d / f"{name}.sig"), str(content))
    for name, size in DM_SIZES.items():
        (d / name).write_bytes(payload(name, size))
    (d / "policy").write_text(POLICY)
    token = _token()
    if token is not None:
        _sign_v3_with_token(d, token)
    return token is not None


def guest_script() -> str:
    lines = [
        "R=/mnt/results",
        'log() { echo "$*" >> $R/kernel.txt; }',
        "K=/mnt/keys",
    ]
    for name, (owner, verity) in APPRAISED.items():
        f = f"$K/{name}"
        lines += [
            f"if [ -e {f} ]; then",
            f"  chown {owner} {f}",
            f"  log setxattr {name} $(vhelper setxattr {f} security.ima {f}.ima)",
        ]
        if verity:
            lines.append(f"  log enable {name} $(vhelper enable {f} 1 4096 -)")
        lines.append("fi")
    # A fact of the kernel, not of pyverity: can it verify ECDSA at all (built in, or a module
    # the initramfs loaded)?
    lines.append("grep -q ecdsa /proc/crypto && log crypto ecdsa yes || log crypto ecdsa no")
    lines += [
        "if [ -d /host/usr ]; then",
        f"  {HOST_ENTER}",
        f"  {GUEST_PY} /mnt/guest_keys.py $K $R > $R/guest.out 2>&1",
        "  log guest x $?",
        f"  {HOST_LEAVE}",
        "else",
        "  log guest x no-9p-host-root",
        "fi",
        "cat /proc/keys > $R/proc-keys",
        # After the guest's commands (the policy covers only files of uid 1000 and 1001).
        "cat $K/policy > /sys/kernel/security/ima/policy; log policy $?",
    ]
    lines += [f"[ -e $K/{n} ] && log open {n} $(vhelper read $K/{n})" for n in APPRAISED]
    lines += ["dmesg > $R/dmesg", "log done"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=range(len(harness.KERNELS)), ids=KERNEL_IDS)
def keys_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> KeysRun:
    pattern = None if request.param == 0 else harness.KERNELS[request.param]
    _need_vm(pattern)
    kernel = harness.find_kernel(pattern)
    assert kernel is not None
    initramfs = harness.initramfs_for(kernel)
    base = tmp_path_factory.mktemp(f"keys-{kernel.version}")
    stage = base / "stage"
    (stage / "keys").mkdir(parents=True)
    token = _stage(stage / "keys", base)
    shutil.copyfile(Path(__file__).with_name("guest_keys.py"), stage / "guest_keys.py")
    (stage / "run.sh").write_text(guest_script())
    boot, results = boot_script(
        kernel, initramfs, stage, base, disk_mb=64, timeout=300, share_host_root=True
    )
    request.config.stash.setdefault(_TIMING, []).append(
        f"keyring case: {kernel.version} booted and ran its script in {boot.seconds:.1f} s"
    )
    steps_file = results / "keys.json"
    keyring = base / "fs-verity-keyring"
    keyring.mkdir()
    shutil.copyfile(stage / "keys" / "ima.der", keyring / "ima.der")
    run = KeysRun(
        kernel=kernel,
        stage=stage / "keys",
        results=results,
        lines=parse_lines((results / "kernel.txt").read_text()),
        steps=json.loads(steps_file.read_text()) if steps_file.exists() else {},
        token=token,
        config=kernel_config(kernel),
        boot=boot,
        keyring=keyring,
    )
    assert run.lines.get(("guest", "x")) == "0", run.text("guest.out")
    return run


def _serial(run: KeysRun, name: str) -> int:
    s = run.step(name)
    assert s["rc"] == 0, s
    out = bytes.fromhex(str(s["out"])).decode()
    assert re.fullmatch(r"\d+\n", out), out
    return int(out)


def _proc_keys(run: KeysRun) -> dict[int, tuple[str, str]]:
    """serial -> (type, description) from the guest's /proc/keys."""
    out = {}
    for line in run.text("proc-keys").splitlines():
        f = line.split(None, 8)
        out[int(f[0], 16)] = (f[7], f[8])  # the type is cut to 9 characters: "asymmetri"
    return out


def _opened(run: KeysRun, name: str) -> bool:
    result = run.lines[("open", name)]
    assert result == str(len((run.stage / name).read_bytes())) or result.startswith("ERR 13 "), (
        result
    )
    return not result.startswith("ERR")


def test_import_into_ima_keyring_is_what_appraisal_uses(keys_run: KeysRun) -> None:
    """v2 signatures by pyverity with the imported key open; tampered or other key: EACCES."""
    assert keys_run.lines[("policy", "0")] == ""
    serial = _serial(keys_run, "import-_ima")
    keys = _proc_keys(keys_run)
    assert keys[serial][0] == "asymmetri"
    assert "pyverity kr" in keys[serial][1]
    assert "created the _ima keyring" in str(keys_run.step("import-_ima")["err"])
    assert any(t == "keyring" and d.startswith("_ima:") for t, d in keys.values())
    assert _opened(keys_run, "v2-good"), keys_run.text("dmesg")[-2000:]
    assert not _opened(keys_run, "v2-tampered")
    assert not _opened(keys_run, "v2-wrongkey")


def test_dot_ima_keyring_absent_or_refuses_self_signed(keys_run: KeysRun) -> None:
    """``.ima`` exists only with CONFIG_INTEGRITY_TRUSTED_KEYRING (unset in Debian's 6.1 and
    6.12): where it is absent the import says so in one line; where it exists, it refuses a
    self-signed certificate (what such a keyring does is checked on every kernel by the next
    test, with a keyring restricted the same way)."""
    s = keys_run.step("import-.ima")
    errors = [x for x in str(s["err"]).splitlines() if x.startswith("ERROR:")]
    assert s["rc"] == 1
    assert len(errors) == 1, s
    has_ring = any(d.startswith(".ima:") for _, d in _proc_keys(keys_run).values())
    assert has_ring == (keys_run.option("CONFIG_INTEGRITY_TRUSTED_KEYRING") == "y")
    if not has_ring:
        assert errors == [
            "ERROR: the kernel has no '.ima' keyring (or this process may not see it)"
        ]
        assert "use --keyring _ima" in str(s["err"])
    else:
        assert errors[0].startswith("ERROR: the kernel refused certificate"), errors
        assert "accepts only certificates signed by a key the kernel trusts" in errors[0]


def test_keyring_restricted_as_ima_refuses_a_self_signed_certificate(keys_run: KeysRun) -> None:
    """What ``.ima`` does where it exists, on every kernel: a keyring restricted to keys signed
    by ``.builtin_trusted_keys``/``.secondary_trusted_keys`` refuses the self-signed certificate
    (the same certificate ``_ima`` then accepts), in one line."""
    s = keys_run.step("import-restricted")
    assert s["rc"] == 1, s
    errors = [x for x in str(s["err"]).splitlines() if x.startswith("ERROR:")]
    assert len(errors) == 1, s
    assert "accepts only certificates signed by a key the kernel trusts" in errors[0]
    restricted = [d for t, d in _proc_keys(keys_run).values() if d.startswith("ima-restricted:")]
    assert restricted == ["ima-restricted: empty"]


def test_fs_verity_keyring_import_enables_builtin_signatures(keys_run: KeysRun) -> None:
    before = keys_run.step("bsig-before")
    assert before["rc"] == 1, before  # ENOKEY: the key is not in .fs-verity yet
    assert len([x for x in str(before["err"]).splitlines() if x.startswith("ERROR:")]) == 1
    serial = _serial(keys_run, "import-.fs-verity")
    keys = _proc_keys(keys_run)
    assert keys[serial][0] == "asymmetri"
    assert keys_run.step("bsig-good")["rc"] == 0, keys_run.step("bsig-good")
    assert keys_run.step("bsig-after")["rc"] == 0, keys_run.step("bsig-after")
    assert keys_run.step("bsig-other")["rc"] == 1, keys_run.step("bsig-other")


def test_v3_token_signatures_are_appraised_by_the_kernel(keys_run: KeysRun) -> None:
    if not keys_run.token:
        pytest.skip("SoftHSM2 or python-pkcs11 is missing on the host")
    serial = _serial(keys_run, "import-token-rsa")  # through %keyring:_ima
    assert _proc_keys(keys_run)[serial][0] == "asymmetri"
    for name in ("v3tok-good", "v3tok-tampered"):
        assert keys_run.lines[("enable", name)] == "OK"
    assert _opened(keys_run, "v3tok-good"), keys_run.text("dmesg")[-2000:]
    assert not _opened(keys_run, "v3tok-tampered")


def test_v3_ecdsa_token_signature(keys_run: KeysRun) -> None:
    if not keys_run.token:
        pytest.skip("SoftHSM2 or python-pkcs11 is missing on the host")
    s = keys_run.step("import-token-ec")
    assert keys_run.lines[("crypto", "ecdsa")] == ("yes" if keys_run.facts.ecdsa else "no")
    if not keys_run.facts.ecdsa:
        # Debian's 6.1: no ECDSA in the kernel. The import says so, and the open is refused.
        assert s["rc"] == 1, s
        assert "this kernel cannot use the certificate's key type" in str(s["err"])
        assert not _opened(keys_run, "v3tok-ec")
        return
    assert s["rc"] == 0, s
    assert keys_run.lines[("enable", "v3tok-ec")] == "OK"
    assert _opened(keys_run, "v3tok-ec"), keys_run.text("dmesg")[-2000:]


def test_require_signatures_fsverity_enable_as_the_kernel_judges(keys_run: KeysRun) -> None:
    """fs.verity.require_signatures=1, ``pyverity sign --builtin-sig``'s signatures given to
    the host's ``fsverity enable --signature`` in the VM: only the good one enables."""
    assert keys_run.step("require-on")["rc"] == 0, keys_run.step("require-on")
    for name, (_, code) in REQUIRED.items():
        s = keys_run.step(f"fsverity-{name}")
        if code == 0:
            assert s["rc"] == 0, s
        else:
            assert s["rc"] != 0, s
            assert str(s["err"]).rstrip().endswith(os.strerror(code)), (name, s)
    # pyverity's own kernel enable, unsigned, refused in one line.
    s = keys_run.step("require-pyverity-unsigned")
    assert s["rc"] == 1, s
    errors = [x for x in str(s["err"]).splitlines() if x.startswith("ERROR:")]
    assert len(errors) == 1, s
    assert keys_run.step("require-off")["rc"] == 0


def test_require_signatures_measure_shows_the_kernels_digest(keys_run: KeysRun) -> None:
    """``pyverity measure`` (inside the VM) of the enabled file prints the digest that
    ``fsverity measure`` prints and that ``pyverity sign --builtin-sig`` signed; the refused
    files have no fs-verity and no descriptor, and say so in one error line."""
    for name, (_, code) in REQUIRED.items():
        s = keys_run.step(f"measure-{name}")
        theirs = keys_run.step(f"fsverity-measure-{name}")
        if code == 0:
            digest = build_tree(keys_run.stage / name, TreeParams()).file_digest().hex()
            out = bytes.fromhex(str(s["out"])).decode()
            assert s["rc"] == 0, s
            assert out.split()[0] == f"sha256:{digest}", out
            assert theirs["rc"] == 0, theirs
            assert str(theirs["out"]).split()[0] == f"sha256:{digest}", theirs
        else:
            assert s["rc"] == 1, s
            errors = [x for x in str(s["err"]).splitlines() if x.startswith("ERROR:")]
            assert len(errors) == 1, s
            assert "fs-verity is not enabled on it" in errors[0], s
            assert theirs["rc"] != 0, theirs


def test_pyverity_judges_builtin_signatures_as_the_kernel(keys_run: KeysRun) -> None:
    """pyverity's check of a built-in signature (what its mount does on ``fsverity enable
    --signature``, against the certificates given as ``.fs-verity``) gives the kernel's
    errno for each file: accepted, EKEYREJECTED, ENOKEY."""
    from pyverity.fuse.verity_ioctl import check_builtin_signature

    keyring = Keyring.from_directory(keys_run.keyring)
    for name, (signed, code) in REQUIRED.items():
        if signed is None:
            continue
        tree = build_tree(keys_run.stage / name, TreeParams())
        signature = (keys_run.stage / f"{signed}.sig").read_bytes()
        try:
            check_builtin_signature(name, signature, tree.descriptor, keyring)
        except OSError as e:
            got = e.errno
        else:
            got = 0
        assert got == code, name


def _dump(run: KeysRun, name: str) -> tuple[bytes, bytes]:
    from tests.support.needs import need

    need("fsverity (Debian: fsverity)", shutil.which("fsverity") is not None)
    s = run.step(f"dump {name}")
    assert s["rc"] == s["fsverity_rc"] == 0, s
    d = run.results / "dump"
    return (d / f"{name}.pyverity").read_bytes(), (d / f"{name}.fsverity").read_bytes()


@pytest.mark.parametrize(
    ("file", "params"),
    [("dm-a", TreeParams()), ("dm-b", TreeParams(hashalg.by_name("sha512"), 4096, SALT11))],
)
def test_dump_metadata_equals_fsverity_and_pyverity(
    keys_run: KeysRun, file: str, params: TreeParams
) -> None:
    assert keys_run.step(f"enable-{file}")["rc"] == 0, keys_run.step(f"enable-{file}")
    ours = build_tree(keys_run.stage / file, params, keep_tree=True)
    tree, fs_tree = _dump(keys_run, f"{file}.merkle_tree")
    desc, fs_desc = _dump(keys_run, f"{file}.descriptor")
    assert tree == fs_tree == ours.tree
    assert desc == fs_desc == ours.descriptor.to_bytes()
    if file == "dm-a":
        part, fs_part = _dump(keys_run, "dm-a.tree-part")
        assert part == fs_part == (ours.tree or b"")[4096 : 4096 + 5000]
        past, fs_past = _dump(keys_run, "dm-a.tree-past")
        assert past == fs_past == b""
        s = keys_run.step("dump dm-a.signature")  # no built-in signature: both refuse
        assert s["rc"] == 1, s
        assert s["fsverity_rc"] != 0, s
        message = f"'{keys_run.guest_dir}/dm-a' has no built-in signature (fs-verity was"
        assert str(s["err"]).splitlines() == [f"ERROR: {message} enabled without one)"]
    else:
        part, fs_part = _dump(keys_run, "dm-b.desc-part")
        assert part == fs_part == ours.descriptor.to_bytes()[8:108]


def test_dump_metadata_signature_is_the_builtin_signature(keys_run: KeysRun) -> None:
    sig, fs_sig = _dump(keys_run, "bsig-good.signature")
    assert sig == fs_sig == (keys_run.stage / "bsig-good.sig").read_bytes()
    desc, fs_desc = _dump(keys_run, "bsig-good.descriptor")
    assert desc == fs_desc
