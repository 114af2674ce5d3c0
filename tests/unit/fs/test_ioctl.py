"""fs-verity ioctl wrappers: struct packing, numbers, error mapping, and real calls on tmpfs.

This host's filesystems have no fs-verity, so real calls can only show the "unsupported"
paths; the structures are checked against the kernel headers (via gcc) and through a fake
``ioctl`` that plays the kernel's part.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyverity.errors import FormatError, InputError, SignatureError, StorageError
from pyverity.fs import ioctl

GENERIC_IOC = platform.machine() in ("x86_64", "aarch64", "armv7l", "riscv64", "i686")


@pytest.mark.skipif(not GENERIC_IOC, reason="spec values are for asm-generic _IOC encodings")
def test_ioctl_numbers_match_spec() -> None:
    assert ioctl.FS_IOC_ENABLE_VERITY == 0x40806685
    assert ioctl.FS_IOC_MEASURE_VERITY == 0xC0046686
    assert ioctl.FS_IOC_READ_VERITY_METADATA == 0xC0286687
    expected_getflags = 0x80086601 if struct.calcsize("l") == 8 else 0x80046601
    assert expected_getflags == ioctl.FS_IOC_GETFLAGS


def test_enable_arg_layout() -> None:
    raw = ioctl.EnableArg.pack(
        hash_algorithm=2, block_size=1024, salt_size=3, salt_ptr=0x1122, sig_size=5, sig_ptr=0x3344
    )
    assert len(raw) == ioctl.EnableArg.SIZE == 128
    version, alg, bs, salt_size, salt_ptr, sig_size, rsv1, sig_ptr = struct.unpack_from(
        "=IIIIQIIQ", raw
    )
    assert (version, alg, bs, salt_size, salt_ptr, sig_size, rsv1, sig_ptr) == (
        1, 2, 1024, 3, 0x1122, 5, 0, 0x3344,
    )  # fmt: skip
    assert raw[40:] == bytes(88)


def test_read_metadata_arg_layout() -> None:
    raw = ioctl.ReadMetadataArg.pack(metadata_type=2, offset=7, length=256, buf_ptr=0xABC)
    assert len(raw) == ioctl.ReadMetadataArg.SIZE == 40
    assert struct.unpack("=QQQQQ", raw) == (2, 7, 256, 0xABC, 0)


def test_measured_digest_parsing() -> None:
    buf = ioctl.MeasuredDigest.request()
    assert struct.unpack_from("=HH", buf) == (0, 64)
    assert len(buf) == 4 + 64
    struct.pack_into("=HH", buf, 0, 1, 32)
    buf[4:36] = bytes(range(32))
    m = ioctl.MeasuredDigest.from_bytes(buf)
    assert m.digest_algorithm == 1
    assert m.digest == bytes(range(32))
    assert str(m) == "sha256:" + bytes(range(32)).hex()
    assert ioctl.MeasuredDigest(9, b"\x01").algorithm == "ALG_9"
    with pytest.raises(FormatError):
        ioctl.MeasuredDigest.from_bytes(struct.pack("=HH", 1, 65) + bytes(64))


C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/fsverity.h>
int main(void) {
    printf("%lu %lu %lu %lu\n", (unsigned long)FS_IOC_ENABLE_VERITY,
           (unsigned long)FS_IOC_MEASURE_VERITY, (unsigned long)FS_IOC_READ_VERITY_METADATA,
           (unsigned long)FS_IOC_GETFLAGS);
    printf("%zu %zu %zu %zu %zu\n", sizeof(struct fsverity_enable_arg),
           offsetof(struct fsverity_enable_arg, salt_ptr),
           offsetof(struct fsverity_enable_arg, sig_size),
           offsetof(struct fsverity_enable_arg, sig_ptr),
           sizeof(struct fsverity_read_metadata_arg));
    return 0;
}
"""


@pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/include/linux/fsverity.h").exists(),
    reason="needs gcc and the kernel headers (linux-libc-dev) to compile the probe",
)
def test_against_kernel_headers(tmp_path: Path) -> None:
    src = tmp_path / "probe.c"
    src.write_text(C_PROBE)
    subprocess.run(["gcc", "-o", str(tmp_path / "probe"), str(src)], check=True, timeout=60)
    out = subprocess.run(
        [str(tmp_path / "probe")], check=True, capture_output=True, text=True, timeout=10
    ).stdout.split("\n")
    numbers = [int(x) for x in out[0].split()]
    assert numbers == [
        ioctl.FS_IOC_ENABLE_VERITY,
        ioctl.FS_IOC_MEASURE_VERITY,
        ioctl.FS_IOC_READ_VERITY_METADATA,
        ioctl.FS_IOC_GETFLAGS,
    ]
    assert [int(x) for x in out[1].split()] == [128, 16, 24, 32, 40]


def test_metadata_read_refused_by_the_filesystem_is_not_called_unsupported_verity() -> None:
    """btrfs (6.12) enables and measures but answers FS_IOC_READ_VERITY_METADATA with ENOTTY."""
    err = ioctl.error_for(
        "FS_IOC_READ_VERITY_METADATA(descriptor)", "f", OSError(errno.ENOTTY, "Inappropriate")
    )
    assert type(err) is ioctl.VerityUnsupportedError
    assert "does not let fs-verity metadata be read back" in str(err)
    assert "btrfs" in str(err)


@pytest.mark.parametrize(
    ("code", "cls", "words"),
    [
        (errno.ENODATA, ioctl.NotVerityError, "not enabled"),
        (errno.ENOTTY, ioctl.VerityUnsupportedError, "does not support fs-verity"),
        (errno.EOPNOTSUPP, ioctl.VerityUnsupportedError, "does not support fs-verity"),
        (errno.EEXIST, InputError, "already enabled"),
        (errno.ETXTBSY, InputError, "open for writing"),
        (errno.EINVAL, FormatError, "refused the parameters"),
        (errno.EMSGSIZE, FormatError, "too large"),
        (errno.EFBIG, FormatError, "8 levels"),
        (errno.EPERM, InputError, "require_signatures"),
        (errno.EKEYREJECTED, SignatureError, "does not verify"),
        (errno.ENOKEY, SignatureError, "keyring"),
        (errno.EBADMSG, SignatureError, "malformed"),
        (errno.EROFS, StorageError, "read-only"),
        (errno.EIO, StorageError, "Input/output error"),
    ],
)
def test_error_mapping(code: int, cls: type[Exception], words: str) -> None:
    err = ioctl.error_for("FS_IOC_ENABLE_VERITY", "f", OSError(code, os.strerror(code)))
    assert type(err) is cls
    assert words in str(err)
    assert str(err).startswith("FS_IOC_ENABLE_VERITY failed on 'f': ")
    assert err.exit_code == 1


def test_missing_signature_wording() -> None:
    err = ioctl.error_for("FS_IOC_READ_VERITY_METADATA(signature)", "f", OSError(errno.ENODATA, ""))
    assert isinstance(err, ioctl.NotVerityError)
    assert "no built-in signature" in str(err)


def _tmpfs_file() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm tmpfs on this host")
    return shm


@pytest.fixture
def tmpfs_file() -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile(dir=_tmpfs_file()) as f:
        f.write(b"data")
        f.flush()
        yield Path(f.name)


def test_real_calls_on_tmpfs_are_unsupported(tmpfs_file: Path) -> None:
    with pytest.raises(ioctl.VerityUnsupportedError, match="Inappropriate ioctl"):
        ioctl.measure_verity(tmpfs_file)
    with pytest.raises(ioctl.VerityUnsupportedError):
        ioctl.enable_verity(tmpfs_file, salt=b"ab")
    with pytest.raises(ioctl.VerityUnsupportedError):
        ioctl.read_verity_metadata(tmpfs_file, ioctl.METADATA_DESCRIPTOR, 0, 256)
    assert ioctl.is_verity(tmpfs_file) is False
    assert tmpfs_file.read_bytes() == b"data"  # nothing changed


