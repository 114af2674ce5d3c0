"""The measurement list on disk: one append-only writer, crash-safe, PCR values kept apart.

Files (``LIST`` is the path given):

- ``LIST`` — the records, exactly the kernel's ``binary_runtime_measurements`` (spec/ima.md
  §4.4, little-endian). Opened ``O_APPEND``; each record is written with one ``write`` and
  fsynced before its PCR values are published.
- ``LIST.pcrs`` — the software PCR values (sha1 and sha256 banks) after the records they
  cover, with the count and byte size covered (:class:`~pyverity.measure.pcr.PcrValues`),
  replaced by temp file + fsync + rename + directory fsync after each append.
- ``LIST.lock`` — held (``flock`` exclusive) for as long as a writer has the list open: one
  writer at a time. Each append and each reader's snapshot also take a short ``flock`` on
  ``LIST`` itself (exclusive to append, shared to read), so a reader sees a list and PCR values
  that agree.

Crash recovery on open (:meth:`MeasurementLog.open`): bytes after those the PCR values cover
that do not parse (a record cut short by a crash, a zero-filled tail) are truncated away, and
nothing before them is touched; bad bytes inside the covered part are corruption (refused);
records that reached the disk but not ``LIST.pcrs`` are extended into the PCR values; if
``LIST.pcrs`` covers *more* than the list holds, or the list does not replay to the stored
values, entries were removed or changed and the writer refuses to open.

First entry: a fresh list starts with a ``boot_aggregate`` entry, as the kernel's does when it
has no TPM (digest all zeros, in the list's default template), so that kernel tools and
pyverity lists look alike; pass ``boot_aggregate=False`` to leave it out.

Deduplication: one entry per (PCR, file name, digest) — the first time a file with that digest
is measured (the kernel's per-inode ``measured_pcrs`` plus its ``-EEXIST`` on a repeated
template hash). A file whose content (digest) changes gets a new entry.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pyverity.errors import FormatError, StorageError
from pyverity.format.measurelist import (
    WRITABLE_TEMPLATES,
    DigestField,
    MeasurementRecord,
    TruncatedRecordError,
    iter_binary,
)
from pyverity.measure.pcr import BANKS, PcrValues

__all__ = ["ListSnapshot", "MeasurementLog", "pcr_path", "read_list", "scan_list"]

logger = logging.getLogger(__name__)

#: A list larger than this is refused by the in-memory reader (about 8M entries of 128 bytes).
MAX_LIST_SIZE = 1 << 30
_BOOT_AGGREGATE = "boot_aggregate"


def pcr_path(path: str | os.PathLike[str]) -> Path:
    """Where the PCR values of list ``path`` are kept."""
    return Path(f"{os.fspath(path)}.pcrs")


def _lock_path(path: str | os.PathLike[str]) -> Path:
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


def scan_list(data: bytes) -> tuple[list[MeasurementRecord], list[int], int, str | None]:
    """Parse records until the first bad one: (records, offsets, good end, tail problem)."""
    records: list[MeasurementRecord] = []
    offsets: list[int] = []
    end = 0
    problem: str | None = None
    try:
        for offset, record in iter_binary(data):
            records.append(record)
            offsets.append(offset)
            end = offset + len(record.to_bytes())
    except TruncatedRecordError as exc:
        problem = f"torn tail: {exc}"
    except FormatError as exc:
        problem = str(exc)
    return records, offsets, end, problem


def _read_all(fd: int) -> bytes:
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


def _load_pcrs(path: Path) -> PcrValues | None:
    try:
        with path.open("rb") as f:
            text = f.read(1 << 16 + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read PCR values {path}: {exc.strerror}") from exc
    try:
        return PcrValues.from_json(text)
    except FormatError as exc:
        raise StorageError(f"PCR values {path}: {exc}") from exc


def read_list(path: str | os.PathLike[str], *, pcrs: bool = True) -> ListSnapshot:
    """Read a list (ours, or a kernel's ``binary_runtime_measurements``) and its PCR values.

    Takes a shared lock on the list while reading, so a running writer's append is never seen
    half-done. Malformed or torn bytes at the end are reported in ``tail_problem``, not raised.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open measurement list {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            logger.debug("no lock on %s (not a regular file?)", path)
        values = _load_pcrs(pcr_path(path)) if pcrs else None
        data = _read_all(fd)
    finally:
        os.close(fd)
    records, offsets, end, problem = scan_list(data)
    return ListSnapshot(tuple(records), tuple(offsets), end, len(data), values, problem)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _publish(path: Path, text: str, *, sync_dir: bool = True) -> None:
    """Replace ``path`` by ``text`` atomically (and durably, with ``sync_dir``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        _write_all(fd, text.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)
    if not sync_dir:
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _key(record: MeasurementRecord) -> tuple[int, bytes, bytes]:
    """The deduplication key: (PCR, name field, digest field)."""
    digest = record.digest
    return (
        record.pcr,
        record.file_name.encode("utf-8", "surrogateescape"),
        digest.to_bytes() if digest else record.template_digest,
    )


class MeasurementLog:
    """The single writer of a measurement list. Use :meth:`open`; close (or ``with``) when done.

    Thread-safe: appends from many threads are serialized.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_fd: int,
        fd: int,
        records: list[MeasurementRecord],
        pcrs: PcrValues,
        default_template: str,
    ) -> None:
        self.path = path
        self.default_template = default_template
        self._lock_fd = lock_fd
        self._fd: int | None = fd
        # Only the deduplication keys stay in memory; records are read back from the file.
        self._pcrs = pcrs
        self._seen = {_key(r) for r in records}
        self._mutex = threading.Lock()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        default_template: str = "ima-ng",
        boot_aggregate: bool = True,
        verify: bool = True,
    ) -> MeasurementLog:
        """Open (creating if needed) the list at ``path`` for appending, repairing a torn tail.

        ``verify`` replays the whole list against the stored PCR values first and refuses a
        list that does not match (:class:`StorageError`).
        """
        if default_template not in WRITABLE_TEMPLATES:
            raise StorageError(f"template {default_template!r} cannot be written")
        lpath = Path(path)
        try:
            lock_fd = os.open(
                _lock_path(lpath), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            raise StorageError(f"cannot open measurement list {lpath}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(
                    f"measurement list {lpath} is in use by another writer",
                    remedy="only one mount or daemon may append to a list",
                ) from None
            fd = os.open(
                lpath, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640
            )
            try:
                log = cls._recover(lpath, lock_fd, fd, default_template, verify=verify)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            os.close(lock_fd)
            raise StorageError(f"cannot open measurement list {lpath}: {exc.strerror}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        if boot_aggregate and not log._pcrs.count:
            log._append_record(
                MeasurementRecord.for_file(
                    default_template, _zero_aggregate(default_template), _BOOT_AGGREGATE
                )
            )
        return log

    @classmethod
    def _recover(
        cls, path: Path, lock_fd: int, fd: int, template: str, *, verify: bool
    ) -> MeasurementLog:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = _read_all(fd)
            records, _offsets, end, problem = scan_list(data)
            stored = _load_pcrs(pcr_path(path))
            for stale in path.parent.glob(f".{pcr_path(path).name}.*.tmp"):
                stale.unlink(missing_ok=True)  # a crash between write and rename
            if problem is not None:
                # Bytes the PCR values cover were fsynced and acknowledged: damage there is
                # corruption. Bytes after them were never acknowledged: a crash's torn tail.
                confirmed = stored.size if stored is not None else 0
                torn = problem.startswith("torn tail") or not data[end:].strip(b"\0")
                if end < confirmed or (stored is None and (records or not torn)):
                    raise StorageError(
                        f"measurement list {path} is corrupt at byte {end}: {problem}",
                        remedy="move the list (and its .pcrs file) aside and start a new one",
                    )
                logger.warning(
                    "measurement list %s: dropping an unacknowledged tail of %d bytes at %d (%s)",
                    path,
                    len(data) - end,
                    end,
                    problem,
                )
                os.ftruncate(fd, end)
                os.fsync(fd)
            pcrs = cls._reconcile(path, records, end, stored, verify=verify)
            if pcrs is not stored:
                _publish(pcr_path(path), pcrs.to_json())
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return cls(
            path, lock_fd=lock_fd, fd=fd, records=records, pcrs=pcrs, default_template=template
        )

    @staticmethod
    def _reconcile(
        path: Path,
        records: list[MeasurementRecord],
        end: int,
        stored: PcrValues | None,
        *,
        verify: bool,
    ) -> PcrValues:
        if stored is None:
            if records:
                raise StorageError(
                    f"measurement list {path} has {len(records)} entries but no PCR values",
                    remedy=f"restore {pcr_path(path)} or move the list aside",
                )
            return PcrValues({b: {} for b in BANKS})
        if stored.count > len(records):
            raise StorageError(
                f"measurement list {path}: PCR values cover {stored.count} entries but the list "
                f"has {len(records)}: entries were removed",
            )
        if verify:
            replayed = PcrValues.replay(records[: stored.count], stored.banks)
            if replayed.values != stored.values:
                raise StorageError(
                    f"measurement list {path} does not replay to its PCR values: entries were "
                    "changed, removed or reordered",
                    remedy="run `pyverity log verify` to see which entries fail",
                )
        pcrs = stored
        for record in records[stored.count :]:
            logger.info(
                "measurement list %s: extending PCRs with entry %d after a crash",
                path,
                pcrs.count + 1,
            )
            pcrs = pcrs.extend(record)
        if pcrs.size != end:
            raise StorageError(
                f"measurement list {path}: PCR values cover {pcrs.size} bytes, list has {end}"
            )
        return pcrs

    # -- appending ----------------------------------------------------------------------------

    def append(
        self,
        digest: DigestField,
        name: str | bytes,
        *,
        template: str | None = None,
        signature: bytes = b"",
        pcr: int = 10,
    ) -> MeasurementRecord | None:
        """Record an opened file, unless (PCR, name, digest) is already in the list.

        ``digest.kind`` is ``"verity"`` for an fs-verity digest or ``"ima"`` for a plain hash of
        the content (``ima-ngv2``/``ima-sigv2`` show it; ``ima-ng``/``ima-sig`` cannot).
        ``signature`` is the whole ``security.ima`` value for ``-sig`` templates (it is
        dropped for templates without a ``sig`` field). Returns the new record, or ``None``.
        """
        template = template or self.default_template
        if "sig" not in template:
            signature = b""
        record = MeasurementRecord.for_file(template, digest, name, signature, pcr=pcr)
        with self._mutex:
            if _key(record) in self._seen:
                return None
            self._append_record(record)
        return record

    def _append_record(self, record: MeasurementRecord) -> None:
        fd = self._require_open()
        data = record.to_bytes()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            before = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
                pcrs = self._pcrs.extend(record, record_size=len(data))
                # No directory fsync: if a crash loses this rename, the old values plus the
                # fsynced record are what recovery finds, and it extends them again.
                _publish(pcr_path(self.path), pcrs.to_json(), sync_dir=False)
            except OSError as exc:
                try:
                    os.ftruncate(fd, before)
                except OSError:
                    logger.exception("measurement list %s: cannot undo a failed append", self.path)
                raise StorageError(
                    f"cannot append to measurement list {self.path}: {exc.strerror}"
                ) from exc
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._pcrs = pcrs
        self._seen.add(_key(record))

    # -- reading back -------------------------------------------------------------------------

    @property
    def records(self) -> tuple[MeasurementRecord, ...]:
        """Every record, read back from the list (as appended: the list has no torn tail)."""
        with self._mutex:
            fd = self._require_open()
            records, _, end, problem = scan_list(_read_all(fd))
            size = self._pcrs.size
        if problem is not None or end != size:
            raise StorageError(f"measurement list {self.path} changed under its writer")
        return tuple(records)

    @property
    def pcrs(self) -> PcrValues:
        """The PCR values after the last record (as stored in ``LIST.pcrs``)."""
        with self._mutex:
            return self._pcrs

    def __len__(self) -> int:
        with self._mutex:
            return self._pcrs.count

    # -- closing ------------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._fd is None:
            raise StorageError(f"measurement list {self.path} is closed")
        return self._fd

    def close(self) -> None:
        with self._mutex:
            if self._fd is None:
                return
            os.close(self._fd)
            self._fd = None
            os.close(self._lock_fd)

    def __enter__(self) -> MeasurementLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _zero_aggregate(template: str) -> DigestField:
    kind = "ima" if template.endswith("v2") else None
    return DigestField("sha256", bytes(32), kind)
