"""IMA measurement-list records: template fields, template hashes, binary and ascii forms.

spec/ima.md §4. Pure bytes <-> objects, no I/O (readers take a ``read(n)`` callable, never a
path). A :class:`MeasurementRecord` is one entry of
``binary_runtime_measurements``: PCR index, the 20-byte SHA-1 template digest of the legacy
list, template name and the raw ``data`` of each field. Integers are little-endian, as the
kernel writes them on x86-64/arm64 (and everywhere under ``ima_canonical_fmt``).

- :func:`template_fields`: template name (or a ``d-ng|n-ng|sig`` format string) -> field ids;
- :class:`DigestField`: ``d-ng`` (``sha256:`` NUL digest) and ``d-ngv2`` (``verity:sha256:``
  NUL digest); :func:`encode_name`: ``n-ng`` (spaces become ``_``, the NUL is counted);
- :meth:`MeasurementRecord.template_hash`: the template hash for one PCR bank;
  :meth:`MeasurementRecord.build` computes the stored SHA-1 digest;
- :meth:`MeasurementRecord.to_bytes` / :func:`parse_binary`: the binary record;
  :func:`iter_records` parses one record at a time from a ``read(n)`` callable (a buffered
  file), so a list of any size is read in the memory of one record;
  :meth:`MeasurementRecord.ascii_line` / :func:`parse_ascii_line`: the ascii line.
"""

from __future__ import annotations

import functools
import hmac
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyverity.errors import FormatError
from pyverity.format import listbanks

__all__ = [
    "GENERIC_FIELD",
    "MAX_FIELD_COUNT",
    "MAX_NAME_LEN",
    "MAX_TEMPLATE_DATA",
    "NUM_PCRS",
    "SHA1_DIGEST_SIZE",
    "TEMPLATE_FIELDS",
    "WRITABLE_TEMPLATES",
    "DigestField",
    "MeasurementRecord",
    "ParsedList",
    "Reader",
    "TruncatedRecordError",
    "detect_bank",
    "encode_name",
    "iter_binary",
    "iter_records",
    "known_fields",
    "parse_ascii_line",
    "parse_binary",
    "read_record",
    "template_fields",
]

_U32 = struct.Struct("<I")

SHA1_DIGEST_SIZE = 20
#: PCR indexes a list entry may name (a TPM has 24 PCRs).
NUM_PCRS = 24
#: The field id given to each field of a template pyverity does not know (binary lists only:
#: its fields are length-prefixed, so it is read, shown as hex and replayed all the same).
GENERIC_FIELD = "?"

#: Template name -> field ids (spec/ima.md §4.1).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": (
        "d-ng",
        "n-ng",
        "evmsig",
        "xattrnames",
        "xattrlengths",
        "xattrvalues",
        "iuid",
        "igid",
        "imode",
    ),
}

#: The templates pyverity's own list writes.
WRITABLE_TEMPLATES = ("ima-ng", "ima-ngv2", "ima-sig", "ima-sigv2")

#: How each field is shown in the ascii list.
_RENDER = {
    "d": "hex",
    "n": "string",
    "d-ng": "digest",
    "d-ngv2": "digest",
    "d-modsig": "digest",
    "n-ng": "string",
    "sig": "hex",
    "buf": "hex",
    "modsig": "hex",
    "evmsig": "hex",
    "xattrnames": "string",
    "xattrlengths": "hex",
    "xattrvalues": "hex",
    "iuid": "uint",
    "igid": "uint",
    "imode": "uint",
    GENERIC_FIELD: "hex",
}

#: ``IMA_EVENT_NAME_LEN_MAX``: the legacy ``ima`` template pads names to this + 1 bytes.
_IMA_EVENT_NAME_LEN_MAX = 255
#: Bounds applied before anything is allocated (an untrusted list cannot make us allocate more).
MAX_NAME_LEN = 255
MAX_TEMPLATE_DATA = 1 << 20
MAX_FIELD_COUNT = 16