def test_real_calls_on_ordinary_files(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert ioctl.is_verity(f) is False
    with pytest.raises((ioctl.VerityUnsupportedError, ioctl.NotVerityError)):
        ioctl.measure_verity(f)
    with pytest.raises(InputError, match="can't open"):
        ioctl.measure_verity(tmp_path / "missing")


def test_enable_passes_salt_and_signature_pointers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_ioctl(fd: int, request: int, arg: bytes, *rest: object) -> int:
        (_v, alg, bs, salt_size, salt_ptr, sig_size, _r, sig_ptr) = struct.unpack_from(
            "=IIIIQIIQ", arg
        )
        seen.update(request=request, alg=alg, bs=bs)
        seen["salt"] = ctypes.string_at(salt_ptr, salt_size)
        seen["sig"] = ctypes.string_at(sig_ptr, sig_size)
        return 0

    monkeypatch.setattr(ioctl.fcntl, "ioctl", fake_ioctl)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    ioctl.enable_verity(f, hash_algorithm=2, block_size=1024, salt=b"\x01\x02", signature=b"SIG")
    assert seen == {
        "request": ioctl.FS_IOC_ENABLE_VERITY,
        "alg": 2,
        "bs": 1024,
        "salt": b"\x01\x02",
        "sig": b"SIG",
    }
    with pytest.raises(FormatError, match="salt"):
        ioctl.enable_verity(f, salt=bytes(33))
    with pytest.raises(FormatError, match="signature"):
        ioctl.enable_verity(f, signature=bytes(16129))


def test_enable_error_is_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*_args: object) -> int:
        raise OSError(errno.ETXTBSY, "Text file busy")

    monkeypatch.setattr(ioctl.fcntl, "ioctl", busy)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="open for writing"):
        ioctl.enable_verity(f)


def test_measure_with_a_fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = bytes(range(64))

    def fake_ioctl(fd: int, request: int, buf: bytearray, mutate: bool) -> int:
        assert request == ioctl.FS_IOC_MEASURE_VERITY
        assert mutate
        assert struct.unpack_from("=HH", buf) == (0, 64)
        struct.pack_into("=HH", buf, 0, 2, 64)
        buf[4:68] = digest
        return 0

    monkeypatch.setattr(ioctl.fcntl, "ioctl", fake_ioctl)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert str(ioctl.measure_verity(f)) == "sha512:" + digest.hex()


def test_read_metadata_with_a_fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = bytes(i % 256 for i in range(3_000_000))  # more than one 1 MiB chunk

    def fake_ioctl(fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        assert request == ioctl.FS_IOC_READ_VERITY_METADATA
        mtype, offset, length, buf_ptr, reserved = struct.unpack("=QQQQQ", arg)
        assert (mtype, reserved) == (ioctl.METADATA_MERKLE_TREE, 0)
        part = item[offset : offset + length]
        ctypes.memmove(buf_ptr, part, len(part))
        return len(part)

    monkeypatch.setattr(ioctl.fcntl, "ioctl", fake_ioctl)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert ioctl.read_verity_metadata(f, ioctl.METADATA_MERKLE_TREE, 5, 10) == item[5:15]
    assert ioctl.read_all_verity_metadata(f, ioctl.METADATA_MERKLE_TREE) == item
    with pytest.raises(FormatError, match="larger than"):
        ioctl.read_all_verity_metadata(f, ioctl.METADATA_MERKLE_TREE, limit=1000)
    with pytest.raises(FormatError, match="unknown"):
        ioctl.read_verity_metadata(f, 9, 0, 1)
