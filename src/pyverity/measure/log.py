"""The measurement list on disk: one append-only writer, crash-safe, PCR values kept apart.

Files (``LIST`` is the path given):

- ``LIST`` — the records, exactly the kernel's ``binary_runtime_measurements`` (spec/ima.md
  §4.4, little-endian). Opened ``O_APPEND``; each record is written with one ``write`` and
  fsynced before its PCR values are published.
- ``LIST.pcrs`` — the software PCR values (sha1 and sha256 banks) after the records they
  cover, with the count and byte size covered (:class:`~pyverity.measure.pcr.PcrValues`),
  replaced by temp file + fsync + rename + directory fsync after each append.
- ``LIST.chain`` — the sha256 value of the entry's PCR after each entry (32 bytes each): a
  hint that lets ``verify`` name the entry where a replay goes wrong. Not fsynced of its own;
  rebuilt from the list on open. The PCR values remain the authority.
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
import stat
import threading
from pathlib import Path
from types import TracebackType

from pyverity.errors import StorageError
from pyverity.format.measurelist import WRITABLE_TEMPLATES, DigestField, MeasurementRecord
from pyverity.fs.inputs import describe_mode
from pyverity.measure.files import (
    ListSnapshot,
    chain_path,
    load_chain,
    load_pcrs,
    lock_path,
    pcr_path,
    publish,
    read_all,
    read_list,
    scan_list,
    write_all,
)
from pyverity.measure.pcr import BANKS, CHAIN_BANK, PcrValues, chain_values

__all__ = ["ListSnapshot", "MeasurementLog", "chain_path", "pcr_path", "read_list", "scan_list"]

logger = logging.getLogger(__name__)

_BOOT_AGGREGATE = "boot_aggregate"


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
        chain_fd: int,
        records: list[MeasurementRecord],
        pcrs: PcrValues,
        default_template: str,
    ) -> None:
        self.path = path
        self.default_template = default_template
        self._lock_fd = lock_fd
        self._fd: int | None = fd
        self._chain_fd = chain_fd
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
        ima_hash: str = "sha256",
    ) -> MeasurementLog:
        """Open (creating if needed) the list at ``path`` for appending, repairing a torn tail.

        ``ima_hash`` (the kernel's ``ima_hash=``) is the algorithm of a new list's all-zero
        ``boot_aggregate`` digest, as the kernel writes it without a TPM.

        ``verify`` replays the whole list against the stored PCR values first and refuses a
        list that does not match (:class:`StorageError`).
        """
        if default_template not in WRITABLE_TEMPLATES:
            raise StorageError(f"template {default_template!r} cannot be written")
        lpath = Path(path)
        try:
            lock_fd = os.open(
                lock_path(lpath), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
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
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    raise StorageError(f"measurement list '{lpath}' is {describe_mode(mode)}")
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
            first = MeasurementRecord.for_file(
                default_template, _zero_aggregate(default_template, ima_hash), _BOOT_AGGREGATE
            )
            try:
                log._append_record(first)
            except BaseException:
                log.close()
                raise
        return log

    @classmethod
    def _recover(
        cls, path: Path, lock_fd: int, fd: int, template: str, *, verify: bool
    ) -> MeasurementLog:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = read_all(fd)
            records, _offsets, end, problem = scan_list(data)
            stored = load_pcrs(pcr_path(path))
            for name in (pcr_path(path).name, chain_path(path).name):
                for stale in path.parent.glob(f".{name}.*.tmp"):
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
                publish(pcr_path(path), pcrs.to_json())
            chain = chain_values(records)
            if load_chain(chain_path(path)) != chain:
                publish(chain_path(path), chain)  # after a crash, or a damaged hint file
            chain_fd = os.open(
                chain_path(path), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            )
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return cls(
            path,
            lock_fd=lock_fd,
            fd=fd,
            chain_fd=chain_fd,
            records=records,
            pcrs=pcrs,
            default_template=template,
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
            chain_before = os.fstat(self._chain_fd).st_size
            try:
                write_all(fd, data)
                os.fsync(fd)
                pcrs = self._pcrs.extend(record, record_size=len(data))
                # The chain is a hint, rebuilt from the list on open: no fsync of its own.
                write_all(self._chain_fd, pcrs.get(CHAIN_BANK, record.pcr))
                # No directory fsync: if a crash loses this rename, the old values plus the
                # fsynced record are what recovery finds, and it extends them again.
                publish(pcr_path(self.path), pcrs.to_json(), sync_dir=False)
            except OSError as exc:
                try:
                    os.ftruncate(fd, before)
                    os.ftruncate(self._chain_fd, chain_before)
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
            records, _, end, problem = scan_list(read_all(fd))
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
            os.close(self._chain_fd)
            os.close(self._lock_fd)

    def __enter__(self) -> MeasurementLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _zero_aggregate(template: str, ima_hash: str) -> DigestField:
    from pyverity.format.ima import algo_named

    alg = algo_named(ima_hash)
    if alg is None:
        raise StorageError(f"unknown hash algorithm {ima_hash!r} for the boot_aggregate entry")
    kind = "ima" if template.endswith("v2") else None
    return DigestField(alg.name, bytes(alg.digest_size), kind)
