"""A manifest carries protection through ``tar`` without ``--xattrs``, checked by the real tools.

Sign a tree (``pyverity sign -r``, and ``--imasig``), ``manifest create``, ``tar`` without
``--xattrs``, extract elsewhere, ``manifest apply``. Then every file carries byte for byte the
attributes ``sign`` wrote; ``pyverity verify`` accepts it; the real ``fsverity digest`` gives
the manifest's digest; the real ``evmctl ima_verify`` accepts the v2 signatures. A file
changed in between is refused and left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.keys.keyhelpers import keyring_dir, make_key

TOOLS = {t: shutil.which(t) for t in ("fsverity", "evmctl", "tar")}
MISSING = [t for t, p in TOOLS.items() if p is None]
if MISSING and os.environ.get("CI") == "true":
    pytest.fail(f"interop tools missing under CI: {', '.join(MISSING)}", pytrace=False)
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        bool(MISSING), reason=f"missing {', '.join(MISSING)} (fsverity, ima-evm-utils, tar)"
    ),
]

NS = "security" if os.geteuid() == 0 else "user"
USER = [] if NS == "security" else ["--xattr-user"]
NAMES = ["small", "empty", "sub/one page", "sub/big.bin", "a.b", "a/x", "odd\\name", "new\nline"]
SIZES = {"small": 5, "empty": 0, "sub/big.bin": 3 * (1 << 20) + 123, "a/x": 4096}


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc


def _pyverity(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "pyverity.cli", *args, ok=ok)


def _tree(root: Path) -> None:
    for name in NAMES:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(SIZES.get(name, 777)))
    (root / "link").symlink_to("small")


def _attrs(p: Path) -> dict[str, bytes]:
    return {n: os.getxattr(p, n) for n in sorted(os.listxattr(p)) if n.startswith(f"{NS}.")}


def _copy_without_xattrs(src: Path, dst: Path, tmp: Path) -> None:
    tarball = tmp / "t.tar"
    _run("tar", "--no-xattrs", "-C", str(src), "-cf", str(tarball), ".")
    dst.mkdir()
    _run("tar", "--no-xattrs", "-C", str(dst), "-xf", str(tarball))
    for name in NAMES:
        assert _attrs(dst / name) == {}


@pytest.mark.parametrize("mode", ["v3", "v2"])
def test_sign_create_tar_apply(tmp_path: Path, mode: str) -> None:
    k = make_key()
    ring = str(keyring_dir(k))
    key = ["--key", str(k.key_path), "--cert", str(k.cert_path)]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _tree(src)
    _pyverity("sign", "-r", *(["--imasig"] if mode == "v2" else []), *USER, *key, str(src))
    m = tmp_path / "m.jsonl"
    flag = "--signatures" if mode == "v3" else "--imasig"
    _pyverity("manifest", "create", flag, "-o", str(m), *key, "--name", "t", str(src))
    _copy_without_xattrs(src, dst, tmp_path)
    changed = dst / "sub" / "one page"
    with changed.open("ab") as f:
        f.write(b"tampered in transit")

    out = _pyverity(
        "manifest", "apply", "--keyring", ring, "--name", "t", *USER, str(m), str(dst), ok=False
    )
    assert out.returncode == 1
    assert "differs: sub/one page" in out.stdout
    assert _attrs(changed) == {}

    entries = {}
    for line in m.read_text().splitlines()[1:-1]:
        e = json.loads(line)
        entries[e["path"]] = e
    for name in NAMES:
        if name == "sub/one page":
            continue
        s, d = src / name, dst / name
        assert _attrs(d) == _attrs(s), name  # exactly what `pyverity sign` wrote
        assert _pyverity("verify", "--keyring", ring, *USER, str(d)).stdout.count(": ok") == 1
        real = _run("fsverity", "digest", "--compact", str(d)).stdout.strip()
        assert real == entries[name]["verity"], name
        if mode == "v2":
            ev = _run("evmctl", "ima_verify", *USER, "--key", str(k.der_path), str(d))
            assert "verification is OK" in ev.stdout + ev.stderr
    check = _pyverity("manifest", "verify", "--keyring", ring, str(m), str(dst), ok=False)
    assert check.returncode == 1
    assert "changed: sub/one page" in check.stdout
