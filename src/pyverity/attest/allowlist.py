"""A measurement list checked against an allowlist: a Keylime runtime policy or a manifest.

:func:`load_allowlist` reads the allowlist once into an index on disk (a private temporary
SQLite database, its page cache bounded by :data:`CACHE_KIB`): path -> allowed digests. A
Keylime policy is read member by member (:mod:`.jsonstream`) and checked against keylime's
schema as it goes (:mod:`.keylime`); a pyverity manifest has its signature verified first
(:func:`pyverity.manifest.open_manifest`), then each file gives its whole-file hashes (for
``ima-ng``/``ima-sig`` entries) and its fs-verity digest (for ``ima-ngv2``/``ima-sigv2``).
Memory does not grow with the allowlist or the list.

:class:`AllowlistChecker` then judges one record at a time, as keylime's ``ima.py`` does:

- a name matched by an ``excludes`` regex (:mod:`.regex`, no backtracking) passes;
- with a keyring, an entry whose ``sig`` verifies over its digest passes (keylime's
  ``verification-keys``; pyverity uses ``--keyring``);
- otherwise the name must be in the allowlist (else *unknown*) with the entry's digest (else
  *mismatch*): against a Keylime policy by hex, as keylime compares, an fs-verity digest never
  matching (a policy holds file hashes only); against a manifest by algorithm and digest of the
  same kind;
- ``ima-buf`` entries: a buffer that holds a key by the policy's ``keyrings`` (unless its
  keyring is ignored), any other buffer by ``ima-buf`` (``excludes`` apply to both);
  a violation entry (ToMToU/open-writers, no digest) is a problem, as keylime counts it.
"""

from __future__ import annotations

import contextlib
import hmac
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyverity.attest.jsonstream import JsonStream
from pyverity.attest.keylime import (
    check_digest_list,
    check_member,
    check_required,
    kernel_path,
)
from pyverity.attest.regex import Matcher, compile_excludes
from pyverity.errors import Error, FormatError, PolicyError, UsageError
from pyverity.format.ima import algo_by_name
from pyverity.fs.inputs import open_stream
from pyverity.manifest.model import MAX_LINE, FileEntry, parse_header

if TYPE_CHECKING:
    from pyverity.format.measurelist import MeasurementRecord
    from pyverity.keys import Keyring
    from pyverity.manifest import Expectations, VerifiedManifest
    from pyverity.measure.verify import EntryProblem

__all__ = ["CACHE_KIB", "Allowlist", "AllowlistChecker", "CheckCounts", "load_allowlist"]

#: SQLite page cache of the index (KiB): the index itself lives in a temporary file.
CACHE_KIB = 16 * 1024
_BATCH = 10_000


class Allowlist:
    """path -> allowed digest tokens, on disk; plus the small members of a policy."""

    def __init__(self, kind: str, source: str) -> None:
        self.kind = kind  # "keylime" | "manifest"
        self.source = source
        self.exclude_patterns: list[str] = []
        self.excludes: Matcher = compile_excludes([])
        #: Tokens allowed besides the index's (``--boot-aggregate``), by name.
        self.extra: dict[str, list[str]] = {}
        self.ignored_keyrings: list[str] = []
        self.keyrings: dict[str, list[str]] = {}
        self.ima_buf: dict[str, list[str]] = {}
        self.log_hash_alg = "sha1"
        self.paths = 0
        self._db = sqlite3.connect("", isolation_level=None)  # "": a private temporary file
        for pragma in (
            f"cache_size=-{CACHE_KIB}",
            "journal_mode=OFF",
            "synchronous=OFF",
            "temp_store=FILE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE allow (path TEXT PRIMARY KEY, digests TEXT NOT NULL) WITHOUT ROWID"
        )
        self._pending: list[tuple[str, str]] = []

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Allowlist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building --------------------------------------------------------------------------

    def add(self, path: str, tokens: list[str]) -> None:
        self._pending.append((path, " ".join(tokens)))
        if len(self._pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        merge = self.kind == "manifest"  # 'a b' and 'a_b' are one name to the kernel
        sql = "INSERT INTO allow VALUES (?, ?)"
        if merge:
            sql += " ON CONFLICT(path) DO UPDATE SET digests = digests || ' ' || excluded.digests"
        try:
            self._db.execute("BEGIN")
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise FormatError(f"{self.source}: a path is listed twice in 'digests'") from None
        except (sqlite3.Error, UnicodeEncodeError) as e:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise FormatError(f"{self.source}: cannot index the allowlist: {e}") from None
        self.paths += len(rows)

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, path: str) -> list[str] | None:
        """The allowed tokens of ``path``, or ``None`` if it is not listed."""
        try:
            row = self._db.execute("SELECT digests FROM allow WHERE path = ?", (path,)).fetchone()
        except UnicodeEncodeError:  # a name that is not UTF-8 cannot be in a JSON allowlist
            return None
        extra = self.extra.get(path)
        if row is None:
            return extra
        return str(row[0]).split(" ") + (extra or [])


