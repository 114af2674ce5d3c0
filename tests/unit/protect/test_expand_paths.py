"""``sign -r``/``verify -r`` walk beneath each directory named, never following a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyverity.errors import InputError
from pyverity.fs.openfile import FileRef
from pyverity.protect.batch import expand_paths
from tests.support.trees import tree_and_outside


def test_symlinked_directory_inside_is_not_descended(tmp_path: Path) -> None:
    tree, outside = tree_and_outside(tmp_path)
    (tree / "out").symlink_to(outside)  # a directory swapped for a symlink, say
    (tree / "flink").symlink_to(tree / "a")
    refs = expand_paths([str(tree)], recursive=True)
    assert [r.path for r in refs] == [str(tree / "a"), str(tree / "sub" / "f")]
    assert {(r.root, r.rel) for r in refs} == {(str(tree), "a"), (str(tree), "sub/f")}


def test_symlink_named_with_recursive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    with pytest.raises(InputError, match="is a symbolic link") as e:
        expand_paths([str(tmp_path / "link")], recursive=True)
    assert "\n" not in str(e.value)
    # Without -r a path is taken as given; a missing one fails later, when opened.
    assert expand_paths([str(tmp_path / "link")], recursive=False) == [
        FileRef(None, str(tmp_path / "link"))
    ]
    assert expand_paths([str(tmp_path / "nope")], recursive=True) == [
        FileRef(None, str(tmp_path / "nope"))
    ]
