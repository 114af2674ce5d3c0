"""Keylime runtime policies: written from a verified manifest, and their shape checked.

:func:`export_policy` writes a policy with every key of keylime's ``RUNTIME_POLICY_SCHEMA``
(keylime 7.14, ``keylime/ima/ima.py``): ``meta`` {version, generator, timestamp},
``release``, ``digests``, ``excludes``, ``keyrings``, ``ima`` {ignored_keyrings,
log_hash_alg, dm_policy: null}, ``ima-buf`` and ``verification-keys``. It streams: the small
members first, then ``digests`` one path per line, as the manifest's entries come (memory grows
only with the number of names that hold a space, see :func:`export_policy`).

- ``digests`` maps each file's path as the kernel records it (``prefix`` + the manifest's
  path, absolute, spaces as ``_``) to its whole-file hashes. fs-verity digests never go there:
  keylime compares hex strings only, and would take them for file hashes.
- ``verification-keys`` holds the keyring's public keys with explicit ``keyids`` (the
  certificates' SKID keyids, as pyverity signs with), so keylime does not derive its own
  (the SHA-1 of the key).
- ``release`` is the manifest's serial; ``meta.timestamp`` its ``created`` time.

:func:`check_member` and :func:`check_required` are that schema by hand (keylime's own code
is a test dependency only), applied member by member as a policy is read.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from cryptography.hazmat.primitives import serialization

from pyverity.attest.regex import compile_excludes
from pyverity.errors import FormatError, UsageError
from pyverity.manifest.model import FileEntry

if TYPE_CHECKING:
    from pyverity.keys import Keyring
    from pyverity.manifest import VerifiedManifest

__all__ = [
    "GENERATOR",
    "LOG_HASH_ALGS",
    "REQUIRED",
    "ExportOptions",
    "ExportReport",
    "check_digest_list",
    "check_member",
    "check_required",
    "export_policy",
    "kernel_path",
    "verification_keys",
]

#: ``RUNTIME_POLICY_CURRENT_VERSION`` of keylime 7.14.
POLICY_VERSION = 1
#: ``RUNTIME_POLICY_GENERATOR.LegacyAllowList``: what keylime's own ``create_runtime_policy``
#: writes (above ``EmptyAllowList``, so the verifier reports that a runtime policy is set).
GENERATOR = 3
LOG_HASH_ALGS = ("sha1", "sha256", "sha384", "sha512")
REQUIRED = (
    "meta",
    "release",
    "digests",
    "excludes",
    "keyrings",
    "ima",
    "ima-buf",
    "verification-keys",
)


@dataclass(frozen=True)
class ExportOptions:
    #: Where the manifest's tree lives on the machines that run it (absolute).
    prefix: str = "/"
    #: The list's template-hash algorithm (sha1 for ``binary_runtime_measurements``).
    log_hash_alg: str = "sha1"
    #: Digests allowed for the list's ``boot_aggregate`` entry (hex), none to leave it out.
    boot_aggregate: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or "\0" in self.prefix:
            raise UsageError(f"--prefix '{self.prefix}' must be an absolute path")
        if self.log_hash_alg not in LOG_HASH_ALGS:
            raise UsageError(f"log hash algorithm must be one of {', '.join(LOG_HASH_ALGS)}")
        for value in self.boot_aggregate:
            check_digest_list([value], "boot_aggregate")
        compile_excludes(self.excludes)  # refuse at once what could not be evaluated


@dataclass
class ExportReport:
    files: int = 0
    symlinks: int = 0
    #: Paths left out: not UTF-8 (a JSON policy cannot name them).
    not_utf8: list[str] = field(default_factory=list)
    #: Names that two manifest paths share once spaces are ``_`` (their digests are merged).
    merged: int = 0


def kernel_path(prefix: str, path: bytes) -> str | None:
    """The name the kernel records for manifest ``path`` under ``prefix``: absolute, spaces as
    ``_`` (``n-ng``); ``None`` if it is not UTF-8."""
    try:
        rel = path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (prefix.rstrip("/") + "/" + rel).replace(" ", "_")


#: keylime's schema: ``re.search("^[0-9a-f]{40,128}$")``, so one final newline passes too (a
#: fixed pattern of ours, without nested repeats: :mod:`re` is safe and fast on it).
_HEX_DIGEST = re.compile(r"[0-9a-f]{40,128}\n?")


def _is_hex_digest(value: object) -> bool:
    return isinstance(value, str) and _HEX_DIGEST.fullmatch(value) is not None


def check_digest_list(value: object, what: str) -> list[str]:
    """One member of a ``digests``-like object: a non-empty list of lowercase hex digests."""
    if not isinstance(value, list) or not value:
        raise FormatError(f"{what}: must be a non-empty list of hex digests")
    for item in value:
        if not _is_hex_digest(item):
            raise FormatError(f"{what}: {item!r} is not 40-128 lowercase hex digits")
    return value


def _integer(value: object) -> bool:
    # JSON Schema's "integer": a number with no fraction (1.0 too), never a boolean
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _digests_object(value: object, what: str) -> None:
    if not isinstance(value, dict):
        raise FormatError(f"'{what}' must be an object")
    for key, digests in value.items():
        check_digest_list(digests, f"{what} {key!r}")


def _check_keys(value: object) -> None:
    if not isinstance(value, str):
        raise FormatError("'verification-keys' must be a string")
    if not value:
        return
    try:
        obj = json.loads(value)
    except ValueError:
        raise FormatError("'verification-keys' is not JSON") from None
    if not isinstance(obj, dict) or "keyids" not in obj or "pubkeys" not in obj:
        raise FormatError("'verification-keys' must be an object with keyids and pubkeys")
    keyids, pubkeys = obj["keyids"], obj["pubkeys"]
    if not isinstance(keyids, list) or not all(_integer(k) for k in keyids):
        raise FormatError("'verification-keys' keyids must be a list of integers")
    if not isinstance(pubkeys, list) or not all(isinstance(k, str) for k in pubkeys):
        raise FormatError("'verification-keys' pubkeys must be a list of strings")
    meta = obj.get("meta")
    if meta is not None and (
        not isinstance(meta, dict)
        or "version" not in meta
        or not _integer(meta["version"])
        or meta["version"] < 1
    ):
        raise FormatError("'verification-keys' meta must hold a version of at least 1")


def check_member(key: str, value: Any) -> None:
    """Check one top-level member (other than ``digests``, checked entry by entry) against
    keylime's schema; :class:`FormatError` naming it. Unknown members are allowed, as there."""
    if key == "meta":
        if not isinstance(value, dict) or "version" not in value or "generator" not in value:
            raise FormatError("'meta' must be an object with version and generator")
        if not _integer(value["version"]) or value["version"] < 0:
            raise FormatError("'meta' version must be a non-negative integer")
        if not _integer(value["generator"]) or not 0 <= value["generator"] <= GENERATOR:
            raise FormatError(f"'meta' generator must be an integer in 0..{GENERATOR}")
        if "timestamp" in value and not isinstance(value["timestamp"], str):
            raise FormatError("'meta' timestamp must be a string")
    elif key == "release":
        if not _integer(value) or value < 0:
            raise FormatError("'release' must be a non-negative integer")
    elif key == "excludes":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FormatError("'excludes' must be a list of strings")
    elif key in ("keyrings", "ima-buf"):
        _digests_object(value, key)
    elif key == "ima":
        if not isinstance(value, dict) or any(
            k not in value for k in ("ignored_keyrings", "log_hash_alg", "dm_policy")
        ):
            raise FormatError("'ima' must hold ignored_keyrings, log_hash_alg and dm_policy")
        ignored = value["ignored_keyrings"]
        if not isinstance(ignored, list) or not all(isinstance(v, str) for v in ignored):
            raise FormatError("'ima' ignored_keyrings must be a list of strings")
        if value["log_hash_alg"] not in LOG_HASH_ALGS:
            raise FormatError(f"'ima' log_hash_alg must be one of {', '.join(LOG_HASH_ALGS)}")
        if value["dm_policy"] is not None:
            raise FormatError("'ima' dm_policy must be null (device-mapper policies unsupported)")
    elif key == "verification-keys":
        _check_keys(value)