class TruncatedRecordError(FormatError):
    """The bytes end inside a record: a torn tail (crash during an append) or a cut copy."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def known_fields(name: str) -> tuple[str, ...] | None:
    """The field ids of template ``name`` (a known name or a ``|``-separated format string of
    known field ids), ``None`` for a template pyverity does not know."""
    fields = TEMPLATE_FIELDS.get(name)
    if fields is not None:
        return fields
    parts = tuple(name.split("|"))
    if (
        all(p in _RENDER and p != GENERIC_FIELD for p in parts)
        and len(parts) <= MAX_FIELD_COUNT
        and "d" not in parts
    ):
        return parts
    return None


def template_fields(name: str) -> tuple[str, ...]:
    """Like :func:`known_fields`, but :class:`FormatError` for an unknown template."""
    fields = known_fields(name)
    if fields is None:
        raise FormatError(f"unknown measurement template {name!r}")
    return fields


def _valid_template_name(name: str) -> bool:
    """What a list can name a template: printable ascii without spaces (the ascii list's
    columns are separated by spaces)."""
    ok = 0 < len(name) <= MAX_NAME_LEN and name.isascii() and name.isprintable()
    return ok and " " not in name


@dataclass(frozen=True)
class DigestField:
    """A ``d-ng`` / ``d-ngv2`` field: ``[kind:]algo:`` NUL digest.

    ``kind`` is ``"ima"`` (a hash of the file content) or ``"verity"`` (an fs-verity digest) for
    ``d-ngv2``, and ``None`` for ``d-ng``, which cannot tell them apart. ``algo`` is the kernel's
    hash name (``sha256``); it is empty only in entries of very old kernels (``:`` NUL digest).
    """

    algo: str
    digest: bytes
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (None, "ima", "verity"):
            raise FormatError(f"unknown digest type {self.kind!r} (ima or verity)")
        if ":" in self.algo or "\0" in self.algo or len(self.algo) > 32:
            raise FormatError(f"bad hash algorithm name {self.algo!r}")
        if not 0 < len(self.digest) <= 64:
            raise FormatError(f"digest of {len(self.digest)} bytes")

    @property
    def prefix(self) -> str:
        return f"{self.kind}:{self.algo}:" if self.kind else f"{self.algo}:"

    def to_bytes(self) -> bytes:
        return self.prefix.encode("ascii") + b"\0" + self.digest

    @classmethod
    def from_bytes(cls, data: bytes, *, v2: bool) -> DigestField:
        nul = data.find(b"\0")
        if nul < 1 or data[nul - 1 : nul] != b":":
            raise FormatError("digest field has no 'algo:' prefix")
        try:
            prefix = data[: nul - 1].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("digest field prefix is not ascii") from None
        kind: str | None = None
        if v2:
            kind, sep, prefix = prefix.partition(":")
            if not sep:
                raise FormatError("d-ngv2 field has no 'type:' prefix")
        return cls(algo=prefix, digest=bytes(data[nul + 1 :]), kind=kind)

    @classmethod
    def parse(cls, text: str, *, v2: bool) -> DigestField:
        """Parse the ascii form (``sha256:hex`` or ``verity:sha256:hex``)."""
        prefix, sep, hexdigest = text.rpartition(":")
        if not sep:
            raise FormatError(f"digest {text!r} has no 'algo:' prefix")
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            raise FormatError(f"digest {text!r} is not hex") from None
        return cls.from_bytes(prefix.encode("ascii", "replace") + b":\0" + digest, v2=v2)

    def __str__(self) -> str:
        return self.prefix + self.digest.hex()


def encode_name(name: str | bytes) -> bytes:
    """The ``n-ng`` field data: the name with spaces replaced by ``_``, NUL included."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    if b"\0" in raw:
        raise FormatError("a measured name cannot contain NUL")
    return raw.replace(b" ", b"_") + b"\0"


