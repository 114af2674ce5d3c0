"""Shared helpers for the manifest tests: a tree with awkward names, a manifest made through
the API, and re-signing edited manifest bytes (to reach the checks after the signature)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pyverity.format.params import TreeParams
from pyverity.keys import FileSigner, load_signer
from pyverity.keys.generate import GeneratedKey
from pyverity.manifest import CreateOptions, DigestOptions, create_manifest
from pyverity.manifest.create import sign_bytes
from pyverity.manifest.model import SignatureLine
from tests.unit.keys.keyhelpers import keyring_dir, make_key

CREATED = "2026-01-02T03:04:05Z"
#: Names that JSON must escape, or that are not UTF-8, and the a.b / a/b ordering trap.
AWKWARD = [
    b"a.b",
    b"a/b",
    b"a/c.txt",
    b"a-",
    b"back\\slash",
    b"new\nline",
    b'quote"d',
    b"tab\there",
    b"bad\xff\xfeutf8",
    b"dir\xc3/\xe9t\xc3\xa9",
    b"\xe2\x82\xac uro",
    b"empty",
]


def make_tree(root: Path) -> list[bytes]:
    """Files (awkward names, varied sizes), a symlink and a FIFO; returns the entry paths."""
    paths = []
    for i, name in enumerate(AWKWARD):
        full = os.fsencode(root) + b"/" + name
        os.makedirs(full.rpartition(b"/")[0], exist_ok=True)  # noqa: PTH103 - bytes paths
        with open(full, "wb") as f:
            f.write(os.urandom(0 if name == b"empty" else 1000 * i + 7))
        paths.append(name)
    (root / "link").symlink_to("a/b")
    paths.append(b"link")
    os.mkfifo(root / "fifo")
    return sorted(paths)


def signer(key: GeneratedKey) -> FileSigner:
    return load_signer(key.key_path, cert=key.cert_path)


def options(
    *, signatures: str | None = None, jobs: int = 1, name: str = "tree", serial: int = 1
) -> CreateOptions:
    return CreateOptions(
        name=name,
        serial=serial,
        created=CREATED,
        digest=DigestOptions(TreeParams(), ("sha256", "sha512")),
        signatures=signatures,
        jobs=jobs,
    )


def make_manifest(tmp: Path, tree: Path, key: GeneratedKey | None = None, **kw: object) -> Path:
    key = key or make_key()
    out = tmp / "m.jsonl"
    create_manifest(out, [str(tree)], signer(key), options(**kw))  # type: ignore[arg-type]
    return out


def resign(lines: list[bytes], key: GeneratedKey | None = None) -> bytes:
    """``lines`` (header and entries) followed by a valid signature line."""
    s = signer(key or make_key())
    body = b"".join(lines)
    digest = hashlib.sha256(body).digest()
    return body + SignatureLine(s.keyid, digest, sign_bytes(s, digest)).to_line()


def keyring(key: GeneratedKey | None = None) -> Path:
    return keyring_dir(key or make_key())
