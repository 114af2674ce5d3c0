"""The filesystem operations, called directly (no kernel mount): errnos and handle lifecycle."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from pyverity.format.formatted_digest import FormattedDigest
from pyverity.format.hashalg import SHA512
from pyverity.format.params import TreeParams
from pyverity.fs.xattr import attr_name, get_attr
from pyverity.fuse.config import MountConfig
from pyverity.fuse.ops import VerityFS
from pyverity.fuse.verity_ioctl import (
    FS_IOC_ENABLE_VERITY,
    FS_IOC_MEASURE_VERITY,
    kernel_forwards_verity,
    parse_enable,
)
from pyverity.hashing.api import build_tree
from pyverity.keys import Keyring
from pyverity.keys.builtin_sig import builtin_signature
from pyverity.keys.generate import GeneratedKey
from pyverity.keys.signer import load_private_key
from pyverity.reader import ReaderOptions
from tests.unit.fuse.helpers import FileInfo
from tests.unit.keys.keyhelpers import keyring_dir, make_key
from tests.unit.reader.helpers import NS, flip, protect


def _fs(tmp_path: Path, **kw: object) -> VerityFS:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    kw.setdefault("reader", ReaderOptions(xattr_ns=NS))
    config = MountConfig(src, tmp_path / "mnt", **kw)  # type: ignore[arg-type]
    return VerityFS(config, context=lambda: (0, 0, 1))


def _open(fs: VerityFS, path: str, flags: int = os.O_RDONLY) -> FileInfo:
    fi = FileInfo(flags=flags)
    assert fs.open(path, fi) == 0
    return fi


def test_read_verified_eio_and_cache_flags(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    data = os.urandom(4096 * 40)
    protect(tmp_path / "src" / "f", data)
    fi = _open(fs, "/f")
    assert fi.keep_cache == 0  # first open: nothing cached yet
    assert fs.read("/f", 8192, 4096, fi) == data[4096:12288]
    flip(tmp_path / "src" / "f", 30 * 4096)
    with pytest.raises(OSError, match="data block 30") as e:
        fs.read("/f", 4096, 30 * 4096, fi)
    assert e.value.errno == errno.EIO
    assert fs.read("/f", 4096, 31 * 4096, fi) == data[31 * 4096 : 32 * 4096]
    fs.release("/f", fi)
    with pytest.raises(OSError, match="Bad file descriptor"):
        fs.read("/f", 1, 0, fi)


def test_keep_cache_only_while_identity_unchanged(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    protect(tmp_path / "src" / "f", b"x" * 5000)
    fs.release("/f", _open(fs, "/f"))
    fi = _open(fs, "/f")
    assert fi.keep_cache == 1
    fs.release("/f", fi)
    protect(tmp_path / "src" / "f", b"y" * 5001)  # content (size, mtime) changed
    fi = _open(fs, "/f")
    assert fi.keep_cache == 0
    fs.release("/f", fi)


def test_appraisal_failure_is_eacces_and_unprotected_passes(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    protect(tmp_path / "src" / "f", b"abc")
    (tmp_path / "src" / "f").write_bytes(b"abd")
    with pytest.raises(PermissionError):
        _open(fs, "/f")
    (tmp_path / "src" / "plain").write_bytes(b"plain")
    fi = _open(fs, "/plain")
    assert fs.read("/plain", 100, 0, fi) == b"plain"
    fs.release("/plain", fi)
    # Not enforced: the appraisal failure is only logged, but fs-verity still refuses content
    # that does not match its descriptor (EIO at open, the tree being built there).
    lax = _fs(tmp_path, reader=ReaderOptions(xattr_ns=NS, enforce=False))
    assert _errno(lambda: _open(lax, "/f")) == errno.EIO
    unsafe = _fs(tmp_path, unsafe_no_verify=True)  # only --unsafe-no-verify serves it
    fi = _open(unsafe, "/f")
    assert unsafe.read("/f", 10, 0, fi) == b"abd"
    buf = _measure_buffer(64)
    at = ctypes.addressof(buf)
    assert (
        _errno(lambda: unsafe.ioctl("/f", FS_IOC_MEASURE_VERITY, None, fi, 0, at)) == errno.ENODATA
    )


def test_read_only_refuses_writes(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    (tmp_path / "src" / "f").write_bytes(b"abc")
    for call in (
        lambda: fs.open("/f", FileInfo(flags=os.O_RDWR)),
        lambda: fs.create("/g", 0o644, FileInfo(flags=os.O_WRONLY)),
        lambda: fs.unlink("/f"),
        lambda: fs.truncate("/f", 0),
        lambda: fs.setxattr("/f", "user.x", b"1", 0),
    ):
        with pytest.raises(OSError, match="Read-only") as e:
            call()
        assert e.value.errno == errno.EROFS


def test_rw_write_makes_stale_until_protected_again(tmp_path: Path) -> None:
    fs = _fs(tmp_path, rw=True)
    protect(tmp_path / "src" / "f", b"a" * 9000)
    w = _open(fs, "/f", os.O_RDWR)
    assert w.direct_io == 1
    assert fs.write("/f", b"B", 10, w) == 1
    fs.release("/f", w)
    with pytest.raises(PermissionError):
        _open(fs, "/f")
    protect(tmp_path / "src" / "f", (tmp_path / "src" / "f").read_bytes())
    fi = _open(fs, "/f")
    assert fs.read("/f", 12, 0, fi) == b"a" * 10 + b"Ba"
    fs.release("/f", fi)
    fs.release("/f", _open(fs, "/f", os.O_WRONLY))  # opened for writing, nothing written
    with pytest.raises(PermissionError):
        _open(fs, "/f")


def _errno(call: Callable[[], object]) -> int | None:
    try:
        call()
    except OSError as e:
        return e.errno
    return None


def _measure_buffer(capacity: int) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(4 + capacity)
    struct.pack_into("=HH", buf, 0, 0, capacity)
    return buf


def test_measure_ioctl(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    tree = protect(tmp_path / "src" / "f", os.urandom(10000))
    fi = _open(fs, "/f")
    buf = _measure_buffer(64)
    assert fs.ioctl("/f", FS_IOC_MEASURE_VERITY, None, fi, 0, ctypes.addressof(buf)) == 0
    alg, size = struct.unpack_from("=HH", buf, 0)
    assert (alg, size) == (1, 32)
    assert buf.raw[4:36] == tree.descriptor.digest()
    small = _measure_buffer(16)
    with pytest.raises(OSError, match="too small") as e:
        fs.ioctl("/f", FS_IOC_MEASURE_VERITY, None, fi, 0, ctypes.addressof(small))
    assert e.value.errno == errno.EOVERFLOW
    assert (
        _errno(lambda: fs.ioctl("/f", 0x1234, None, fi, 0, ctypes.addressof(buf))) == errno.ENOTTY
    )
    flags = ctypes.create_string_buffer(4)
    assert fs.ioctl("/f", 0x80086601, None, fi, 0, ctypes.addressof(flags)) == 0
    assert struct.unpack("=I", flags.raw)[0] == 0x00100000  # FS_VERITY_FL


def test_verity_ioctls_need_linux_6_10(tmp_path: Path) -> None:
    """Before 6.10 FUSE passes only the fixed-size structure (4 bytes for MEASURE: writing the
    digest there overran libfuse's buffer and crashed the server on 6.1): ENOTTY, untouched."""
    assert not kernel_forwards_verity("6.9.12-amd64")
    assert kernel_forwards_verity("6.10.0")
    assert kernel_forwards_verity("6.12.95+deb12-amd64")
    src = tmp_path / "src"
    src.mkdir()
    config = MountConfig(src, tmp_path / "mnt", rw=True, reader=ReaderOptions(xattr_ns=NS))
    fs = VerityFS(config, context=lambda: (0, 0, 1), kernel_release="6.1.0-57-amd64")
    protect(src / "f", os.urandom(10000))
    (src / "g").write_bytes(b"g" * 5000)
    fi, gi = _open(fs, "/f"), _open(fs, "/g")
    buf = _measure_buffer(64)
    before = buf.raw
    assert (
        _errno(lambda: fs.ioctl("/f", FS_IOC_MEASURE_VERITY, None, fi, 0, ctypes.addressof(buf)))
        == errno.ENOTTY
    )
    assert buf.raw == before
    enable = _enable_buffer()
    assert (
        _errno(lambda: fs.ioctl("/g", FS_IOC_ENABLE_VERITY, None, gi, 0, ctypes.addressof(enable)))
        == errno.ENOTTY
    )
    assert get_attr(src / "g", attr_name(NS, "verity")) is None
    flags = ctypes.create_string_buffer(4)  # FS_IOC_GETFLAGS still answered (fileattr_get)
    assert fs.ioctl("/f", 0x80086601, None, fi, 0, ctypes.addressof(flags)) == 0
    assert struct.unpack("=I", flags.raw)[0] == 0x00100000


def _enable_buffer(
    alg: int = 1, block_size: int = 4096, salt: bytes = b"", sig: bytes = b"", **bad: int
) -> ctypes.Array[ctypes.c_char]:
    fields = {"version": 1, "reserved1": 0, **bad}
    head = struct.pack(
        "=IIIIQIIQ88s",
        fields["version"],
        alg,
        block_size,
        len(salt),
        0,
        len(sig),
        fields["reserved1"],
        0,
        b"",
    )
    return ctypes.create_string_buffer(head + salt + sig)


def test_enable_ioctl(tmp_path: Path) -> None:
    fs = _fs(tmp_path, rw=True)
    data = os.urandom(20000)
    (tmp_path / "src" / "f").write_bytes(data)
    fi = _open(fs, "/f")
    buf = _enable_buffer(2, 1024, b"salt")
    assert fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(buf)) == 0
    raw = get_attr(tmp_path / "src" / "f", attr_name(NS, "verity"))
    assert raw is not None
    expected = build_tree(io.BytesIO(data), TreeParams(SHA512, 1024, b"salt"))
    assert raw == expected.descriptor.to_bytes()
    assert (
        _errno(lambda: fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(buf)))
        == errno.EEXIST
    )


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"version": 2}, errno.EINVAL),
        ({"reserved1": 1}, errno.EINVAL),
        ({"block_size": 3000}, errno.EINVAL),
        ({"block_size": 512}, errno.EINVAL),
        ({"alg": 9}, errno.EINVAL),
        ({"salt": b"s" * 33}, errno.EMSGSIZE),
    ],
)
def test_enable_argument_checks(kwargs: dict[str, object], code: int) -> None:
    buf = _enable_buffer(**kwargs)  # type: ignore[arg-type]
    assert _errno(lambda: parse_enable(ctypes.addressof(buf))) == code


