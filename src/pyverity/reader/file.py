"""A read-only, seekable file object that returns only verified bytes.

Data is read with ``pread`` into a private buffer, the blocks are hashed and checked, and those
same bytes are returned — never bytes from an ``mmap`` of the file, which a writer could change
between the check and the copy. A concurrent writer or a truncation gives EIO, never wrong
bytes and never SIGBUS. Reads past the end of the protected data (the descriptor's
``data_size``) return EOF even if the file has grown.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from pyverity.format.descriptor import Descriptor
from pyverity.format.digest import FileDigest
from pyverity.fs.readexact import pread_exact, pread_exact_into
from pyverity.reader.verifier import BlockVerifier

__all__ = ["DEFAULT_CHUNK", "VerifiedRawIO"]

#: Largest span read and verified in one go (bounds the private buffer of one call).
DEFAULT_CHUNK = 8 << 20

Writable = bytearray | memoryview


class VerifiedRawIO(io.RawIOBase):
    """Raw verified reads over an open descriptor; wrap in :class:`io.BufferedReader`.

    ``pread`` is safe to call from several threads at once (the FUSE mount does); the
    position-based methods (``read``, ``seek``) are for one thread, as for any file object.
    The descriptor is not exposed (``fileno()`` raises): reading it directly would bypass
    verification.
    """

    def __init__(
        self,
        fd: int,
        verifier: BlockVerifier,
        *,
        name: str,
        closefd: bool = True,
        chunk: int = DEFAULT_CHUNK,
        fs_verity: bool = True,
    ) -> None:
        super().__init__()
        self._fd = fd
        self._verifier = verifier
        self._closefd = closefd
        self._size = verifier.data_size
        self._bs = verifier.block_size
        self._chunk_blocks = max(1, chunk // self._bs)
        self._pos = 0
        self.name = name
        #: A descriptor or a v3 signature protects the file (False: a classic IMA value, whose
        #: reads are checked against a tree built at open but which is no fs-verity file).
        self.fs_verity = fs_verity
        #: Called once when the file is closed (e.g. to stop a hash pool it alone used).
        self.on_close: Callable[[], None] | None = None

    # -- what was appraised -------------------------------------------------------------
    @property
    def descriptor(self) -> Descriptor:
        """The descriptor this handle was appraised with (later attribute changes don't count)."""
        return self._verifier.descriptor

    @property
    def digest(self) -> FileDigest:
        d = self.descriptor
        return FileDigest(d.hash_alg.name, d.digest(), d.hash_algorithm)

    @property
    def size(self) -> int:
        return self._size

    @property
    def verifier(self) -> BlockVerifier:
        return self._verifier

    # -- io.RawIOBase ------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a verified file does not expose its descriptor")

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(22, "Invalid argument: negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Writable) -> int:  # type: ignore[override]
        """Verified bytes into ``buffer``, read and hashed in place when the read is aligned."""
        self._check_open()
        with memoryview(buffer) as view, view.cast("B") as target:
            n = self.pread_into(target, self._pos)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` verified bytes (all that is left if negative); one private buffer."""
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        self._check_open()
        data = self.pread(max(0, self._size - self._pos), self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            if self._closefd and self._fd >= 0:
                os.close(self._fd)
            if self.on_close is not None:
                self.on_close()
        self._fd = -1
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    # -- verified positional reads -----------------------------------------------------
    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` verified bytes at ``offset`` (fewer only at the end of the data)."""
        if offset < 0 or size < 0:
            raise OSError(22, "Invalid argument: negative offset or size")
        end = min(offset + size, self._size)
        if end <= offset:
            return b""
        bs = self._bs
        pieces: list[bytes] = []
        pos = offset
        while pos < end:
            first = pos // bs
            last = min((end - 1) // bs, first + self._chunk_blocks - 1)
            buf = self._read_blocks(first, last - first + 1)
            self._verifier.verify_blocks(first, buf)
            start = pos - first * bs
            stop = min(end, (last + 1) * bs) - first * bs
            pieces.append(buf[start:stop])
            pos = first * bs + stop
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def pread_into(self, buffer: memoryview, offset: int) -> int:
        """Verified bytes at ``offset`` into ``buffer`` (the caller's private memory).

        Returns how many bytes are valid: up to ``len(buffer)``, fewer only at the end of the
        data. When ``offset`` is block-aligned and the buffer can hold the blocks the read
        touches (zero-padded at EOF), they are read straight into it with ``preadv``, hashed
        there and checked: no copy and no allocation (the FUSE mount passes libfuse's reply
        buffer). Otherwise this falls back to :meth:`pread` and one copy. On an error (EIO)
        the span read into is zeroed before the exception propagates.
        """
        size = len(buffer)
        if offset < 0:
            raise OSError(22, "Invalid argument: negative offset")
        end = min(offset + size, self._size)
        if end <= offset:
            return 0
        bs = self._bs
        span = -(-(end - offset) // bs) * bs
        if offset % bs or span > size:
            data = self.pread(size, offset)
            buffer[: len(data)] = data
            return len(data)
        view = buffer[:span]
        try:
            got = pread_exact_into(self._fd, view, offset)
            if got < span:
                view[got:] = bytes(span - got)  # the tail beyond EOF must hash as zeros
            self._verifier.verify_blocks(offset // bs, view)
        except BaseException:
            view[:] = bytes(span)  # no unverified byte is left in the caller's buffer
            raise
        return end - offset

    def _read_blocks(self, first: int, count: int) -> bytes:
        """Read ``count`` whole blocks into a private buffer, zero-padded at EOF.

        One ``pread`` into a fresh ``bytes`` object in the common case, so that a read of
        whole blocks is returned without another copy (a full slice of ``bytes`` is itself).
        """
        bs = self._bs
        want = count * bs
        base = first * bs
        data = pread_exact(self._fd, want, base)
        if len(data) < want:
            data += bytes(want - len(data))
        return data
