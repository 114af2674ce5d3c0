"""Signatures through the daemon, values written by pyverity and by evmctl, and first use."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pyverity.daemon import client
from pyverity.format.descriptor import Descriptor
from pyverity.format.hashalg import SHA512
from pyverity.format.ima import file_id_hash
from pyverity.format.params import TreeParams
from pyverity.hashing import compute_digest
from pyverity.keys import load_signer, sign_v3
from pyverity.keys.generate import GeneratedKey, generate_key
from tests.integration.harness import Daemon, fsverity_digest, pyverity, setfattr, write_file
from tests.support.evmctl import evmctl

MiB = 1 << 20


@pytest.fixture
def keys(tmp_path: Path) -> tuple[GeneratedKey, GeneratedKey, Path]:
    trusted = generate_key(tmp_path / "k1", "rsa", bits=2048)
    untrusted = generate_key(tmp_path / "k2", "ecdsa")
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    (keyring / "trusted.pem").write_bytes(trusted.cert_path.read_bytes())
    return trusted, untrusted, keyring


def _sign(d: Daemon, k: GeneratedKey, f: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return pyverity(
        "sign",
        "--xattr-ns",
        "user",
        "--key",
        str(k.key_path),
        "--cert",
        str(k.cert_path),
        "--state-dir",
        str(d.state),
        *extra,
        str(f),
    )


def test_signed_files(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    keys: tuple[GeneratedKey, GeneratedKey, Path],
) -> None:
    trusted, untrusted, keyring = keys
    d = make_daemon("--keyring", str(keyring)).start()
    good = d.root / "good.bin"
    write_file(good, 4 * MiB)
    r = _sign(d, trusted, good, "--wait", "--wait-timeout", "30")
    assert r.returncode == 0, r.stderr
    assert "READY" in r.stdout
    assert d.record(good).kind == "verity-signed"  # type: ignore[union-attr]

    # An untrusted key: INVALID, without a build; --wait says why and fails.
    bad_key = d.root / "untrusted.bin"
    write_file(bad_key, MiB)
    r = _sign(d, untrusted, bad_key, "--wait", "--wait-timeout", "30")
    assert r.returncode == 1
    assert "INVALID" in r.stderr
    rec = d.wait_state(bad_key, "INVALID", timeout=5)
    assert "unknown key" in rec.error

    # A signature (only) made over other content: MISMATCH after the build.
    other = d.root / "other.bin"
    write_file(other, MiB)
    elsewhere = tmp_path / "elsewhere.bin"
    write_file(elsewhere, MiB)
    signer = load_signer(str(trusted.key_path), cert=str(trusted.cert_path))
    sig = sign_v3(signer, 1, compute_digest(elsewhere).digest)
    setfattr(other, "user.ima", sig.to_bytes())
    rec = d.wait_state(other, "MISMATCH", timeout=30)
    assert "bad signature" in rec.error

    # A signature only, over this content: READY with default tree parameters.
    alone = d.root / "alone.bin"
    write_file(alone, MiB)
    setfattr(alone, "user.ima", sign_v3(signer, 1, compute_digest(alone).digest).to_bytes())
    d.wait_state(alone, "READY", timeout=30)
    digest, desc, tree = fsverity_digest(alone, tmp_path)
    assert d.cache_entry(digest).read_bytes() == desc + tree

    # Without --wait nothing blocks; status shows the states by path.
    r = pyverity("status", "--state-dir", str(d.state), str(good), str(bad_key), str(other))
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["READY", "INVALID", "MISMATCH"]


def test_values_written_byevmctl(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    keys: tuple[GeneratedKey, GeneratedKey, Path],
) -> None:
    trusted, _, keyring = keys
    d = make_daemon("--keyring", str(keyring)).start()
    hashed = d.root / "hashed.bin"
    write_file(hashed, MiB)
    assert evmctl("ima_hash", "--xattr-user", "-a", "sha256", str(hashed)).returncode == 0
    rec = d.wait_state(hashed, "CLASSIC", timeout=10)
    assert rec.kind == "classic"
    signed = d.root / "signed.bin"
    write_file(signed, MiB)
    r = evmctl(
        "ima_sign", "--xattr-user", "-a", "sha256", "--key", str(trusted.key_path), str(signed)
    )
    assert r.returncode == 0, r.stderr
    d.wait_state(signed, "CLASSIC", timeout=10)
    assert not list((d.cache / "objects").rglob("*")) or all(
        p.is_dir() for p in (d.cache / "objects").rglob("*")
    )
    # A v3 signature made with evmctl 1.4 (sign_hash over the ima_file_id hash, as its
    # --veritysig does in 1.5), written with setfattr: READY, tree equal to fsverity's.
    verity = d.root / "verity.bin"
    write_file(verity, 3 * MiB)
    digest, desc, tree = fsverity_digest(verity, tmp_path)
    fid = file_id_hash(4, bytes.fromhex(digest.split(":")[1]))
    r = evmctl(
        "sign_hash", "-a", "sha256", "--key", str(trusted.key_path), stdin=f"{fid.hex()} x\n"
    )
    assert r.returncode == 0, r.stderr
    v2 = bytes.fromhex(r.stdout.split()[2])
    setfattr(verity, "user.ima", b"\x06\x03" + v2[2:])
    rec = d.wait_state(verity, "READY", timeout=30)
    assert rec.digest == digest
    assert d.cache_entry(digest).read_bytes() == desc + tree


@pytest.mark.slow
def test_first_use_jumps_two_busy_workers(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = make_daemon("--workers", "2").start()
    size = 1024 * MiB
    # Two 1 GiB builds with slow parameters (sha512, 1 KiB blocks). Their descriptors carry a
    # made-up root: only how long they occupy the workers matters here.
    big_desc = Descriptor.for_tree(TreeParams(SHA512, 1024), size, bytes(64)).to_bytes()
    bigs = [d.root / f"big{i}.bin" for i in range(2)]
    for b in bigs:
        write_file(b, size, sparse=True)
    small = d.root / "small.bin"
    write_file(small, 2 * MiB)  # over hashing.small.SMALL_FILE_MAX: a worker must build it
    small_desc = fsverity_digest(small, tmp_path)[1]
    for b in bigs:
        setfattr(b, "user.verity", big_desc)
    for b in bigs:
        d.wait_state(b, "BUILDING", timeout=30)
        # Hashing has begun (a build asked to yield at offset 0 has nothing to resume from).
        d.wait_for(lambda b=b: d.record(b).progress > 0, timeout=30, what=f"{b} progressing")  # type: ignore[union-attr]
    # The attribute is written while both workers are busy; then a first use asks for it.
    setfattr(small, "user.verity", small_desc)
    reply = client.build_now(small, state_dir=d.state, timeout=10)
    assert reply["state"] == "READY"
    # Served before the big builds: it did not wait for a worker to finish (no time bound:
    # the preemption and the big builds' states say it).
    states = [str(d.record(b).state) for b in bigs]  # type: ignore[union-attr]
    assert set(states) <= {"BUILDING", "PENDING"}, states  # the big builds are not done
    assert d.metrics()["pyverity_builds_preempted_total"] >= 1
    # The build that yielded resumes from its checkpoint.
    d.wait_log("resuming build at offset")


def test_enable_wait(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    f = d.root / "e.bin"
    write_file(f, 2 * MiB)
    r = pyverity("enable", "--xattr-ns", "user", "--state-dir", str(d.state), "--wait", str(f))
    assert r.returncode == 0, r.stderr
    assert f"'{f}': READY" in r.stdout
    # Without a daemon, --wait fails with one line saying so (the attribute is written).
    d.stop()
    g = d.root / "g.bin"
    write_file(g, MiB)
    r = pyverity("enable", "--xattr-ns", "user", "--state-dir", str(d.state), "--wait", str(g))
    assert r.returncode == 1
    assert "daemon is not running" in r.stderr
    assert os.getxattr(g, "user.verity")