def test_enable_refuses_writers_signatures_and_read_only(tmp_path: Path) -> None:
    fs = _fs(tmp_path, rw=True)
    (tmp_path / "src" / "f").write_bytes(b"abc")
    w = _open(fs, "/f", os.O_RDWR)
    buf = _enable_buffer()
    assert (
        _errno(lambda: fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, w, 0, ctypes.addressof(buf)))
        == errno.ETXTBSY
    )
    fs.release("/f", w)
    fi = _open(fs, "/f")
    signed = _enable_buffer(sig=b"pkcs7")
    assert (  # no --keyring: refused, as the kernel does with an empty .fs-verity keyring
        _errno(lambda: fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(signed)))
        == errno.ENOKEY
    )
    assert get_attr(tmp_path / "src" / "f", attr_name(NS, "verity")) is None
    ro = _fs(tmp_path)
    fi = _open(ro, "/f")
    assert (
        _errno(lambda: ro.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(buf)))
        == errno.EROFS
    )


def test_enable_with_builtin_signature(tmp_path: Path) -> None:
    trusted, stranger = make_key("rsa", "2048"), make_key("ecdsa", "P-256")
    keyring = Keyring.from_directory(keyring_dir(trusted))
    fs = _fs(tmp_path, rw=True, reader=ReaderOptions(xattr_ns=NS, keyring=keyring))
    data = os.urandom(9000)
    f = tmp_path / "src" / "f"
    f.write_bytes(data)
    descriptor = build_tree(io.BytesIO(data)).descriptor
    formatted = FormattedDigest(1, descriptor.digest())

    def sig(k: GeneratedKey, fd: FormattedDigest = formatted) -> bytes:
        cert = x509.load_pem_x509_certificate(k.cert_path.read_bytes())
        return builtin_signature(fd, load_private_key(k.key_path), cert)  # type: ignore[arg-type]

    fi = _open(fs, "/f")
    other = FormattedDigest(1, bytes(32))
    for signature, code in [
        (b"\x30\x03junk", errno.EBADMSG),
        (sig(stranger), errno.ENOKEY),
        (sig(trusted, other), errno.EKEYREJECTED),
        (sig(trusted)[:-1] + b"\x00", errno.EKEYREJECTED),
    ]:
        buf = _enable_buffer(sig=signature)
        with pytest.raises(OSError, match=r"\S") as e:
            fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(buf))
        assert e.value.errno == code
        assert get_attr(f, attr_name(NS, "verity")) is None  # nothing written on failure
    buf = _enable_buffer(sig=sig(trusted))
    assert fs.ioctl("/f", FS_IOC_ENABLE_VERITY, None, fi, 0, ctypes.addressof(buf)) == 0
    assert get_attr(f, attr_name(NS, "verity")) == descriptor.to_bytes()