# -- loading ------------------------------------------------------------------------------------


def _read_policy(path: str, allow: Allowlist) -> None:
    what = f"runtime policy '{path}'"
    with open_stream(path, "runtime policy") as stream:
        js = JsonStream(stream, what)
        seen: list[str] = []
        try:
            for key in js.members():
                seen.append(key)
                if key == "digests":
                    for name in js.members(check_duplicates=False):
                        allow.add(name, check_digest_list(js.value(), f"digests {name!r}"))
                    allow.flush()
                    continue
                value = js.value()
                check_member(key, value)
                _take(allow, key, value)
            js.end()
            if "payload" in seen and "digests" not in seen:
                raise FormatError("a DSSE envelope: check its signature and unwrap it first")
            check_required(seen)
        except FormatError as e:
            if str(e).startswith(what):
                raise
            raise FormatError(f"{what}: {e}") from None
        except PolicyError as e:
            raise PolicyError(f"{what}: {e}") from None


def _take(allow: Allowlist, key: str, value: Any) -> None:
    if key == "excludes":
        allow.exclude_patterns = list(value)
        allow.excludes = compile_excludes(value)
    elif key == "ima":
        allow.ignored_keyrings = list(value["ignored_keyrings"])
        allow.log_hash_alg = value["log_hash_alg"]
    elif key == "keyrings":
        allow.keyrings = value
    elif key == "ima-buf":
        allow.ima_buf = value


def _kernel_name(hashlib_name: str) -> str:
    """The kernel's name for a manifest's hashlib name (``sha3_256`` -> ``sha3-256``)."""
    return algo_by_name(hashlib_name).name


def _index_manifest(manifest: VerifiedManifest, prefix: str, allow: Allowlist) -> None:
    h = manifest.header
    names = [_kernel_name(n) for n in h.file_hashes]
    tree = _kernel_name(h.params.hash_alg.name)
    for entry in manifest.entries():
        if not isinstance(entry, FileEntry):
            continue
        name = kernel_path(prefix, entry.path)
        if name is None:
            continue
        tokens = [f"{n}:{d.hex()}" for n, (_, d) in zip(names, entry.hashes, strict=True)]
        tokens.append(f"verity:{tree}:{entry.verity.hex()}")
        allow.add(name, tokens)
    allow.flush()


def _is_manifest(path: str) -> bool:
    with open_stream(path, "allowlist") as stream:
        first = stream.readline(MAX_LINE + 1)
    try:
        parse_header(first)
    except Error:
        return False
    return True


def load_allowlist(
    path: str,
    *,
    keyring: Keyring | None,
    prefix: str = "/",
    expect: Expectations | None = None,
    excludes: tuple[str, ...] = (),
    boot_aggregate: tuple[str, ...] = (),
) -> Allowlist:
    """Index a Keylime policy or a manifest (told apart by the manifest's header line); a
    manifest needs ``keyring`` and is verified before any entry is read. ``excludes`` and
    ``boot_aggregate`` (hex digests of the ``boot_aggregate`` entry) add to what it allows."""
    from pyverity.manifest import Expectations, open_manifest

    if not prefix.startswith("/"):
        raise UsageError(f"--prefix '{prefix}' must be an absolute path")
    extra = compile_excludes(excludes, "--exclude")
    if _is_manifest(path):
        if keyring is None:
            raise UsageError(
                f"'{path}' is a pyverity manifest: give --allowlist-keyring (or --keyring) to"
                " verify its signature"
            )
        allow = Allowlist("manifest", f"manifest '{path}'")
        try:
            with open_manifest(path, keyring, expect or Expectations()) as m:
                _index_manifest(m, prefix, allow)
        except BaseException:
            allow.close()
            raise
        allow.exclude_patterns = list(excludes)
        allow.excludes = extra
    else:
        allow = Allowlist("keylime", f"runtime policy '{path}'")
        try:
            _read_policy(path, allow)
        except BaseException:
            allow.close()
            raise
        if excludes:
            allow.exclude_patterns += excludes
            allow.excludes = compile_excludes(allow.exclude_patterns)
    if boot_aggregate:
        check_digest_list(list(boot_aggregate), "--boot-aggregate")
        allow.extra["boot_aggregate"] = list(boot_aggregate)
    return allow


