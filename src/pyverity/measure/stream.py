"""Reading a measurement list incrementally: one record at a time from a buffered stream.

:func:`open_list` opens a list (pyverity's, a kernel's ``binary_runtime_measurements``, or an
``ascii_runtime_measurements``) as a named input (:mod:`pyverity.fs.inputs`: a directory, a
FIFO or a device is refused at once), takes a snapshot of what a consistent reader needs
under a short shared ``flock`` (the list's size, its stored PCR values, the size of its
``LIST.chain``), lets the lock go, and returns a :class:`ListReader` whose :meth:`records`
parses the list one record at a time. Memory is that of one record (at most
``MAX_TEMPLATE_DATA`` of template data, one ascii line of at most :data:`MAX_ASCII_LINE`),
whatever the list's size; the writer is never held up for longer than the snapshot.

The list is append-only, so the bytes before the size taken under the lock never change.
A size of 0 is read to the end (securityfs reports 0 for the kernel's lists).

The list's PCR bank (:mod:`pyverity.format.listbanks`: the size of its template digests) is the
one its file name ends in (``binary_runtime_measurements_sha256``; a symlink such as 6.10's
unsuffixed ``binary_runtime_measurements`` is followed: the name of the file opened counts),
else the one asked for (``--bank``), else found from the first record: the digest size after
which a template name follows (binary), the digest column's size (ascii). 32 bytes is sha256
unless sm3 is asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pyverity.errors import FormatError, InputError, StorageError, UsageError
from pyverity.format.listascii import BANK_BY_SIZE
from pyverity.format.listbanks import bank_from_name, normalize_bank
from pyverity.format.measurelist import (
    MeasurementRecord,
    Reader,
    detect_bank,
    iter_records,
    parse_ascii_line,
)
from pyverity.fs.inputs import open_stream, read_input
from pyverity.measure.pcr import PcrValues

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["MAX_ASCII_LINE", "ListReader", "looks_ascii", "open_list", "read_pcr_file"]

logger = logging.getLogger(__name__)

#: The longest line of an ascii list (a 1 MiB template's signature is 2 MiB of hex).
MAX_ASCII_LINE = 4 << 20
#: ``LIST.pcrs`` is a small JSON document.
MAX_PCR_FILE = 1 << 16


def looks_ascii(head: bytes) -> bool:
    """The first bytes of an ascii list: a PCR column (``%2d``) and a space."""
    return len(head) >= 3 and head[:2].strip().isdigit() and head[2:3] == b" "


def read_pcr_file(path: str | os.PathLike[str]) -> PcrValues | None:
    """The PCR values stored beside a list, or ``None`` if there is no such file."""
    try:
        text = read_input(path, "PCR values", MAX_PCR_FILE)
    except InputError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise StorageError(str(exc)) from exc
    try:
        return PcrValues.from_json(text)
    except FormatError as exc:
        raise StorageError(f"PCR values {os.fsdecode(path)}: {exc}") from exc


class _BoundedRaw(io.RawIOBase):
    """The bytes ``[0, size)`` of ``fd`` by ``pread`` (to the end if ``size`` is ``None``)."""

    def __init__(self, fd: int, size: int | None) -> None:
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view) if self._size is None else min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [view[:want]], self._pos)
        self._pos += got
        return got


@dataclass
class ListReader:
    """An open list: the snapshot taken under the lock, and :meth:`records` to read it."""

    path: str
    stream: BinaryIO
    #: Bytes to read; ``None`` reads to the end (securityfs reports a size of 0).
    size: int | None
    ascii: bool
    #: The stored PCR values (``LIST.pcrs``), if asked for and present.
    pcrs: PcrValues | None = None
    #: ``LIST.chain``, open, and its size under the lock (``None`` if absent or not asked).
    chain: BinaryIO | None = None
    chain_size: int = 0
    #: Bytes of well-formed records read so far.
    end: int = 0
    #: The list's PCR bank (``None`` for an ascii list until its first line is read).
    bank: str | None = "sha1"

    def _bounded_read(self) -> Reader:
        """``read(n)`` over the list's first :attr:`size` bytes (from offset 0, whatever the
        stream's position), buffered: one ``pread`` per MiB."""
        raw = _BoundedRaw(self.stream.fileno(), self.size)
        return io.BufferedReader(raw, buffer_size=1 << 20).read

    def records(self) -> Iterator[tuple[int, MeasurementRecord]]:
        """Yield ``(offset, record)`` one at a time (the offset is the line number in an ascii
        list). Raises :class:`FormatError` (a :class:`TruncatedRecordError` if the list ends
        inside a record) at the first bad record, after yielding the good ones before it."""
        if self.ascii:
            yield from self._ascii_records()
            return
        for offset, record, end in iter_records(self._bounded_read(), bank=self.bank or "sha1"):
            self.end = end
            yield offset, record

    def _ascii_records(self) -> Iterator[tuple[int, MeasurementRecord]]:
        n = 0
        while True:
            line = self.stream.readline(MAX_ASCII_LINE + 1)
            if not line:
                return
            n += 1
            if len(line) > MAX_ASCII_LINE:
                raise FormatError(f"line {n}: longer than {MAX_ASCII_LINE} bytes")
            try:
                record = parse_ascii_line(line.decode("utf-8", "surrogateescape"), bank=self.bank)
            except FormatError as exc:
                raise FormatError(f"line {n}: {exc}") from None
            self.bank = record.bank
            self.end += len(line)
            yield n, record

    def close(self) -> None:
        for f in (self.stream, self.chain):
            if f is not None:
                f.close()