@dataclass(frozen=True)
class MeasurementRecord:
    """One measurement-list entry (spec/ima.md §4.4).

    ``bank`` is the PCR bank of the list it comes from (:mod:`pyverity.format.listbanks`):
    the template digest is that bank's (20 bytes in the legacy sha1 list). A template pyverity
    does not know has :data:`GENERIC_FIELD` ids, one per length-prefixed field.
    """

    pcr: int
    template_digest: bytes
    template_name: str
    fields: tuple[bytes, ...]
    bank: str = "sha1"

    def __post_init__(self) -> None:
        if not 0 <= self.pcr < NUM_PCRS:
            raise FormatError(f"PCR index {self.pcr} (a list has PCRs 0-{NUM_PCRS - 1})")
        size = _bank_size(self.bank)
        if len(self.template_digest) != size:
            raise FormatError(
                f"template digest of {len(self.template_digest)} bytes (the {self.bank} bank's "
                f"are {size})"
            )
        if not _valid_template_name(self.template_name):
            raise FormatError("template name empty, too long or not printable")
        if len(self.fields) > MAX_FIELD_COUNT:
            raise FormatError(f"template {self.template_name} has {len(self.fields)} fields")
        ids = self.field_ids
        if len(ids) != len(self.fields):
            raise FormatError(
                f"template {self.template_name} has {len(ids)} fields, record has "
                f"{len(self.fields)}"
            )
        if self.template_name == "ima" and (
            len(self.fields[0]) != SHA1_DIGEST_SIZE
            or not self.fields[1].endswith(b"\0")
            or len(self.fields[1]) > _IMA_EVENT_NAME_LEN_MAX + 1
        ):
            raise FormatError("malformed 'ima' template entry")
        if len(self.template_data()) > MAX_TEMPLATE_DATA:
            raise FormatError("template data too large")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls, pcr: int, template_name: str, fields: tuple[bytes, ...], *, bank: str = "sha1"
    ) -> MeasurementRecord:
        """A record whose stored digest is the ``bank`` template hash of ``fields``."""
        probe = cls(pcr, bytes(_bank_size(bank)), template_name, fields, bank)
        return cls(pcr, probe.template_hash(bank), template_name, fields, bank)

    @classmethod
    def for_file(
        cls,
        template_name: str,
        digest: DigestField,
        name: str | bytes,
        signature: bytes = b"",
        *,
        pcr: int = 10,
    ) -> MeasurementRecord:
        """The entry of one measured file (``ima-ng``, ``ima-ngv2``, ``ima-sig``, ``ima-sigv2``)."""
        if template_name not in WRITABLE_TEMPLATES:
            raise FormatError(
                f"template {template_name!r} cannot be written",
                remedy="use one of " + ", ".join(WRITABLE_TEMPLATES),
            )
        ids = TEMPLATE_FIELDS[template_name]
        v2 = ids[0] == "d-ngv2"
        if v2 and digest.kind is None:
            raise FormatError(f"template {template_name} needs the digest type (ima or verity)")
        if not v2:
            digest = DigestField(digest.algo, digest.digest)
        fields: tuple[bytes, ...] = (digest.to_bytes(), encode_name(name))
        if "sig" in ids:
            fields += (signature,)
        elif signature:
            raise FormatError(f"template {template_name} has no signature field")
        return cls.build(pcr, template_name, fields)

    # -- fields -------------------------------------------------------------------------------

    @functools.cached_property
    def field_ids(self) -> tuple[str, ...]:
        ids = known_fields(self.template_name)
        return ids if ids is not None else (GENERIC_FIELD,) * len(self.fields)

    @property
    def known_template(self) -> bool:
        """Whether pyverity knows the template's fields (else they are :data:`GENERIC_FIELD`)."""
        return known_fields(self.template_name) is not None

    def field(self, field_id: str) -> bytes | None:
        """The data of the first field called ``field_id``, or ``None`` if the template lacks it."""
        for fid, data in zip(self.field_ids, self.fields, strict=True):
            if fid == field_id:
                return data
        return None

    @property
    def is_violation(self) -> bool:
        """A ToMToU/open-writers entry: all-zero template digest, extended as 0xFF."""
        return not any(self.template_digest)

    @property
    def digest(self) -> DigestField | None:
        """The file digest (``d-ng``/``d-ngv2``; ``d`` as sha1), or ``None``."""
        if (data := self.field("d-ngv2")) is not None:
            return DigestField.from_bytes(data, v2=True)
        if (data := self.field("d-ng")) is not None:
            return DigestField.from_bytes(data, v2=False)
        if (data := self.field("d")) is not None:
            return DigestField("sha1", data)
        return None

    @property
    def file_name(self) -> str:
        """The measured name (``n-ng``/``n``) without its NUL; spaces appear as ``_``."""
        data = self.field("n-ng")
        if data is None:
            data = self.field("n") or b""
        return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    @property
    def signature(self) -> bytes:
        """The ``sig`` field (the whole ``security.ima`` value), empty if none."""
        return self.field("sig") or b""

    # -- hashing ------------------------------------------------------------------------------

    @functools.cached_property
    def _template_data(self) -> bytes:
        if self.template_name == "ima":
            return self.fields[0] + self.fields[1].ljust(_IMA_EVENT_NAME_LEN_MAX + 1, b"\0")
        return b"".join(_U32.pack(len(f)) + f for f in self.fields)

    @functools.cached_property
    def _hashes(self) -> dict[str, bytes]:
        return {}

    def template_data(self) -> bytes:
        """The template data as hashed (non-``ima`` templates: ``u32 len ‖ data`` per field).

        Computed once per record (a record is immutable), as are its template hashes: a
        verifier hashes each record for its stored digest and for every PCR bank."""
        return self._template_data

    def template_hash(self, algo: str) -> bytes:
        """The template digest for PCR bank ``algo`` (spec/ima.md §4.3; a ``tpm_alg_`` bank:
        the SHA-1 one zero-padded); :class:`~pyverity.errors.UnsupportedError` for a bank whose
        hash pyverity cannot compute."""
        value = self._hashes.get(algo)
        if value is None:
            value = self._hashes[algo] = listbanks.template_hash(algo, self._template_data)
        return value

    def pcr_extend_value(self, algo: str) -> bytes:
        """What the kernel extends into bank ``algo``: the template hash; 0xFF… for a violation."""
        if self.is_violation:
            return b"\xff" * _bank_size(algo)
        return self.template_hash(algo)

    @property
    def template_digest_ok(self) -> bool:
        """The stored digest is the template hash of the record's bank (violations: True)."""
        if self.is_violation:
            return True
        return hmac.compare_digest(self.template_hash(self.bank), self.template_digest)

    def verify_template_digest(self) -> None:
        """Raise :class:`FormatError` unless the stored digest is the bank's template hash."""
        if not self.template_digest_ok:
            raise FormatError("template digest does not match the template data")

    # -- serialization ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        name = self.template_name.encode()
        head = _header(len(self.template_digest)).pack(self.pcr, self.template_digest, len(name))
        head += name
        if self.template_name == "ima":
            ev = self.fields[1][:-1]
            return head + self.fields[0] + _U32.pack(len(ev)) + ev
        data = self.template_data()
        return head + _U32.pack(len(data)) + data

    def ascii_line(self) -> str:
        """The ``ascii_runtime_measurements`` line, with its newline."""
        parts = [f"{self.pcr:2d} {self.template_digest.hex()} {self.template_name}"]
        for fid, data in zip(self.field_ids, self.fields, strict=True):
            parts.append(_render(fid, data))
        return " ".join(parts) + "\n"


