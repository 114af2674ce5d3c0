"""Appraisal through a real mount under ``appraise ... appraise_type=sigv3``: signed files read,
unsigned / untrusted / wrongly signed ones EACCES in enforce and readable (logged) in log mode;
first opens measured into a list that ``pyverity log verify`` accepts — and rejects once edited.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyverity.fs.xattr import attr_name, get_attr, set_attr
from pyverity.keys.generate import GeneratedKey, generate_key
from pyverity.keys.signer import load_signer
from pyverity.measure.log import read_list
from pyverity.protect.sign import enable_file, sign_file
from tests.interop.fuse_helpers import NS, fuse_skip_reason, mount_log, mounted

pytestmark = [
    pytest.mark.interop,
    pytest.mark.root,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

POLICY = """\
# every file opened for reading must carry a v3 signature over its fs-verity digest
measure func=FILE_CHECK digest_type=verity template=ima-sigv2
appraise func=FILE_CHECK digest_type=verity appraise_type=sigv3
"""
CONTENT = {
    "signed": b"signed by the trusted key\n" * 500,
    "unsigned": b"only a descriptor\n" * 300,
    "untrusted": b"signed by a key not in the keyring\n",
    "other": b"carries the signature of other content\n",
}


def _sign(path: Path, key: GeneratedKey) -> None:
    signer = load_signer(str(key.key_path), cert=key.der_path)
    sign_file(path, signer, namespace=NS)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    trusted = generate_key(tmp_path / "trusted", "ecdsa", curve="P-256")
    stranger = generate_key(tmp_path / "stranger", "ecdsa", curve="P-256")
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    (keyring / "trusted.der").write_bytes(trusted.der_path.read_bytes())
    src = tmp_path / "src"
    src.mkdir()
    for name, data in CONTENT.items():
        (src / name).write_bytes(data)
    _sign(src / "signed", trusted)
    enable_file(src / "unsigned", namespace=NS)
    _sign(src / "untrusted", stranger)
    enable_file(src / "other", namespace=NS)
    signature = get_attr(src / "signed", attr_name(NS, "ima"))
    assert signature is not None
    set_attr(src / "other", attr_name(NS, "ima"), signature)
    policy = tmp_path / "policy"
    policy.write_text(POLICY)
    return src, tmp_path / "mnt", keyring, policy


def _log(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", "log", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _evmctl_accepts(measurements: Path) -> None:
    """``evmctl ima_measurement`` (1.4) replays the binary list to the stored PCR values."""
    evmctl = shutil.which("evmctl")
    if evmctl is None:
        pytest.fail("evmctl (ima-evm-utils) is not installed; .ci/run installs it")
    pcrs = read_list(measurements).pcrs
    assert pcrs is not None
    args = []
    for bank in ("sha1", "sha256"):
        f = measurements.parent / f"pcrs-{bank}"
        f.write_text(pcrs.evmctl_text(bank))
        args += ["--pcrs", f"{bank},{f}"]
    res = subprocess.run(
        [evmctl, "-v", "ima_measurement", *args, str(measurements)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Matched per TPM bank calculated digest(s)." in res.stdout + res.stderr


def test_enforce_then_log_mode_and_measurement_list(setup: tuple[Path, Path, Path, Path]) -> None:
    src, mnt, keyring, policy = setup
    measurements = mnt.parent / "measurements"
    common = ["--policy", str(policy), "--keyring", str(keyring), "--log", str(measurements)]
    with mounted(src, mnt, *common):
        assert (mnt / "signed").read_bytes() == CONTENT["signed"]
        for name in ("unsigned", "untrusted", "other"):
            with pytest.raises(PermissionError):
                (mnt / name).read_bytes()
        assert (mnt / "signed").read_bytes() == CONTENT["signed"]  # measured once only
    denied = mount_log(mnt)
    for name in ("unsigned", "untrusted", "other"):
        assert f"mnt/{name}' failed, access denied" in denied
    with mounted(src, mnt, *common, "--mode", "log"):
        for name, data in CONTENT.items():
            assert (mnt / name).read_bytes() == data
    assert mount_log(mnt).count("failed (not enforced)") == 3

    ok = _log(["verify", str(measurements)])  # template hashes and the PCR replay
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # With the keyring, exactly the entries whose signatures are bad are named.
    signed = _log(["verify", "--keyring", str(keyring), str(measurements)])
    assert signed.returncode != 0
    assert "mnt/untrusted" in signed.stdout + signed.stderr
    assert "mnt/other" in signed.stdout + signed.stderr
    assert "mnt/signed" not in signed.stdout + signed.stderr
    _evmctl_accepts(measurements)
    shown = _log(["show", str(measurements)]).stdout
    assert f"{mnt}/signed" in shown
    assert shown.count(f"{mnt}/signed") == 1

    data = bytearray(measurements.read_bytes())
    pos = data.find(b"verity:sha256:")
    data[pos + 20] ^= 1  # change one digest byte of the first file entry
    measurements.write_bytes(bytes(data))
    bad = _log(["verify", str(measurements)])
    assert bad.returncode != 0


def test_api_open_with_keyring(setup: tuple[Path, Path, Path, Path]) -> None:
    import pyverity
    from pyverity.errors import SignatureError
    from pyverity.reader import ReaderOptions

    src, _, keyring, policy = setup
    options = ReaderOptions(xattr_ns=NS)
    with pyverity.open(src / "signed", keyring=keyring, options=options) as f:
        assert f.read() == CONTENT["signed"]
    for name in ("unsigned", "untrusted", "other"):
        with pytest.raises(SignatureError):
            pyverity.open(src / name, keyring=keyring, options=options)
    with pyverity.open(src / "other", options=options) as f:  # no keyring: descriptor only
        assert f.read() == CONTENT["other"]
    with pyverity.open(src / "signed", policy=policy, keyring=keyring, options=options) as f:
        assert f.read() == CONTENT["signed"]
    with pytest.raises(SignatureError):
        pyverity.open(src / "unsigned", policy=policy, keyring=keyring, options=options)


def test_fix_mode_writes_proven_descriptors_and_off_mode_appraises_nothing(
    setup: tuple[Path, Path, Path, Path],
) -> None:
    src, mnt, keyring, policy = setup
    verity = attr_name(NS, "verity")
    signature = get_attr(src / "signed", attr_name(NS, "ima"))
    assert signature is not None
    # a file carrying only the v3 signature (as other IMA tools write it), no descriptor
    (src / "sigonly").write_bytes(CONTENT["signed"])
    set_attr(src / "sigonly", attr_name(NS, "ima"), signature)
    (src / "plain").write_bytes(b"never protected\n")
    (src / "tampered").write_bytes(CONTENT["signed"][:-1] + b"?")
    set_attr(src / "tampered", attr_name(NS, "ima"), signature)
    fix = ["--policy", str(policy), "--keyring", str(keyring), "--mode", "fix"]
    with mounted(src, mnt, *fix, verbose=True):
        for name in ("sigonly", "plain", "tampered", "unsigned"):
            assert (mnt / name).read_bytes() == (src / name).read_bytes()  # fix: never denied
    # only the file whose signature verified over its content got a descriptor
    assert get_attr(src / "sigonly", verity) == get_attr(src / "signed", verity)
    assert get_attr(src / "plain", verity) is None
    assert get_attr(src / "tampered", verity) is None
    assert "fix: wrote the descriptor" in mount_log(mnt)
    with mounted(src, mnt, "--keyring", str(keyring), "--mode", "off"):
        for name in ("plain", "tampered", "untrusted", "other"):
            assert (mnt / name).read_bytes() == (src / name).read_bytes()
    assert "denied" not in mount_log(mnt)
