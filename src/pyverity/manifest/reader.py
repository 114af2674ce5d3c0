"""Reading a manifest: signature first, then entries, strictly (docs/manifest.md).

:func:`open_manifest` opens the file once (a regular file: a FIFO, directory or device is
refused at once, without blocking), copies its bytes into a private unlinked temporary file
(bounded by :data:`MAX_MANIFEST`), and checks the last line's signature over the SHA-256 of
every byte before it, **before** any entry is parsed. Everything after comes from that private
copy, so what is acted on is exactly what was verified, even if the file changes meanwhile.

:meth:`VerifiedManifest.entries` then yields the entries, refusing (one
:class:`~pyverity.errors.FormatError`) a non-canonical line or path, an unknown key, a
duplicate JSON key, an entry out of byte order or a duplicate path, and a count that is not
the header's. Callers that must write nothing on bad input call :meth:`check` first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from pyverity.errors import FormatError, InputError, SignatureError
from pyverity.format.ima import HashAlgoId
from pyverity.fs.atomic import write_all
from pyverity.fs.inputs import open_input
from pyverity.manifest.model import (
    MAX_LINE,
    Entry,
    Header,
    SignatureLine,
    display,
    parse_entry,
    parse_header,
    parse_signature_line,
)

if TYPE_CHECKING:
    from pyverity.keys import Keyring

__all__ = ["MAX_MANIFEST", "Expectations", "VerifiedManifest", "open_manifest"]

#: A manifest larger than this is refused (about 40 million entries).
MAX_MANIFEST = 16 << 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Expectations:
    """What the caller requires of a manifest besides a good signature."""

    name: str | None = None
    min_serial: int | None = None


class VerifiedManifest:
    """A manifest whose signature verified; its entries are read from a private copy."""

    def __init__(self, copy: IO[bytes], header: Header, body: tuple[int, int], sig: SignatureLine):
        self._copy = copy
        self.header = header
        self._body = body  # [start, end) of the entry lines in the copy
        self.signature = sig

    def close(self) -> None:
        self._copy.close()

    def __enter__(self) -> VerifiedManifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self) -> Iterator[Entry]:
        """The entries in order, each checked (see the module docstring)."""
        start, end = self._body
        f = self._copy
        f.seek(start)
        previous: bytes | None = None
        count = 0
        pos = start
        while pos < end:
            line = f.readline(min(MAX_LINE, end - pos) + 1)
            pos += len(line)
            count += 1
            if not line.endswith(b"\n") or pos > end:
                raise FormatError(f"manifest entry {count} is longer than {MAX_LINE} bytes")
            entry = parse_entry(line, self.header, count)
            if previous is not None and entry.path <= previous:
                what = "duplicated" if entry.path == previous else "out of order"
                raise FormatError(f"manifest entry {count} ('{display(entry.path)}') is {what}")
            previous = entry.path
            if count > self.header.entries:
                break
            yield entry
        if count != self.header.entries:
            raise FormatError(
                f"manifest holds {count} entries, its header says {self.header.entries}"
            )

    def check(self) -> None:
        """Parse every entry once; raise on the first bad one (nothing is acted on)."""
        for _ in self.entries():
            pass


def _copy_private(path: str | os.PathLike[str], limit: int) -> tuple[IO[bytes], int]:
    fd = open_input(path, "manifest")
    copy = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the VerifiedManifest
    try:
        total = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise InputError(f"manifest '{os.fsdecode(path)}' is larger than {limit} bytes")
            write_all(copy.fileno(), chunk)
    except OSError as e:
        copy.close()
        raise InputError(f"can't read manifest '{os.fsdecode(path)}': {e.strerror}") from e
    except BaseException:
        copy.close()
        raise
    finally:
        os.close(fd)
    return copy, total


def _last_line_start(copy: IO[bytes], size: int) -> int:
    """Where the signature line starts: after the newline before the final one."""
    tail = min(size, MAX_LINE)
    copy.seek(size - tail)
    data = copy.read(tail)
    if not data.endswith(b"\n"):
        raise FormatError("manifest is truncated (it does not end with a newline)")
    cut = data.rfind(b"\n", 0, len(data) - 1)
    if cut < 0:
        if tail == size:
            raise FormatError("manifest is truncated (a single line, no signature)")
        raise FormatError("manifest signature line is too long")
    return size - tail + cut + 1


def _sha256_prefix(copy: IO[bytes], end: int) -> bytes:
    h = hashlib.sha256()
    copy.seek(0)
    left = end
    while left:
        chunk = copy.read(min(_CHUNK, left))
        if not chunk:  # pragma: no cover - the private copy cannot shrink
            raise FormatError("manifest copy shrank")
        h.update(chunk)
        left -= len(chunk)
    return h.digest()


def open_manifest(
    path: str | os.PathLike[str],
    keyring: Keyring,
    expect: Expectations = Expectations(),
    *,
    limit: int = MAX_MANIFEST,
) -> VerifiedManifest:
    """Copy, verify (signature, then header, name and serial) and return the manifest."""
    copy, size = _copy_private(path, limit)
    try:
        sig_start = _last_line_start(copy, size)
        copy.seek(sig_start)
        sig = parse_signature_line(copy.read(size - sig_start))
        digest = _sha256_prefix(copy, sig_start)
        if not hmac.compare_digest(digest, sig.digest):
            raise SignatureError(
                "manifest is truncated or altered: its bytes do not hash to the signed digest"
            )
        keyring.get(sig.keyid).verify_signature(sig.signature, digest, HashAlgoId.SHA256)
        copy.seek(0)
        first = copy.readline(MAX_LINE + 1)
        if not first.endswith(b"\n") or len(first) > sig_start:
            raise FormatError("manifest header line is missing or too long")
        header = parse_header(first)
        if header.keyid != sig.keyid:
            raise SignatureError(
                f"manifest header names key {header.keyid:08x}, it is signed by {sig.keyid:08x}"
            )
        _check_expectations(header, expect)
    except BaseException:
        copy.close()
        raise
    return VerifiedManifest(copy, header, (len(first), sig_start), sig)


def _check_expectations(header: Header, expect: Expectations) -> None:
    if expect.name is not None and header.name != expect.name:
        raise SignatureError(f"manifest is for '{header.name}', not '{expect.name}'")
    if expect.min_serial is not None and header.serial < expect.min_serial:
        raise SignatureError(
            f"manifest serial {header.serial} is older than the minimum {expect.min_serial}"
        )
