"""Rebuilding a measurement-list record from a line of ``ascii_runtime_measurements``.

The kernel prints ``PCR template-digest template-name`` and then, for each field, a space and
the field (nothing for an empty one): digests as ``algo:hex`` (``d-ng``, ``d-modsig``) or
``type:algo:hex`` (``d-ngv2``), binary fields as hex (``d``, ``sig``, ``buf``, ``modsig``…),
names as text. Every field but the name is free of spaces, so a template with exactly one name
field (``ima``, ``ima-ng``, ``ima-sig``, ``ima-buf``, ``ima-modsig``, ``ima-ngv2``…) is read
back whole: the fields before the name from the left, those after it from the right, the name
is what remains (it may hold spaces). Templates with numbers (``evm-sig``'s ``iuid``), several
names, or fields pyverity does not know cannot be rebuilt from text: read the binary list.

The bank of the line is the size of its template digest (20 bytes sha1, 32 sha256, 48 sha384,
64 sha512), or the one given (``sm3`` has 32 bytes too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyverity.errors import FormatError
from pyverity.format.listbanks import digest_size

if TYPE_CHECKING:  # measurelist imports this module at its end
    from pyverity.format.measurelist import MeasurementRecord

__all__ = ["BANK_BY_SIZE", "parse_ascii_line"]

#: The bank of a template digest of each size, when the list does not say.
BANK_BY_SIZE = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
_STRING_FIELDS = ("n", "n-ng")
_HEX_FIELDS = ("d", "sig", "buf", "modsig", "evmsig", "xattrlengths", "xattrvalues")
_DIGEST_FIELDS = ("d-ng", "d-ngv2", "d-modsig")


def _field(fid: str, text: str) -> bytes:
    from pyverity.format.measurelist import DigestField

    if fid in _HEX_FIELDS:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise FormatError(f"field {fid} is not hex") from None
    if not text:
        return b""
    return DigestField.parse(text, v2=fid == "d-ngv2").to_bytes()


def parse_ascii_line(line: str, *, bank: str | None = None) -> MeasurementRecord:
    """Rebuild a record from one ascii line (see the module docstring for which templates).

    Names are taken as shown; a name containing a newline cannot be read back from the ascii
    list (use the binary list). ``bank`` is the list's bank (default: from the digest's size).
    """
    from pyverity.format.measurelist import MeasurementRecord, known_fields

    text = line[:-1] if line.endswith("\n") else line
    head = text.lstrip(" ").split(" ", 3)  # "%2d": PCRs below 10 have a leading space
    if len(head) < 4:
        raise FormatError("ascii line has fewer than 4 columns")
    pcr_text, digest_hex, name, rest = head
    try:
        pcr = int(pcr_text)
        digest = bytes.fromhex(digest_hex)
    except ValueError:
        raise FormatError("ascii line: bad PCR or template digest column") from None
    if bank is None:
        bank = BANK_BY_SIZE.get(len(digest))
        if bank is None:
            raise FormatError(f"ascii line: template digest of {len(digest)} bytes (no bank)")
    elif len(digest) != digest_size(bank):
        raise FormatError(
            f"ascii line: template digest of {len(digest)} bytes in a {bank} list "
            f"({digest_size(bank)})"
        )
    ids = known_fields(name)
    names = [i for i, fid in enumerate(ids or ()) if fid in _STRING_FIELDS]
    if (
        ids is None
        or len(names) != 1
        or not set(ids) <= {*_STRING_FIELDS, *_HEX_FIELDS, *_DIGEST_FIELDS}
    ):
        raise FormatError(
            f"ascii line: template {name} cannot be rebuilt from text",
            remedy="read the binary list (binary_runtime_measurements)",
        )
    at = names[0]
    fields: list[bytes] = [b""] * len(ids)
    try:
        for i in range(at):
            token, sep, rest = rest.partition(" ")
            if not sep:
                raise FormatError(f"ascii line: missing column after {ids[i]}")
            fields[i] = _field(ids[i], token)
        for i in range(len(ids) - 1, at, -1):
            rest, sep, token = rest.rpartition(" ")
            if not sep:
                raise FormatError(f"ascii line: missing {ids[i]} column")
            fields[i] = _field(ids[i], token)
    except FormatError as exc:
        if exc.message.startswith("ascii line"):
            raise
        raise FormatError(f"ascii line: {exc}") from None
    if "\0" in rest:
        raise FormatError("ascii line: NUL in the name")
    fields[at] = rest.encode("utf-8", "surrogateescape") + b"\0"
    return MeasurementRecord(pcr, digest, name, tuple(fields), bank)