def _name_bank(name: str, fd: int) -> str | None:
    """The bank named by the list's file name, or by the name of the file opened (a symlink's
    target: securityfs's unsuffixed names on 6.10+)."""
    bank = bank_from_name(name)
    if bank is None:
        with contextlib.suppress(OSError):
            bank = bank_from_name(str(Path(f"/proc/self/fd/{fd}").readlink()))
    return bank


def _choose_bank(name: str, fd: int, asked: str | None, head: bytes, text: bool) -> str | None:
    named = _name_bank(name, fd)
    if asked is not None:
        try:
            asked = normalize_bank(asked)
        except FormatError as exc:
            raise UsageError(f"--bank: {exc}") from None
        if named is not None and named != asked:
            raise UsageError(f"--bank {asked}: {name} is the {named} list (its name says so)")
        return asked
    if named is not None:
        return named
    if text:  # the first line's digest column (None: the line is refused when read)
        columns = head.lstrip(b" ").split(b" ", 2)
        return BANK_BY_SIZE.get(len(columns[1]) // 2) if len(columns) > 2 else None
    return detect_bank(head) or "sha1"


@contextlib.contextmanager
def open_list(
    path: str | os.PathLike[str], *, pcrs: bool = True, bank: str | None = None
) -> Iterator[ListReader]:
    """Open a list for :meth:`ListReader.records`; with ``pcrs``, also its ``LIST.pcrs`` and
    ``LIST.chain`` (a binary list only). ``bank``: the list's PCR bank when its name does not
    say (see the module docstring). :class:`InputError` if the list cannot be opened or is not
    a regular file; :class:`UsageError` if ``bank`` is none or contradicts the name."""
    from pyverity.measure.files import chain_path, pcr_path

    name = os.fsdecode(path)
    stream = open_stream(path, "measurement list")
    try:
        head = stream.peek(400)[:400]  # type: ignore[attr-defined]
        text = looks_ascii(head[:3])
        chosen = _choose_bank(name, stream.fileno(), bank, head, text)
    except BaseException:
        stream.close()
        raise
    reader = ListReader(name, stream, None, text, bank=chosen)
    try:
        fd = stream.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            logger.debug("no lock on %s", name)
        try:
            reader.size = os.fstat(fd).st_size or None
            if pcrs and not reader.ascii:
                reader.pcrs = read_pcr_file(pcr_path(path))
                try:
                    reader.chain = open_stream(chain_path(path), "PCR chain", buffering=1 << 16)
                except InputError as exc:
                    if not isinstance(exc.__cause__, FileNotFoundError):
                        raise StorageError(str(exc)) from exc
                else:
                    reader.chain_size = os.fstat(reader.chain.fileno()).st_size
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        yield reader
    finally:
        reader.close()
