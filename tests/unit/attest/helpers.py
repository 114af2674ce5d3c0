"""Shared helpers for the attestation tests: a small tree, its manifest, a keyring, lists."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyverity.format.measurelist import DigestField
from pyverity.keys import Keyring
from pyverity.manifest import VerifiedManifest, open_manifest
from pyverity.measure import MeasurementLog
from tests.unit.keys.keyhelpers import make_key
from tests.unit.manifest.helpers import keyring, make_manifest

#: Relative path -> content. One name holds a space, one is empty.
FILES = {"bin/tool": b"a tool\n" * 100, "lib/with space.so": b"\x7fELF" + bytes(300), "etc/c": b""}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def manifest_and_ring(tmp: Path, files: dict[str, bytes] = FILES) -> tuple[Path, Path]:
    """A manifest of ``files`` (sha256 and sha512 file hashes) and the keyring verifying it."""
    tree = make_tree(tmp / "tree", files)
    return make_manifest(tmp, tree, make_key()), keyring(make_key())


def open_verified(manifest: Path, ring: Path) -> VerifiedManifest:
    return open_manifest(manifest, Keyring.from_directory(ring))


def write_list(
    path: Path, files: dict[str, bytes], prefix: str = "/opt/app/", template: str = "ima-ng"
) -> Path:
    """A pyverity list with one entry per file (sha256 file hashes), boot_aggregate first."""
    log = MeasurementLog.open(path, default_template=template)
    for rel, data in files.items():
        log.append(DigestField("sha256", hashlib.sha256(data).digest()), prefix + rel,
                   template=template)  # fmt: skip
    log.close()
    return path
