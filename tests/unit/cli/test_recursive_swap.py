"""``sign -r``/``verify -r``/``enable -r``: a directory swapped for a symlink after the listing.

The walk lists ``tree/sub/f``; before any file is opened, ``tree/sub`` is renamed away and a
symlink to an outside directory (holding its own ``f``) takes its name. The swap is made by
wrapping :func:`pyverity.protect.batch.expand_paths`, between the listing and the opens, so
the race is deterministic. The outside file is never signed, enabled or verified; the
command reports the listed path in one line and exits 1. Inline (``--jobs 1``) and in
forked workers (``--jobs 2``) alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from pyverity.cli import main
from pyverity.fs.openfile import FileRef
from pyverity.protect import batch
from tests.support.trees import tree_and_outside
from tests.unit.keys.keyhelpers import keyring_dir, make_key


def _swap_after_listing(
    monkeypatch: pytest.MonkeyPatch, tree: Path, outside: Path
) -> list[list[FileRef]]:
    listed: list[list[FileRef]] = []
    real = batch.expand_paths

    def expand(paths: Iterable[str], *, recursive: bool) -> list[FileRef]:
        refs = real(paths, recursive=recursive)
        listed.append(refs)
        (tree / "sub").rename(tree / "sub.old")
        (tree / "sub").symlink_to(outside)
        return refs

    monkeypatch.setattr(batch, "expand_paths", expand)
    return listed


def _key_args() -> list[str]:
    k = make_key()
    return ["--key", str(k.key_path), "--cert", str(k.cert_path)]


def _one_line_about(err: str, path: Path) -> None:
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1, err
    assert "symbolic link" in lines[0]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sign_r_never_signs_through_a_swapped_directory(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    jobs: str,
) -> None:
    tree, outside = tree_and_outside(tmp_path)
    listed = _swap_after_listing(monkeypatch, tree, outside)
    rc = main(["sign", "-r", "--xattr-user", "--jobs", jobs, *_key_args(), str(tree)])
    assert rc == 1
    assert [r.path for r in listed[0]] == [str(tree / "a"), str(tree / "sub" / "f")]
    assert "user.ima" not in os.listxattr(outside / "f")
    assert "user.verity" not in os.listxattr(outside / "f")
    assert "user.ima" in os.listxattr(tree / "a")  # the rest of the tree is still signed
    _one_line_about(capsys.readouterr().err, tree / "sub" / "f")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_verify_r_never_verifies_through_a_swapped_directory(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    jobs: str,
) -> None:
    tree, outside = tree_and_outside(tmp_path)
    # Both the outside file and the tree are signed: followed, the swap would verify "ok".
    assert main(["sign", "-r", "--xattr-user", *_key_args(), str(outside), str(tree)]) == 0
    capsys.readouterr()
    _swap_after_listing(monkeypatch, tree, outside)
    ring = str(keyring_dir(make_key()))
    rc = main(["verify", "-r", "--xattr-user", "--jobs", jobs, "--keyring", ring, str(tree)])
    assert rc == 1
    out = capsys.readouterr().out
    assert f"{tree / 'a'}: ok" in out
    lines = [line for line in out.splitlines() if str(tree / "sub" / "f") in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"{tree / 'sub' / 'f'}: FAILED: unreadable")
    assert "symbolic link" in lines[0]


def test_enable_r_never_enables_through_a_swapped_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, outside = tree_and_outside(tmp_path)
    _swap_after_listing(monkeypatch, tree, outside)
    assert main(["enable", "-r", "--xattr-user", str(tree)]) == 1
    assert "user.verity" not in os.listxattr(outside / "f")
    assert "user.verity" in os.listxattr(tree / "a")
    _one_line_about(capsys.readouterr().err, tree / "sub" / "f")
