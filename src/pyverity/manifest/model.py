"""The manifest format in code (docs/manifest.md): lines <-> frozen objects, no I/O.

A manifest is JSON Lines. Every line is one JSON object in canonical form (keys sorted, no
spaces, integers only, strings as :func:`json.dumps` writes them with ``ensure_ascii=False``)
followed by ``\\n``: a :class:`Header`, exactly ``Header.entries`` entries
(:class:`FileEntry` or :class:`SymlinkEntry`) in strictly increasing byte order of path, and
a :class:`SignatureLine` over the SHA-256 of every byte before it.

Parsing is strict: a line must be its own canonical encoding (so duplicate keys, unknown
keys, spaces or floats are refused), and paths must be canonical (:func:`check_path`).
Everything parsed here is unverified until :mod:`pyverity.manifest.reader` checks the
signature; this module never sees a key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass
from typing import Any

from pyverity.errors import FormatError
from pyverity.format import hashalg
from pyverity.format.params import TreeParams

__all__ = [
    "FORMAT",
    "MAX_LINE",
    "VERSION",
    "Entry",
    "FileEntry",
    "Header",
    "SignatureLine",
    "canonical_line",
    "check_path",
    "format_created",
    "parse_created",
    "parse_entry",
    "parse_header",
    "parse_signature_line",
]

FORMAT = "pyverity-manifest"
VERSION = 1
#: No valid line is longer (a path of 4096 bytes escaped, a target, digests, a signature).
MAX_LINE = 64 * 1024
#: Whole-file hashes a manifest may carry (hashlib names, which are also the JSON keys).
FILE_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512")
_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"duplicate key '{key}'")
        out[key] = value
    return out


def canonical_line(obj: dict[str, Any]) -> bytes:
    """The canonical encoding of one line, newline included."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def _load(line: bytes, what: str) -> dict[str, Any]:
    """Parse one line strictly: UTF-8, one JSON object, no duplicate keys, canonical bytes."""
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKeyError as e:
        raise FormatError(f"manifest {what}: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"manifest {what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"manifest {what} is not a JSON object")
    if canonical_line(obj) != line:
        raise FormatError(f"manifest {what} is not in canonical form (sorted keys, no spaces)")
    return obj


def _keys(obj: dict[str, Any], required: set[str], optional: set[str], what: str) -> None:
    missing = required - obj.keys()
    extra = obj.keys() - required - optional
    if missing:
        raise FormatError(f"manifest {what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise FormatError(f"manifest {what} has unknown key {sorted(extra)[0]}")


def _int(obj: dict[str, Any], key: str, what: str, *, limit: int = 1 << 63) -> int:
    value = obj[key]
    if type(value) is not int or not 0 <= value < limit:
        raise FormatError(f"manifest {what}: '{key}' must be an integer in [0, {limit})")
    return value


def _str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise FormatError(f"manifest {what}: '{key}' must be a string")
    return value


def _hex(value: object, size: int | None, what: str) -> bytes:
    if not isinstance(value, str) or value != value.lower():
        raise FormatError(f"manifest {what} must be lowercase hex")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise FormatError(f"manifest {what} must be lowercase hex") from None
    if raw.hex() != value or (size is not None and len(raw) != size):
        raise FormatError(f"manifest {what} must be {size} bytes of lowercase hex")
    return raw


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"manifest {what} must be base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"manifest {what} is not base64") from None
    if base64.b64encode(raw).decode() != value:
        raise FormatError(f"manifest {what} is not canonical base64")
    return raw


def format_created(when: datetime.datetime) -> str:
    """RFC 3339 in UTC, whole seconds: ``2026-12-02T06:00:00Z``."""
    if when.tzinfo is None:
        raise ValueError("created time must be timezone-aware")
    return when.astimezone(datetime.UTC).strftime(_CREATED_FORMAT)


def parse_created(text: str) -> datetime.datetime:
    """The inverse of :func:`format_created`; anything else is a :class:`FormatError`."""
    try:
        when = datetime.datetime.strptime(text, _CREATED_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise FormatError(
            f"created time '{text}' is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)"
        ) from None
    if format_created(when) != text:
        raise FormatError(f"created time '{text}' is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)")
    return when


def check_path(path: bytes) -> bytes:
    """Refuse a path that is not canonical and relative: empty, absolute, ``.``/``..`` or
    empty components, a trailing slash, or a NUL byte."""
    if not path:
        raise FormatError("manifest path is empty")
    if b"\0" in path:
        raise FormatError("manifest path contains a NUL byte")
    if path.startswith(b"/"):
        raise FormatError(f"manifest path {path!r} is absolute")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise FormatError(f"manifest path {path!r} is not canonical ('', '.' or '..')")
    return path


def _path_fields(path: bytes, key: str) -> dict[str, str]:
    try:
        return {key: path.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{key}_b64": base64.b64encode(path).decode()}


def _path_of(obj: dict[str, Any], key: str, what: str) -> bytes:
    plain, encoded = key in obj, f"{key}_b64" in obj
    if plain == encoded:
        raise FormatError(f"manifest {what} needs exactly one of '{key}' and '{key}_b64'")
    if plain:
        return _str(obj, key, what).encode("utf-8")
    raw = _b64(obj[f"{key}_b64"], f"{what} {key}_b64")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    raise FormatError(f"manifest {what}: '{key}_b64' holds valid UTF-8 (use '{key}')")


def display(path: bytes) -> str:
    """A path for messages: UTF-8, undecodable bytes escaped."""
    return path.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Header:
    """The first line: what the manifest is about and how its digests were computed."""

    name: str
    serial: int
    created: str
    params: TreeParams
    file_hashes: tuple[str, ...]
    keyid: int
    entries: int
    skipped: int
    signatures: str | None  # None, "v3" or "v2"

    def __post_init__(self) -> None:
        parse_created(self.created)
        if not self.file_hashes or any(h not in FILE_HASHES for h in self.file_hashes):
            raise FormatError(
                f"manifest header: file hashes must be among {', '.join(FILE_HASHES)}"
            )
        if len(set(self.file_hashes)) != len(self.file_hashes):
            raise FormatError("manifest header: a file hash is named twice")
        if self.signatures not in (None, "v2", "v3"):
            raise FormatError("manifest header: 'signatures' must be v2 or v3")
        if not 0 <= self.keyid < 1 << 32:
            raise FormatError("manifest header: keyid out of range")

    def to_line(self) -> bytes:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "serial": self.serial,
            "created": self.created,
            "tree": {
                "hash": self.params.hash_alg.name,
                "block_size": self.params.block_size,
                "salt": self.params.salt.hex(),
            },
            "file_hashes": list(self.file_hashes),
            "keyid": f"{self.keyid:08x}",
            "entries": self.entries,
            "skipped": self.skipped,
        }
        if self.signatures is not None:
            obj["signatures"] = self.signatures
        return canonical_line(obj)


def parse_header(line: bytes) -> Header:
    what = "header"
    obj = _load(line, what)
    required = {"format", "version", "name", "serial", "created", "tree", "file_hashes"}
    _keys(obj, required | {"keyid", "entries", "skipped"}, {"signatures"}, what)
    if obj["format"] != FORMAT:
        raise FormatError(f"not a pyverity manifest (format '{obj['format']}')")
    if obj["version"] != VERSION:
        raise FormatError(f"manifest version {obj['version']} is not supported (only {VERSION})")
    tree = obj["tree"]
    if not isinstance(tree, dict):
        raise FormatError("manifest header: 'tree' must be an object")
    _keys(tree, {"hash", "block_size", "salt"}, set(), "header tree")
    try:
        params = TreeParams(
            hashalg.by_name(_str(tree, "hash", what)),
            _int(tree, "block_size", what),
            _hex(tree["salt"], None, "header salt"),
        )
        params.check_bounded()
    except FormatError as e:
        raise FormatError(f"manifest header: {e}") from None
    hashes = obj["file_hashes"]
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise FormatError("manifest header: 'file_hashes' must be a list of names")
    return Header(
        name=_str(obj, "name", what),
        serial=_int(obj, "serial", what),
        created=_str(obj, "created", what),
        params=params,
        file_hashes=tuple(hashes),
        keyid=int.from_bytes(_hex(obj["keyid"], 4, "header keyid"), "big"),
        entries=_int(obj, "entries", what),
        skipped=_int(obj, "skipped", what),
        signatures=obj.get("signatures"),
    )


@dataclass(frozen=True)
class FileEntry:
    """A regular file: its size, permission bits, fs-verity digest, whole-file hashes and, with
    ``--signatures``, the exact ``<ns>.ima`` value (0x06 v3, or 0x03 v2) to write."""

    path: bytes
    size: int
    mode: int
    verity: bytes
    hashes: tuple[tuple[str, bytes], ...]
    signature: bytes | None = None

    def to_line(self) -> bytes:
        obj: dict[str, Any] = {
            **_path_fields(self.path, "path"),
            "type": "file",
            "size": self.size,
            "mode": self.mode,
            "verity": self.verity.hex(),
            "hashes": {name: digest.hex() for name, digest in self.hashes},
        }
        if self.signature is not None:
            obj["sig"] = base64.b64encode(self.signature).decode()
        return canonical_line(obj)


@dataclass(frozen=True)
class SymlinkEntry:
    """A symbolic link, recorded as a link (never followed): its target bytes."""

    path: bytes
    target: bytes

    def to_line(self) -> bytes:
        obj = {**_path_fields(self.path, "path"), "type": "symlink"}
        return canonical_line({**obj, **_path_fields(self.target, "target")})


Entry = FileEntry | SymlinkEntry


def parse_entry(line: bytes, header: Header, number: int) -> Entry:
    """Parse entry line ``number`` (1-based, for messages) under ``header``'s choices."""
    what = f"entry {number}"
    obj = _load(line, what)
    kind = obj.get("type")
    path_keys = {"path", "path_b64"}
    if kind == "symlink":
        _keys(obj, {"type"}, path_keys | {"target", "target_b64"}, what)
        path = check_path(_path_of(obj, "path", what))
        target = _path_of(obj, "target", what)
        if not target or b"\0" in target:
            raise FormatError(f"manifest {what}: symlink target is empty or has a NUL byte")
        return SymlinkEntry(path, target)
    if kind != "file":
        raise FormatError(f"manifest {what}: unknown type {kind!r}")
    signed = {"sig"} if header.signatures else set()
    _keys(obj, {"type", "size", "mode", "verity", "hashes"} | signed, path_keys, what)
    path = check_path(_path_of(obj, "path", what))
    hashes = obj["hashes"]
    if not isinstance(hashes, dict) or sorted(hashes) != sorted(header.file_hashes):
        raise FormatError(f"manifest {what}: 'hashes' must hold exactly the header's file hashes")
    parsed = tuple(
        (name, _hex(hashes[name], hashalg_size(name), f"{what} {name}"))
        for name in header.file_hashes
    )
    signature = _b64(obj["sig"], f"{what} sig") if header.signatures else None
    return FileEntry(
        path=path,
        size=_int(obj, "size", what),
        mode=_int(obj, "mode", what, limit=0o10000),
        verity=_hex(obj["verity"], header.params.digest_size, f"{what} verity"),
        hashes=parsed,
        signature=signature,
    )


def hashalg_size(name: str) -> int:
    import hashlib

    return hashlib.new(name).digest_size


@dataclass(frozen=True)
class SignatureLine:
    """The last line: a signature by ``keyid`` over ``digest`` = SHA-256 of all bytes before."""

    keyid: int
    digest: bytes
    signature: bytes

    def to_line(self) -> bytes:
        return canonical_line(
            {
                "type": "signature",
                "hash": "sha256",
                "keyid": f"{self.keyid:08x}",
                "digest": self.digest.hex(),
                "sig": base64.b64encode(self.signature).decode(),
            }
        )


def parse_signature_line(line: bytes) -> SignatureLine:
    what = "signature line"
    obj = _load(line, what)
    if obj.get("type") != "signature":
        raise FormatError("manifest is truncated or unsigned: its last line is not a signature")
    _keys(obj, {"type", "hash", "keyid", "digest", "sig"}, set(), what)
    if obj["type"] != "signature" or obj["hash"] != "sha256":
        raise FormatError("manifest signature line: expected type signature over sha256")
    sig = _b64(obj["sig"], "signature")
    if not 0 < len(sig) <= 1024:
        raise FormatError("manifest signature is empty or longer than 1024 bytes")
    return SignatureLine(
        keyid=int.from_bytes(_hex(obj["keyid"], 4, "signature keyid"), "big"),
        digest=_hex(obj["digest"], 32, "signature digest"),
        signature=sig,
    )
