"""Files of a measurement list: paths, bounded reads, atomic publication, snapshots.

See :mod:`pyverity.measure.log` for what each file holds and how the writer keeps them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pyverity.errors import FormatError, StorageError
from pyverity.format.measurelist import (
    WRITABLE_TEMPLATES,
    MeasurementRecord,
    TruncatedRecordError,
    iter_binary,
)
from pyverity.fs.atomic import publish_bytes, write_all
from pyverity.measure.pcr import PcrValues
from pyverity.measure.stream import open_list, read_pcr_file

__all__ = [
    "MAX_LIST_SIZE",
    "ListSnapshot",
    "chain_path",
    "load_chain",
    "load_pcrs",
    "lock_path",
    "pcr_path",
    "publish",
    "read_all",
    "read_list",
    "scan_list",
    "write_all",
]

logger = logging.getLogger(__name__)

#: A list larger than this is refused by the in-memory reader (about 8M entries of 128 bytes).
MAX_LIST_SIZE = 1 << 30


def pcr_path(path: str | os.PathLike[str]) -> Path:
    """Where the PCR values of list ``path`` are kept."""
    return Path(f"{os.fspath(path)}.pcrs")


def chain_path(path: str | os.PathLike[str]) -> Path:
    """Where the per-entry PCR chain of list ``path`` is kept."""
    return Path(f"{os.fspath(path)}.chain")


def lock_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}.lock")


@dataclass(frozen=True)
class ListSnapshot:
    """A consistent read of a list: its records, and the stored PCR values if any."""

    records: tuple[MeasurementRecord, ...]
    offsets: tuple[int, ...]
    #: Bytes of well-formed records (the list's size unless there is a torn tail).
    end: int
    size: int
    pcrs: PcrValues | None
    #: Why the bytes after ``end`` are not a record (``None`` if there are none).
    tail_problem: str | None = None
    #: ``LIST.chain``: the sha256 PCR value after each entry (a hint to name the entry where a
    #: replay goes wrong; the PCR values are the authority). ``None`` if absent.
    chain: bytes | None = None


def scan_list(data: bytes) -> tuple[list[MeasurementRecord], list[int], int, str | None]:
    """Parse records of pyverity's own list until the first bad one: (records, offsets, good
    end, tail problem). A record of a template pyverity does not write is a bad one."""
    records: list[MeasurementRecord] = []
    offsets: list[int] = []
    end = 0
    problem: str | None = None
    try:
        for offset, record in iter_binary(data):
            if record.template_name not in WRITABLE_TEMPLATES:
                problem = (
                    f"record at offset {offset}: template {record.template_name!r} "
                    "(not one pyverity writes)"
                )
                break
            records.append(record)
            offsets.append(offset)
            end = offset + len(record.to_bytes())
    except TruncatedRecordError as exc:
        problem = f"torn tail: {exc}"
    except FormatError as exc:
        problem = str(exc)
    return records, offsets, end, problem


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > MAX_LIST_SIZE:
        raise StorageError(f"measurement list is larger than {MAX_LIST_SIZE} bytes")
    chunks: list[bytes] = []
    pos = 0
    while True:
        chunk = os.pread(fd, 1 << 20, pos)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        pos += len(chunk)
        if pos > MAX_LIST_SIZE:
            raise StorageError(f"measurement list is larger than {MAX_LIST_SIZE} bytes")


def load_pcrs(path: Path) -> PcrValues | None:
    return read_pcr_file(path)


def read_list(path: str | os.PathLike[str], *, pcrs: bool = True) -> ListSnapshot:
    """Read a list (ours, or a kernel's ``binary_runtime_measurements``) and its PCR values,
    into memory (at most :data:`MAX_LIST_SIZE` bytes; :mod:`pyverity.measure.stream` reads a
    list of any size one record at a time).

    The size, PCR values and chain are taken under a shared lock on the list, so a running
    writer's append is never seen half-done. Malformed or torn bytes at the end are reported
    in ``tail_problem``, not raised.
    """
    records: list[MeasurementRecord] = []
    offsets: list[int] = []
    problem: str | None = None
    with open_list(path, pcrs=pcrs) as reader:
        if reader.ascii:
            raise FormatError(f"{reader.path}: an ascii list (read it with open_list)")
        if reader.size is not None and reader.size > MAX_LIST_SIZE:
            raise StorageError(f"measurement list is larger than {MAX_LIST_SIZE} bytes")
        try:
            for offset, record in reader.records():
                records.append(record)
                offsets.append(offset)
                if reader.end > MAX_LIST_SIZE:
                    raise StorageError(f"measurement list is larger than {MAX_LIST_SIZE} bytes")
        except TruncatedRecordError as exc:
            problem = f"torn tail: {exc}"
        except FormatError as exc:
            problem = str(exc)
        chain = None
        if reader.chain is not None:
            chain = reader.chain.read(reader.chain_size)
        # (securityfs gives no size: the bytes parsed, and one more if they end badly)
        size = reader.size if reader.size is not None else reader.end + (problem is not None)
        values = reader.pcrs
    return ListSnapshot(tuple(records), tuple(offsets), reader.end, size, values, problem, chain)


def load_chain(path: Path) -> bytes | None:
    """The chain file's bytes (bounded), or ``None`` if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def publish(path: Path, content: str | bytes, *, sync_dir: bool = True) -> None:
    """Replace ``path`` by ``content`` atomically (and durably, with ``sync_dir``)."""
    data = content.encode() if isinstance(content, str) else content
    publish_bytes(path, data, mode=0o640, sync_dir=sync_dir)