def check_required(seen: Iterable[str]) -> None:
    missing = [k for k in REQUIRED if k not in set(seen)]
    if missing:
        raise FormatError(f"lacks {', '.join(repr(k) for k in missing)}")


def verification_keys(keyring: Keyring | None) -> str:
    """keylime's ``ImaKeyring.to_string()`` form: SubjectPublicKeyInfo DER in base64, with the
    keyids pyverity uses (the SKID's last 4 bytes), so keylime does not derive its own."""
    if keyring is None or not len(keyring):
        return ""
    certs = list(keyring)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return json.dumps(
        {
            "meta": {"version": 1},
            "keyids": [c.keyid for c in certs],
            "pubkeys": [
                base64.b64encode(c.cert.public_key().public_bytes(der, spki)).decode()
                for c in certs
            ],
        }
    )


def _hexes(entry: FileEntry) -> list[str]:
    return [digest.hex() for _name, digest in entry.hashes]


def export_policy(
    manifest: VerifiedManifest,
    out: TextIO,
    keyring: Keyring | None,
    options: ExportOptions = ExportOptions(),
) -> ExportReport:
    """Write the runtime policy of ``manifest`` (already verified) to ``out``.

    The manifest is read twice: first to check every entry and find the names that contain a
    space (two paths, ``a b`` and ``a_b``, are one name to the kernel; their digests are
    merged, and only those names are held in memory), then to write each file's entry: a
    manifest with a bad entry writes nothing. Symlinks are left out (the
    kernel measures their targets under the targets' names).
    """
    report = ExportReport()
    spaced: set[str] = set()
    for entry in manifest.entries():  # every entry parses before a byte is written
        if isinstance(entry, FileEntry) and b" " in entry.path:
            name = kernel_path(options.prefix, entry.path)
            if name is not None:
                spaced.add(name)
    h = manifest.header
    members: list[tuple[str, object]] = [
        (
            "meta",
            {"version": POLICY_VERSION, "generator": GENERATOR, "timestamp": h.created},
        ),
        ("release", h.serial),
        ("excludes", list(options.excludes)),
        ("keyrings", {}),
        (
            "ima",
            {"ignored_keyrings": [], "log_hash_alg": options.log_hash_alg, "dm_policy": None},
        ),
        ("ima-buf", {}),
        ("verification-keys", verification_keys(keyring)),
    ]
    write = out.write
    write("{\n")
    for key, value in members:
        write(f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n")
    write(' "digests": {')
    sep = "\n"

    def member(name: str, hexes: list[str]) -> None:
        nonlocal sep
        write(f"{sep}  {json.dumps(name, ensure_ascii=False)}: {json.dumps(hexes)}")
        sep = ",\n"

    if options.boot_aggregate:
        member("boot_aggregate", list(dict.fromkeys(options.boot_aggregate)))
    held: dict[str, list[str]] = {}
    for entry in manifest.entries():
        if not isinstance(entry, FileEntry):
            report.symlinks += 1
            continue
        name = kernel_path(options.prefix, entry.path)
        if name is None:
            report.not_utf8.append(entry.path.decode("utf-8", "backslashreplace"))
            continue
        report.files += 1
        if name in spaced:
            if name in held:
                report.merged += 1
            held.setdefault(name, []).extend(_hexes(entry))
            continue
        member(name, _hexes(entry))
    for name in sorted(held):
        member(name, sorted(set(held[name])))
    write("\n }\n}\n")
    return report