def _render(fid: str, data: bytes) -> str:
    how = _RENDER[fid]
    if how == "hex":
        return data.hex()
    if how == "string":
        return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if how == "uint":
        return str(int.from_bytes(data, "little")) if data else ""
    if not data:
        return ""
    nul = data.find(b"\0")
    return data[:nul].decode("ascii", "replace") + data[nul + 1 :].hex()


# -- binary list ------------------------------------------------------------------------------

#: Reads up to ``n`` bytes, fewer only at the end (``BufferedReader.read``, ``BytesIO.read``).
Reader = Callable[[int], bytes]


@functools.lru_cache(maxsize=32)
def _bank_size(bank: str) -> int:
    return listbanks.digest_size(bank)


@functools.lru_cache(maxsize=8)
def _header(digest_size: int) -> struct.Struct:
    """pcr, template digest (the list's bank: 20 bytes for the legacy sha1 list), name length."""
    return struct.Struct(f"<I{digest_size}sI")


class _Record:
    """Pulls one record's bytes from ``read``; a short read is a torn tail at ``start``."""

    __slots__ = ("pos", "read", "start")

    def __init__(self, read: Reader, start: int) -> None:
        self.read, self.start, self.pos = read, start, start

    def take(self, size: int) -> bytes:
        data = self.read(size)
        self.pos += len(data)
        if len(data) < size:
            raise TruncatedRecordError(
                f"record at offset {self.start} is incomplete "
                f"({self.pos - self.start} bytes, the list ends there)",
                offset=self.start,
            )
        return data


