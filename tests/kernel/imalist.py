"""A minimal, independent reader of ``binary_runtime_measurements`` (spec/ima.md §4.4).

A test oracle written from the spec, deliberately apart from :mod:`pyverity.format.measurelist`
so the two can be checked against each other and against the kernel's own list.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

__all__ = ["Entry", "parse", "replay"]


@dataclass(frozen=True)
class Entry:
    pcr: int
    template_digest: bytes  # SHA-1, as stored in the legacy list
    template: str
    data: bytes  # the template data: u32 len || field, for each field
    fields: tuple[bytes, ...]

    @property
    def violation(self) -> bool:
        return self.template_digest == bytes(20)

    def template_hash(self, bank: str) -> bytes:
        return hashlib.new(bank, self.data).digest()

    @property
    def file_name(self) -> str:
        return self.fields[1].rstrip(b"\0").decode()

    def digest_field(self) -> tuple[str, bytes]:
        """(prefix without the trailing ':', digest) of a ``d-ng``/``d-ngv2`` field."""
        prefix, _, digest = self.fields[0].partition(b"\0")
        return prefix.decode().rstrip(":"), digest


def parse(data: bytes) -> list[Entry]:
    out: list[Entry] = []
    pos = 0
    while pos < len(data):
        pcr, digest, name_len = struct.unpack_from("<I20sI", data, pos)
        pos += 28
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


def replay(entries: list[Entry], bank: str, pcr: int = 10) -> bytes:
    """PCR value after extending every entry of ``pcr`` (violations extend 0xFF…)."""
    size = hashlib.new(bank).digest_size
    value = bytes(size)
    for e in entries:
        if e.pcr != pcr:
            continue
        extend = b"\xff" * size if e.violation else e.template_hash(bank)
        value = hashlib.new(bank, value + extend).digest()
    return value