# -- checking -----------------------------------------------------------------------------------


@dataclass
class CheckCounts:
    checked: int = 0
    allowed: int = 0
    excluded: int = 0
    signed: int = 0
    unknown: int = 0
    mismatch: int = 0
    other: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


class AllowlistChecker:
    """:meth:`check` each record in order; problems are returned, counts kept."""

    def __init__(self, allowlist: Allowlist, keyring: Keyring | None = None) -> None:
        self.allowlist = allowlist
        self.keyring = keyring
        self.counts = CheckCounts()

    def check(self, index: int, record: MeasurementRecord) -> EntryProblem | None:
        from pyverity.measure.verify import EntryProblem

        c = self.counts
        c.checked += 1
        kind, reason = self._judge(record)
        if kind is None:
            return None
        setattr(c, kind, getattr(c, kind) + 1)
        return EntryProblem(index, kind, reason, record.file_name)

    def _judge(self, record: MeasurementRecord) -> tuple[str | None, str]:
        allow, c = self.allowlist, self.counts
        name = record.file_name
        if record.is_violation:
            return "other", "a violation entry (ToMToU/open-writers): the content is unknown"
        try:
            digest = record.digest
        except FormatError as e:
            return "other", f"unreadable digest: {e}"
        if digest is None or not name:
            return "other", f"template {record.template_name}: no digest and name to check"
        if record.template_name == "ima-buf":
            return self._buffer(name, digest.digest.hex(), record.field("buf") or b"")
        if allow.excludes.match(name):
            c.excluded += 1
            return None, ""
        if self._signed(record):
            c.signed += 1
            return None, ""
        tokens = allow.lookup(name)
        if tokens is None:
            return "unknown", "not in the allowlist"
        if allow.kind == "keylime":
            if digest.kind == "verity":
                return "mismatch", (
                    f"{digest}: an fs-verity digest, and a Keylime policy holds file hashes only"
                )
            want = digest.digest.hex()
        else:
            want = f"{digest.algo}:{digest.digest.hex()}"
            if digest.kind == "verity":
                want = "verity:" + want
        bare = digest.digest.hex()  # --boot-aggregate values are bare hex
        if any(hmac.compare_digest(want, t) or t == bare for t in tokens):
            c.allowed += 1
            return None, ""
        return "mismatch", f"{digest} is not an allowed digest of this path"

    def _buffer(self, name: str, hexdigest: str, data: bytes) -> tuple[str | None, str]:
        """As keylime's ``_validate_ima_buf``: a buffer holding a key (one loaded on a keyring)
        passes if its keyring is ignored, excluded, or its digest is in ``keyrings``; any other
        buffer if excluded or its digest is in ``ima-buf``."""
        allow, c = self.allowlist, self.counts
        kind = _buffer_kind(data)
        if kind == "bad-key":
            return "other", "buffer holds a key of a type keylime does not support"
        if kind == "key" and ("*" in allow.ignored_keyrings or name in allow.ignored_keyrings):
            c.excluded += 1
            return None, ""
        if allow.excludes.match(name):
            c.excluded += 1
            return None, ""
        table, what = (allow.keyrings, "keyrings") if kind == "key" else (allow.ima_buf, "ima-buf")
        if name not in table:
            return "unknown", f"buffer not in the policy's {what}"
        if hexdigest in table[name]:
            c.allowed += 1
            return None, ""
        return "mismatch", f"buffer digest {hexdigest} is not allowed in {what}"

    def _signed(self, record: MeasurementRecord) -> bool:
        if self.keyring is None or "sig" not in record.field_ids or not record.signature:
            return False
        from pyverity.measure.verify import check_signature

        try:
            check_signature(record, self.keyring)
        except Error:
            return False
        return True


def _buffer_kind(data: bytes) -> str:
    """``key`` if ``data`` is an RSA or EC key (a certificate, public or private key, DER or
    PEM: what keylime's ``get_pubkey`` tries), ``bad-key`` for another type of key, else
    ``data``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    loaders = (
        lambda d: x509.load_der_x509_certificate(d).public_key(),
        lambda d: x509.load_pem_x509_certificate(d).public_key(),
        serialization.load_der_public_key,
        serialization.load_pem_public_key,
        lambda d: serialization.load_der_private_key(d, None).public_key(),
        lambda d: serialization.load_pem_private_key(d, None).public_key(),
    )
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, TypeError):
            continue
        supported = isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
        return "key" if supported else "bad-key"
    return "data"