def read_record(
    read: Reader, start: int, *, bank: str = "sha1"
) -> tuple[MeasurementRecord, int] | None:
    """Parse the record at byte ``start`` from ``read``: ``(record, end)``, or ``None`` at a
    clean end of the list. Memory is bounded by one record (at most
    :data:`MAX_TEMPLATE_DATA` of template data, checked before it is read). ``bank`` is the
    list's PCR bank (the size of its template digests). A template pyverity does not know is
    read field by field through the fields' length prefixes.

    Raises :class:`TruncatedRecordError` if the bytes end inside the record and
    :class:`FormatError` (naming the offset) if it is malformed.
    """
    header = _header(_bank_size(bank))
    first = read(header.size)
    if not first:
        return None
    r = _Record(read, start)
    r.pos += len(first)
    if len(first) < header.size:
        first += r.take(header.size - len(first))
    pcr, digest, name_len = header.unpack(first)
    if not 0 <= pcr < NUM_PCRS:
        raise FormatError(f"record at offset {start}: PCR index {pcr} (a list has PCRs 0-23)")
    if not 0 < name_len <= MAX_NAME_LEN:
        raise FormatError(f"record at offset {start}: template name length {name_len}")
    raw_name = r.take(name_len)
    name = raw_name.decode("ascii", "replace")
    if not _valid_template_name(name):
        raise FormatError(f"record at offset {start}: bad template name {raw_name!r}")
    ids = known_fields(name)
    fields: list[bytes] = []
    if name == "ima":
        fields.append(r.take(SHA1_DIGEST_SIZE))
        (ev_len,) = _U32.unpack(r.take(4))
        if ev_len > _IMA_EVENT_NAME_LEN_MAX:
            raise FormatError(f"record at offset {start}: event name length {ev_len}")
        fields.append(r.take(ev_len) + b"\0")
    else:
        (total,) = _U32.unpack(r.take(4))
        if total > MAX_TEMPLATE_DATA:
            raise FormatError(f"record at offset {start}: template data length {total}")
        body = r.take(total)
        at = 0
        for fid in ids if ids is not None else _generic_ids(body, start):
            if at + 4 > total:
                raise FormatError(f"record at offset {start}: field {fid} overruns the entry")
            (flen,) = _U32.unpack_from(body, at)
            if at + 4 + flen > total:
                raise FormatError(f"record at offset {start}: field {fid} overruns the entry")
            fields.append(body[at + 4 : at + 4 + flen])
            at += 4 + flen
        if at != total:
            raise FormatError(f"record at offset {start}: {total - at} bytes after the fields")
    try:
        record = MeasurementRecord(pcr, digest, name, tuple(fields), bank)
    except FormatError as exc:
        raise FormatError(f"record at offset {start}: {exc}") from None
    return record, r.pos


