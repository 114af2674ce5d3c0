"""create_manifest + open_manifest: round trip, determinism, and every refusal of bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pyverity.errors import Error, FileChangedError, FormatError, InputError, SignatureError
from pyverity.hashing import onepass
from pyverity.keys import Keyring
from pyverity.manifest import Expectations, create_manifest, open_manifest
from pyverity.manifest.model import FileEntry, SymlinkEntry
from tests.unit.keys.keyhelpers import make_key
from tests.unit.manifest.helpers import keyring, make_manifest, make_tree, options, resign, signer


def _open(m: Path, **kw: object) -> list[object]:
    with open_manifest(m, Keyring.from_directory(keyring()), Expectations(**kw)) as vm:  # type: ignore[arg-type]
        return list(vm.entries())


def test_round_trip_awkward_names(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    paths = make_tree(tree)
    m = make_manifest(tmp_path, tree, signatures="v3")
    entries = _open(m)
    assert [e.path for e in entries] == paths  # type: ignore[attr-defined]
    by_path = {e.path: e for e in entries}  # type: ignore[attr-defined]
    link = by_path[b"link"]
    assert isinstance(link, SymlinkEntry)
    assert link.target == b"a/b"
    f = by_path[b"bad\xff\xfeutf8"]
    assert isinstance(f, FileEntry)
    data = (tree / os.fsdecode(b"bad\xff\xfeutf8")).read_bytes()
    assert f.hashes == (
        ("sha256", hashlib.sha256(data).digest()),
        ("sha512", hashlib.sha512(data).digest()),
    )
    assert f.size == len(data)
    assert f.mode == 0o644
    assert f.signature is not None
    lines = m.read_bytes().splitlines(keepends=True)
    assert b'"skipped":1' in lines[0]
    assert b'"entries":13' in lines[0]


@pytest.mark.parametrize(("kind", "size"), [("rsa", "2048"), ("ecdsa", "P-256")])
def test_deterministic_whatever_the_jobs(tmp_path: Path, kind: str, size: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    key = make_key(kind, size)
    outs = []
    for jobs in (1, 3):
        out = tmp_path / f"m{jobs}"
        create_manifest(out, [str(tree)], signer(key), options(jobs=jobs))
        outs.append(out.read_bytes())
    if kind == "rsa":
        assert outs[0] == outs[1]  # RSA PKCS#1 v1.5: even the signature is identical
    else:  # ECDSA signatures are randomised; every other line is identical
        a, b = (o.splitlines(keepends=True) for o in outs)
        assert a[:-1] == b[:-1]
        assert a[-1] != b[-1]


def test_several_roots_merge_and_refuse_overlap(tmp_path: Path) -> None:
    (tmp_path / "r1" / "a").mkdir(parents=True)
    (tmp_path / "r2").mkdir()
    (tmp_path / "r1" / "a" / "x").write_text("1")
    (tmp_path / "r2" / "a.b").write_text("2")
    out = tmp_path / "m"
    s = signer(make_key())
    create_manifest(out, [str(tmp_path / "r1"), str(tmp_path / "r2")], s, options())
    assert [e.path for e in _open(out)] == [b"a.b", b"a/x"]  # type: ignore[attr-defined]
    (tmp_path / "r2" / "a").mkdir()
    (tmp_path / "r2" / "a" / "x").write_text("3")
    out.unlink()
    with pytest.raises(InputError, match="more than one"):
        create_manifest(out, [str(tmp_path / "r1"), str(tmp_path / "r2")], s, options())
    assert not out.exists()


def test_changed_while_read_is_never_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "quiet").write_bytes(b"q" * 10)
    (tree / "busy").write_bytes(os.urandom(1 << 20))
    real = onepass.hash_once

    def meddling(fd: int, params: object, hashes: tuple[str, ...], **kw: object) -> object:
        def touch(done: int) -> None:
            if os.fstat(fd).st_size == 1 << 20:
                with (tree / "busy").open("ab") as f:
                    f.write(b"!")

        return real(fd, params, hashes, chunk_size=4096, progress=touch)  # type: ignore[arg-type]

    monkeypatch.setattr("pyverity.manifest.compute.hash_once", meddling)
    seen = []
    out = tmp_path / "m"
    with pytest.raises(FileChangedError, match="not written"):
        create_manifest(out, [str(tree)], signer(make_key()), options(), on_failure=seen.append)
    assert [f.path for f in seen] == [b"busy"]
    assert seen[0].changed
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def _lines(tmp_path: Path) -> list[bytes]:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("a", "b", "c"):
        (tree / name).write_text(name)
    m = make_manifest(tmp_path, tree)
    return m.read_bytes().splitlines(keepends=True)


def _refused(tmp_path: Path, data: bytes, match: str, exc: type[Error] = FormatError) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(data)
    with pytest.raises(exc, match=match):
        _open(bad)


def test_signature_checked_and_bytes_bound(tmp_path: Path) -> None:
    lines = _lines(tmp_path)
    assert len(_open(tmp_path / "m.jsonl")) == 3
    body = b"".join(lines)
    garbage = [lines[0], b"{not json at all\n", *lines[2:]]
    _refused(tmp_path, b"".join(garbage), "truncated or altered", SignatureError)  # before parsing
    _refused(tmp_path, body[:-1], "truncated")
    _refused(tmp_path, b"".join(lines[:-1]), "truncated")  # signature line dropped
    _refused(
        tmp_path,
        b"".join([lines[0], lines[2], lines[1], lines[3], lines[4]]),
        "truncated or altered",
        SignatureError,
    )
    _refused(tmp_path, b"".join(lines[:3] + lines[4:]), "truncated or altered", SignatureError)
    flipped = lines[-1].replace(b'"sig":"', b'"sig":"A', 1).replace(b'=",', b'",', 1)
    _refused(tmp_path, b"".join(lines[:-1]) + flipped, "signature|base64", Error)
    other = make_key("ecdsa", "P-256")
    _refused(tmp_path, resign(lines[:-1], other), "unknown key", SignatureError)


def test_entry_checks_after_signature(tmp_path: Path) -> None:
    h, a, b, c, _ = _lines(tmp_path)
    _refused(tmp_path, resign([h, b, a, c]), "out of order")
    _refused(tmp_path, resign([h, a, a, c]), "duplicated")
    _refused(tmp_path, resign([h, a, b]), "holds 2 entries")
    _refused(tmp_path, resign([h, a, b, c, c.replace(b'"c"', b'"d"')]), "header says 3")
    _refused(tmp_path, resign([h, a, b, c.replace(b'"path":"c"', b'"path":"../c"')]), "canonical")
    _refused(tmp_path, resign([h, a, b, c.replace(b'"path":"c"', b'"path":"/c"')]), "absolute")
    _refused(
        tmp_path,
        resign([h, a, b, c.replace(b'"path":"c"', b'"path":"c","path":"c"')]),
        "duplicate key",
    )
    _refused(tmp_path, resign([h.replace(b"{", b'{"a":1,', 1), a, b, c]), "unknown key")
    start = h.index(b'"keyid":"') + 9
    kid = h[start : start + 8]
    _refused(
        tmp_path, resign([h.replace(kid, b"00000000", 1), a, b, c]), "names key", SignatureError
    )


def test_name_and_min_serial(tmp_path: Path) -> None:
    _lines(tmp_path)
    m = tmp_path / "m.jsonl"
    assert len(_open(m, name="tree", min_serial=1)) == 3
    with pytest.raises(SignatureError, match="not 'other'"):
        _open(m, name="other")
    with pytest.raises(SignatureError, match="older than the minimum 2"):
        _open(m, min_serial=2)


def test_manifest_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        _open(fifo)
    with pytest.raises(InputError, match="directory"):
        _open(tmp_path)
