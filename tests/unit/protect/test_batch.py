"""Batch helpers: ordered outcomes from worker processes, failures per file, path expansion."""

from __future__ import annotations

import functools
from pathlib import Path

from pyverity.format import TreeParams
from pyverity.hashing import compute_digest
from pyverity.protect.batch import expand_paths, map_files, measure_file
from pyverity.protect.sign import hash_file


def test_map_files_order_and_failures(tmp_path: Path) -> None:
    paths = []
    for i in range(7):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * (i * 5000))
        paths.append(str(p))
    paths.insert(3, str(tmp_path / "missing"))
    seen: list[str] = []
    fn = functools.partial(hash_file, params=TreeParams(block_size=1024), jobs=1)
    outs = list(map_files(fn, paths, jobs=2, on_done=lambda o: seen.append(o.path)))
    assert [o.path for o in outs] == paths
    assert sorted(seen) == sorted(paths)
    bad = outs[3]
    assert bad.value is None
    assert bad.failure is not None
    assert bad.failure.error == "InputError"
    assert "No such file" in bad.failure.message
    for o in outs[:3] + outs[4:]:
        assert o.failure is None
        assert o.value is not None
        expected = compute_digest(o.path, TreeParams(block_size=1024)).digest
        assert o.value.descriptor.digest() == expected
    inline = list(map_files(fn, paths[:2], jobs=1))
    assert [o.value for o in inline] == [o.value for o in outs[:2]]


def test_expand_paths(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "b").write_bytes(b"")
    (tmp_path / "d" / "e" / "a").write_bytes(b"")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "b")
    files = expand_paths([str(tmp_path / "d")], recursive=True)
    assert [f.path for f in files] == [str(tmp_path / "d" / "b"), str(tmp_path / "d" / "e" / "a")]
    named = expand_paths([str(tmp_path / "d")], recursive=False)
    assert [(f.root, f.path) for f in named] == [(None, str(tmp_path / "d"))]


def test_measure_file_kinds(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    m = measure_file(str(f), "user")
    assert m.protection is not None
    assert m.computed is None
    import os

    os.setxattr(f, "user.ima", b"\x09")
    m = measure_file(str(f), "user")
    assert m.protection is None
    assert m.invalid is not None
    assert "unknown type 0x09" in m.invalid


def test_measure_file_unsupported_classic_algorithm(tmp_path: Path) -> None:
    import os

    f = tmp_path / "f"
    f.write_bytes(b"abc")
    os.setxattr(f, "user.ima", b"\x04\x12" + bytes(32))  # streebog256: parses, not computed
    m = measure_file(str(f), "user")
    assert m.protection is None
    assert m.invalid == "hash algorithm streebog256 is not supported"
