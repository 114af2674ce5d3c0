"""A minimal, independent reader of ``binary_runtime_measurements`` (spec/ima.md §4.4).

A test oracle written from the spec, deliberately apart from :mod:`pyverity.format.measurelist`
so the two can be checked against each other and against the kernel's own list.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

__all__ = ["Entry", "extended", "parse", "replay"]


@dataclass(frozen=True)
class Entry:
    pcr: int
    template_digest: bytes  # SHA-1 in the legacy list, the bank's hash in a per-bank one
    template: str
    data: bytes  # the template data: u32 len || field, for each field
    fields: tuple[bytes, ...]

    @property
    def violation(self) -> bool:
        return self.template_digest == bytes(len(self.template_digest))

    def template_hash(self, bank: str) -> bytes:
        return hashlib.new(bank, self.data).digest()

    @property
    def file_name(self) -> str:
        return self.fields[1].rstrip(b"\0").decode()

    def digest_field(self) -> tuple[str, bytes]:
        """(prefix without the trailing ':', digest) of a ``d-ng``/``d-ngv2`` field."""
        prefix, _, digest = self.fields[0].partition(b"\0")
        return prefix.decode().rstrip(":"), digest


def parse(data: bytes, digest_size: int = 20) -> list[Entry]:
    """The records of a binary list whose template digests have ``digest_size`` bytes (20:
    the legacy list and ``_sha1``; a per-bank list's have its bank's size)."""
    out: list[Entry] = []
    pos = 0
    head = struct.Struct(f"<I{digest_size}sI")
    while pos < len(data):
        pcr, digest, name_len = head.unpack_from(data, pos)
        pos += head.size
        name = data[pos : pos + name_len].decode()
        pos += name_len
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        body = data[pos : pos + size]
        pos += size
        fields, off = [], 0
        while off < len(body):
            (n,) = struct.unpack_from("<I", body, off)
            fields.append(body[off + 4 : off + 4 + n])
            off += 4 + n
        if off != len(body) or pos > len(data):
            raise ValueError("malformed measurement list")
        out.append(Entry(pcr, digest, name, body, tuple(fields)))
    return out


def extended(e: Entry, bank: str, hashed: bool = True, stored: bool = False) -> bytes:
    """What the kernel extends ``bank`` with for ``e``: the entry's own template digest as the
    list records it (``stored``: a per-bank list's are its bank's), else the bank's hash of the
    template data (``hashed``), else (no such hash in the kernel when IMA started) the entry's
    SHA-1 template digest zero-padded; 0xFF… for a violation."""
    size = hashlib.new(bank).digest_size
    if e.violation:
        return b"\xff" * size
    if stored:
        return e.template_digest
    if hashed:
        return e.template_hash(bank)
    return e.template_digest[:20].ljust(size, b"\0")


def replay(
    entries: list[Entry], bank: str, pcr: int = 10, hashed: bool = True, stored: bool = False
) -> bytes:
    """PCR value after extending every entry of ``pcr`` (:func:`extended`)."""
    value = bytes(hashlib.new(bank).digest_size)
    for e in entries:
        if e.pcr == pcr:
            value = hashlib.new(bank, value + extended(e, bank, hashed, stored)).digest()
    return value
