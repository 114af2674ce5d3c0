"""manifest.model: canonical lines round-trip; strict parsing refuses everything else."""

from __future__ import annotations

import base64

import pytest

from pyverity.errors import FormatError
from pyverity.format.params import TreeParams
from pyverity.manifest.model import (
    FileEntry,
    Header,
    SymlinkEntry,
    check_path,
    parse_created,
    parse_entry,
    parse_header,
    parse_signature_line,
)

HEADER = Header("t", 3, "2026-01-02T03:04:05Z", TreeParams(), ("sha256",), 0x1234ABCD, 2, 0, "v3")


def _file(path: bytes) -> FileEntry:
    return FileEntry(path, 5, 0o644, bytes(32), (("sha256", bytes(range(32))),), b"\x06\x03sig")


def test_header_round_trip_and_canonical() -> None:
    line = HEADER.to_line()
    assert line.endswith(b"\n")
    assert b" " not in line
    assert parse_header(line) == HEADER
    assert line.startswith(b'{"created":"2026-01-02T03:04:05Z","entries":2,')


@pytest.mark.parametrize(
    "path", [b"plain", b"new\nline", b"back\\slash", b"bad\xff", b"d\xc3/x", "€".encode()]
)
def test_entry_round_trip(path: bytes) -> None:
    entry = _file(path)
    line = entry.to_line()
    assert line.count(b"\n") == 1
    assert parse_entry(line, HEADER, 1) == entry
    link = SymlinkEntry(path, b"t\xfe")
    assert parse_entry(link.to_line(), HEADER, 1) == link


def test_invalid_utf8_uses_b64_and_valid_does_not() -> None:
    assert b'"path_b64":"' + base64.b64encode(b"bad\xff") in _file(b"bad\xff").to_line()
    forged = b'{"path_b64":"' + base64.b64encode(b"ok") + b'","target":"x","type":"symlink"}\n'
    with pytest.raises(FormatError, match="valid UTF-8"):
        parse_entry(forged, HEADER, 1)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b'{"path":"x","path":"y","target":"t","type":"symlink"}\n', "duplicate key 'path'"),
        (b'{"type":"symlink","path":"x","target":"t"}\n', "canonical"),
        (b'{"path": "x","target":"t","type":"symlink"}\n', "canonical"),
        (b'{"path":"x","target":"t","type":"symlink","zz":1}\n', "unknown key"),
        (b'{"path":"x","type":"symlink"}\n', "exactly one"),
        (b'{"path":"x","target":"t","type":"fifo"}\n', "unknown type"),
        (b"[1]\n", "not a JSON object"),
        (b"{not json}\n", "not JSON"),
        (b'{"path":"","target":"t","type":"symlink"}\n', "empty"),
        (b'{"path":"/etc/x","target":"t","type":"symlink"}\n', "absolute"),
        (b'{"path":"a/../b","target":"t","type":"symlink"}\n', "canonical"),
        (b'{"path":"./b","target":"t","type":"symlink"}\n', "canonical"),
        (b'{"path":"a//b","target":"t","type":"symlink"}\n', "canonical"),
        (b'{"path":"a/","target":"t","type":"symlink"}\n', "canonical"),
        (b'{"path":"a\\u0000b","target":"t","type":"symlink"}\n', "NUL"),
    ],
)
def test_bad_entry_lines(line: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        parse_entry(line, HEADER, 1)


def test_file_entry_fields_are_checked() -> None:
    good = _file(b"f").to_line()
    for old, new, match in [
        (b'"size":5', b'"size":5.0', "integer"),
        (b'"size":5', b'"size":-5', "integer"),
        (b'"mode":420', b'"mode":4096', "integer"),
        (b'"verity":"00', b'"verity":"0', "hex"),
        (b'{"sha256":', b'{"sha512":', "file hashes"),
    ]:
        with pytest.raises(FormatError, match=match):
            parse_entry(good.replace(old, new, 1), HEADER, 1)


def test_paths_and_times() -> None:
    assert check_path(b"a/b") == b"a/b"
    for bad in (b"", b".", b"..", b"/a", b"a/./b", b"a\0b"):
        with pytest.raises(FormatError):
            check_path(bad)
    parse_created("2026-01-02T03:04:05Z")
    for bad in ("2026-01-02T03:04:05+00:00", "2026-01-02 03:04:05Z", "2026-1-2T03:04:05Z"):
        with pytest.raises(FormatError):
            parse_created(bad)


def test_last_line_must_be_a_signature() -> None:
    with pytest.raises(FormatError, match="truncated"):
        parse_signature_line(_file(b"f").to_line())