def _generic_ids(body: bytes, start: int) -> Iterator[str]:
    """One :data:`GENERIC_FIELD` per length-prefixed field of ``body`` (an unknown template)."""
    at = n = 0
    while at < len(body):
        n += 1
        if n > MAX_FIELD_COUNT:
            raise FormatError(f"record at offset {start}: more than {MAX_FIELD_COUNT} fields")
        yield GENERIC_FIELD
        if at + 4 > len(body):
            return  # the caller names the overrun
        at += 4 + _U32.unpack_from(body, at)[0]


def detect_bank(head: bytes) -> str | None:
    """The bank of a binary list, from its first record's header (``head``: its first bytes,
    at least 80): the template-digest size after which a known template name follows.
    ``None`` if no size fits (32 bytes is taken as sha256: an sm3 list needs ``--bank``)."""
    for bank in ("sha1", "sha256", "sha384", "sha512"):
        size = _bank_size(bank)
        if len(head) < 8 + size:
            continue
        (name_len,) = _U32.unpack_from(head, 4 + size)
        name = head[8 + size : 8 + size + name_len]
        if 0 < name_len <= MAX_NAME_LEN and len(name) == name_len:
            text = name.decode("ascii", "replace")
            if known_fields(text) is not None:
                return bank
    return None


def iter_records(
    read: Reader, *, start: int = 0, bank: str = "sha1"
) -> Iterator[tuple[int, MeasurementRecord, int]]:
    """Yield ``(offset, record, end)`` for each record read from ``read``, one at a time;
    raise at the first malformed one (:class:`TruncatedRecordError` if the bytes end inside
    it)."""
    pos = start
    while (got := read_record(read, pos, bank=bank)) is not None:
        record, end = got
        yield pos, record, end
        pos = end


def iter_binary(data: bytes | memoryview) -> Iterator[tuple[int, MeasurementRecord]]:
    """Yield ``(offset, record)`` for each record; raise at the first malformed one.

    Ending inside a record raises :class:`TruncatedRecordError` (with ``offset``).
    """
    for offset, record, _end in iter_records(io.BytesIO(data).read):
        yield offset, record


@dataclass(frozen=True)
class ParsedList:
    """What :func:`parse_binary` found: the records and where the good part ends."""

    records: tuple[MeasurementRecord, ...]
    #: Byte offset where each record starts.
    offsets: tuple[int, ...]
    #: Length of the well-formed prefix (== len(data) unless there is a torn tail).
    end: int
    #: The torn tail, if ``allow_torn_tail`` and the data ended inside a record.
    torn: TruncatedRecordError | None = None


def parse_binary(data: bytes | memoryview, *, allow_torn_tail: bool = False) -> ParsedList:
    """Parse a whole binary list. A torn tail raises, or is reported if ``allow_torn_tail``."""
    records: list[MeasurementRecord] = []
    offsets: list[int] = []
    end = 0
    try:
        for offset, record, next_end in iter_records(io.BytesIO(data).read):
            records.append(record)
            offsets.append(offset)
            end = next_end
    except TruncatedRecordError as exc:
        if not allow_torn_tail:
            raise
        return ParsedList(tuple(records), tuple(offsets), end, exc)
    return ParsedList(tuple(records), tuple(offsets), end)


# -- ascii list: pyverity.format.listascii (re-exported here) ---------------------------------

from pyverity.format.listascii import parse_ascii_line  # noqa: E402
