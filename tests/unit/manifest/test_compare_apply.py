"""compare_tree (verify DIR) and apply_manifest (re-attach protection through protect's gate)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyverity.keys import Keyring
from pyverity.manifest import Summary, apply_manifest, compare_tree, open_manifest
from pyverity.manifest.walk import SymlinkInPathError
from pyverity.protect import verify_file
from tests.unit.keys.keyhelpers import make_key
from tests.unit.manifest.helpers import keyring, make_manifest, make_tree, resign

NS = "user"


def _copy(src: Path, dst: Path) -> None:
    """A copy that loses every attribute (as tar without --xattrs)."""
    shutil.copytree(
        src,
        dst,
        symlinks=True,
        ignore=shutil.ignore_patterns("fifo"),
        copy_function=shutil.copyfile,
    )


def _setup(tmp_path: Path, signatures: str | None = "v3") -> tuple[Path, Path, Keyring]:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = make_manifest(tmp_path, src, signatures=signatures)
    dst = tmp_path / "dst"
    _copy(src, dst)
    return m, dst, Keyring.from_directory(keyring())


def _compare(
    m: Path, root: Path, ring: Keyring, jobs: int = 1
) -> tuple[list[tuple[str, bytes]], Summary]:
    s = Summary()
    with open_manifest(m, ring) as vm:
        return [(d.kind, d.path) for d in compare_tree(vm, root, s, jobs=jobs)], s


def test_verify_reports_added_missing_changed(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    assert _compare(m, dst, ring)[0] == []
    (dst / "a.b").write_bytes(b"changed")
    (dst / "a" / "c.txt").unlink()
    (dst / "a" / "new").write_text("n")
    (dst / "empty").chmod(0o600)
    (dst / "link").unlink()
    (dst / "link").symlink_to("elsewhere")
    diffs, s = _compare(m, dst, ring, jobs=2)
    assert diffs == [
        ("changed", b"a.b"),
        ("missing", b"a/c.txt"),
        ("added", b"a/new"),
        ("changed", b"empty"),
        ("changed", b"link"),
    ]
    assert (s.added, s.missing, s.changed, s.differences) == (1, 1, 3, 5)


def test_apply_writes_what_sign_writes(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    (dst / "a.b").write_bytes(b"tampered")
    with open_manifest(m, ring) as vm:
        results = {a.path: a for a in apply_manifest(vm, dst, ring, namespace=NS, jobs=2)}
    assert results[b"a.b"].action == "differs"
    assert all(a.action == "written" for p, a in results.items() if p != b"a.b")
    assert os.listxattr(dst / "a.b") == []
    for p in results:
        if p != b"a.b":
            full = os.fsdecode(os.fsencode(dst) + b"/" + p)
            verify_file(full, ring, namespace=NS)
            src = os.fsdecode(os.fsencode(tmp_path / "src") + b"/" + p)
            assert os.stat(full).st_size == os.stat(src).st_size  # noqa: PTH116 - bytes names
    with open_manifest(m, ring) as vm:
        again = [a.action for a in apply_manifest(vm, dst, ring, namespace=NS)]
    assert again.count("unchanged") == len(again) - 1


def test_existing_attributes_kept_unless_force(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    target = dst / "a" / "b"
    os.setxattr(target, f"{NS}.verity", b"something else")
    with open_manifest(m, ring) as vm:
        kept = {a.path: a.action for a in apply_manifest(vm, dst, ring, namespace=NS)}
    assert kept[b"a/b"] == "kept"
    assert os.getxattr(target, f"{NS}.verity") == b"something else"
    with open_manifest(m, ring) as vm:
        forced = {a.path: a.action for a in apply_manifest(vm, dst, ring, namespace=NS, force=True)}
    assert forced[b"a/b"] == "written"
    verify_file(target, ring, namespace=NS)


def test_path_through_symlink_refuses_everything(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    outside = tmp_path / "outside"
    shutil.move(dst / "a", outside)
    (dst / "a").symlink_to(outside)
    with open_manifest(m, ring) as vm, pytest.raises(SymlinkInPathError, match="a/b"):
        list(apply_manifest(vm, dst, ring, namespace=NS))
    for root, _, files in os.walk(tmp_path / "dst"):
        for f in files:
            assert os.listxattr(Path(root) / f) == []  # nothing written anywhere
    assert os.listxattr(outside / "b") == []


def test_bad_entry_refuses_before_writing(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    lines = m.read_bytes().splitlines(keepends=True)
    m.write_bytes(resign([*lines[:-1], lines[-2]]))  # last entry duplicated (count too)
    with open_manifest(m, ring) as vm, pytest.raises(Exception, match=r"duplicated|header says"):
        list(apply_manifest(vm, dst, ring, namespace=NS))
    assert all(os.listxattr(dst / n) == [] for n in ("a.b", "empty"))


def test_signature_that_does_not_verify_is_not_written(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path)
    other = make_key("ecdsa", "P-256")  # entry signatures by a key outside R
    lines = m.read_bytes().splitlines(keepends=True)
    from pyverity.keys import load_signer, sign_v3
    from pyverity.manifest.model import parse_entry, parse_header

    header = parse_header(lines[0])
    s = load_signer(other.key_path, cert=other.cert_path)
    out = [lines[0]]
    for n, line in enumerate(lines[1:-1], 1):
        e = parse_entry(line, header, n)
        if e.path == b"empty":
            import base64
            import dataclasses

            sig = sign_v3(s, 1, e.verity).to_bytes()  # type: ignore[union-attr]
            edited = dataclasses.replace(e, signature=sig).to_line()  # type: ignore[arg-type]
            assert base64.b64encode(sig) in edited
            out.append(edited)
            continue
        out.append(line)
    m.write_bytes(resign(out))
    with open_manifest(m, ring) as vm:
        res = {a.path: a for a in apply_manifest(vm, dst, ring, namespace=NS)}
    assert res[b"empty"].action == "written"
    assert "signature not written" in res[b"empty"].detail
    assert os.listxattr(dst / "empty") == [f"{NS}.verity"]


def test_v2_signatures_apply_as_imasig(tmp_path: Path) -> None:
    m, dst, ring = _setup(tmp_path, signatures="v2")
    with open_manifest(m, ring) as vm:
        assert all(a.action == "written" for a in apply_manifest(vm, dst, ring, namespace=NS))
    assert os.listxattr(dst / "a.b") == [f"{NS}.ima"]
    assert os.getxattr(dst / "a.b", f"{NS}.ima")[:1] == b"\x03"
    verify_file(dst / "a.b", ring, namespace=NS)
