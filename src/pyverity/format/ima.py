"""``security.ima`` values, the signature header and ``ima_file_id`` (spec/ima.md §1, §2).

Pure bytes <-> objects, no I/O. Everything here parses *untrusted* bytes strictly:

* :func:`parse_ima_value` turns an attribute value into an :class:`ImaHash` (types 0x01 and
  0x04, whole-file hashes) or an :class:`ImaSignature` (0x03 v2 signature over the whole-file
  hash, 0x06 v3 signature over an fs-verity digest). The EVM-only types 0x02 and 0x05, types
  ≥ 0x07, a v3 signature in a 0x03 attribute, a v2 one in a 0x06 attribute, legacy v1
  signatures, unknown hash algorithms, a ``sig_size`` that is not exactly the rest of the value
  and trailing bytes after a digest are all :class:`~pyverity.errors.FormatError`.
  (The kernel tolerates trailing bytes after a hash; no honest writer produces them.)
* ``value.to_bytes()`` serializes; ``parse_ima_value(v.to_bytes()) == v`` for every value.
* Hash algorithms use the kernel's ``enum hash_algo`` numbering (:class:`KernelHashAlgo`,
  :data:`HASH_ALGOS`): sha256 = 4, sha512 = 6. fs-verity numbers them 1 and 2; convert with
  :func:`kernel_algo_for_verity` / :func:`verity_number_for_kernel`. Never mix the two.
* :func:`ima_file_id` is the ``2 + N`` bytes a v3 signature covers the hash of
  (:func:`file_id_hash`), ``0x06 ‖ algo ‖ fs-verity digest``.

Signing and verifying (the crypto) live in :mod:`pyverity.keys`; this module only knows bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from pyverity.errors import FormatError, UnsupportedError, UsageError

__all__ = [
    "HASH_ALGOS",
    "MAX_SIGNATURE_SIZE",
    "SIGNATURE_HEADER",
    "HashAlgoId",
    "ImaHash",
    "ImaSignature",
    "ImaValue",
    "KernelHashAlgo",
    "XattrType",
    "algo_by_id",
    "algo_by_name",
    "algo_named",
    "file_id_hash",
    "ima_file_id",
    "kernel_algo_for_verity",
    "parse_ima_value",
    "verity_number_for_kernel",
]


class XattrType(IntEnum):
    """First byte of an IMA/EVM attribute value (``enum evm_ima_xattr_type``)."""

    IMA_XATTR_DIGEST = 0x01
    EVM_XATTR_HMAC = 0x02
    EVM_IMA_XATTR_DIGSIG = 0x03
    IMA_XATTR_DIGEST_NG = 0x04
    EVM_XATTR_PORTABLE_DIGSIG = 0x05
    IMA_VERITY_DIGSIG = 0x06


class HashAlgoId(IntEnum):
    """The kernel's ``enum hash_algo`` ids used most (spec/ima.md §1.3)."""

    MD5 = 1
    SHA1 = 2
    SHA256 = 4
    SHA384 = 5
    SHA512 = 6
    SHA224 = 7


@dataclass(frozen=True)
class KernelHashAlgo:
    """One entry of the kernel's ``hash_algo`` table: id, kernel name, digest size.

    ``hashlib_name`` is the name :mod:`hashlib` uses, or None when pyverity cannot compute it
    (the attribute still parses; hashing or verifying with it is refused).
    """

    id: int
    name: str
    digest_size: int
    hashlib_name: str | None

    def new(self) -> hashlib._Hash:
        """A fresh :mod:`hashlib` object of this algorithm; :class:`UnsupportedError` when
        pyverity cannot compute it here."""
        if self.hashlib_name is None:
            raise UnsupportedError(
                f"hash algorithm {self.name} is not supported by pyverity"
                " (neither hashlib nor OpenSSL here computes it)"
            )
        return hashlib.new(self.hashlib_name)

    def hash(self, data: bytes) -> bytes:
        h = self.new()
        h.update(data)
        return h.digest()


def _hashlib(name: str) -> str | None:
    """``name`` if this Python's hashlib (its OpenSSL) computes it, else None."""
    try:
        hashlib.new(name)
    except ValueError:
        return None
    return name


#: The kernel's whole ``hash_algo`` table, by id (``include/uapi/linux/hash_info.h``). The
#: ones hashlib computes here have a ``hashlib_name``: md5, sha1, the sha2 and sha3 families
#: always; rmd160, sm3 and md4 when OpenSSL provides them (md4 only from its legacy provider).
#: The others (truncated whirlpool, tiger, streebog) are recognised and sized, not computed.
HASH_ALGOS: tuple[KernelHashAlgo, ...] = (
    KernelHashAlgo(0, "md4", 16, _hashlib("md4")),
    KernelHashAlgo(1, "md5", 16, "md5"),
    KernelHashAlgo(2, "sha1", 20, "sha1"),
    KernelHashAlgo(3, "rmd160", 20, _hashlib("ripemd160")),
    KernelHashAlgo(4, "sha256", 32, "sha256"),
    KernelHashAlgo(5, "sha384", 48, "sha384"),
    KernelHashAlgo(6, "sha512", 64, "sha512"),
    KernelHashAlgo(7, "sha224", 28, "sha224"),
    KernelHashAlgo(8, "rmd128", 16, None),
    KernelHashAlgo(9, "rmd256", 32, None),
    KernelHashAlgo(10, "rmd320", 40, None),
    KernelHashAlgo(11, "wp256", 32, None),
    KernelHashAlgo(12, "wp384", 48, None),
    KernelHashAlgo(13, "wp512", 64, _hashlib("whirlpool")),
    KernelHashAlgo(14, "tgr128", 16, None),
    KernelHashAlgo(15, "tgr160", 20, None),
    KernelHashAlgo(16, "tgr192", 24, None),
    KernelHashAlgo(17, "sm3", 32, _hashlib("sm3")),
    KernelHashAlgo(18, "streebog256", 32, None),
    KernelHashAlgo(19, "streebog512", 64, None),
    KernelHashAlgo(20, "sha3-256", 32, "sha3_256"),
    KernelHashAlgo(21, "sha3-384", 48, "sha3_384"),
    KernelHashAlgo(22, "sha3-512", 64, "sha3_512"),
)
#: ``HASH_ALGO__LAST`` on current kernels.
HASH_ALGO_LAST = len(HASH_ALGOS)

#: fs-verity number (``FS_VERITY_HASH_ALG_*``) <-> kernel ``hash_algo`` id.
_VERITY_TO_KERNEL = {1: HashAlgoId.SHA256, 2: HashAlgoId.SHA512}
_KERNEL_TO_VERITY = {v: k for k, v in _VERITY_TO_KERNEL.items()}


def algo_by_id(algo_id: int) -> KernelHashAlgo:
    """The kernel hash algorithm with id ``algo_id``; :class:`FormatError` if there is none."""
    if not 0 <= algo_id < HASH_ALGO_LAST:
        raise FormatError(f"unknown IMA hash algorithm id {algo_id}")
    return HASH_ALGOS[algo_id]


def algo_named(name: str) -> KernelHashAlgo | None:
    """The kernel hash algorithm called ``name`` (kernel spelling, any case), computable here
    or not; None for a name the kernel does not know."""
    lower = name.lower()
    return next((alg for alg in HASH_ALGOS if alg.name == lower), None)


def algo_by_name(name: str) -> KernelHashAlgo:
    """The kernel hash algorithm called ``name``, to hash with; :class:`UsageError` if the
    kernel knows no such name or pyverity cannot compute it here."""
    alg = algo_named(name)
    if alg is not None and alg.hashlib_name is not None:
        return alg
    usable = ", ".join(a.name for a in HASH_ALGOS if a.hashlib_name is not None)
    if alg is not None:
        raise UsageError(
            f"hash algorithm {alg.name} is not supported by pyverity on this system",
            remedy=f"available: {usable}",
        )
    raise UsageError(f"unknown hash algorithm: '{name}'", remedy=f"available: {usable}")


def kernel_algo_for_verity(verity_number: int) -> KernelHashAlgo:
    """fs-verity's algorithm number (1, 2) -> the kernel's (sha256 = 4, sha512 = 6)."""
    try:
        return HASH_ALGOS[_VERITY_TO_KERNEL[verity_number]]
    except KeyError:
        raise FormatError(f"unknown fs-verity hash algorithm {verity_number}") from None


def verity_number_for_kernel(algo_id: int) -> int:
    """The kernel's id (4, 6) -> fs-verity's number (1, 2); :class:`FormatError` otherwise."""
    try:
        return _KERNEL_TO_VERITY[HashAlgoId(algo_id)]
    except (KeyError, ValueError):
        name = algo_by_id(algo_id).name
        raise FormatError(f"hash algorithm {name} cannot be used with fs-verity") from None


@dataclass(frozen=True)
class ImaHash:
    """A whole-file hash: type 0x04 (``04 ‖ algo ‖ digest``) or legacy 0x01 (``01 ‖ sha1``).

    A 0x01 value of 16 bytes is MD5, of 20 bytes SHA-1 (the kernel's length rule, §1.2).
    """

    hash_algo: int
    digest: bytes
    xattr_type: int = XattrType.IMA_XATTR_DIGEST_NG

    def __post_init__(self) -> None:
        alg = algo_by_id(self.hash_algo)
        if self.xattr_type == XattrType.IMA_XATTR_DIGEST:
            if self.hash_algo not in (HashAlgoId.MD5, HashAlgoId.SHA1):
                raise FormatError("a type 0x01 IMA hash holds only md5 or sha1")
        elif self.xattr_type != XattrType.IMA_XATTR_DIGEST_NG:
            raise FormatError(f"type 0x{self.xattr_type:02x} is not an IMA hash type")
        if len(self.digest) != alg.digest_size:
            raise FormatError(
                f"IMA {alg.name} hash is {len(self.digest)} bytes, expected {alg.digest_size}"
            )

    @property
    def algorithm(self) -> KernelHashAlgo:
        return algo_by_id(self.hash_algo)

    def to_bytes(self) -> bytes:
        if self.xattr_type == XattrType.IMA_XATTR_DIGEST:
            return bytes([self.xattr_type]) + self.digest
        return bytes([self.xattr_type, self.hash_algo]) + self.digest

    @classmethod
    def for_digest(cls, hash_algo: int, digest: bytes) -> ImaHash:
        """The value ``evmctl ima_hash`` writes: 0x01 for md5/sha1, 0x04 otherwise."""
        if hash_algo <= HashAlgoId.SHA1:
            return cls(hash_algo, digest, XattrType.IMA_XATTR_DIGEST)
        return cls(hash_algo, digest)


#: ``type ‖ version ‖ hash_algo ‖ be32 keyid ‖ be16 sig_size`` (kernel view, type included).
SIGNATURE_HEADER = struct.Struct(">BBBIH")
#: Larger than any signature we make or accept (RSA-8192 is 1024 bytes).
MAX_SIGNATURE_SIZE = 1024


@dataclass(frozen=True)
class ImaSignature:
    """A ``signature_v2_hdr`` value: 0x03 with version 2, or 0x06 with version 3.

    ``keyid`` is the 32-bit key identifier (last 4 bytes of the certificate's SKID);
    ``signature`` the raw bytes (RSA PKCS#1 v1.5 block, or DER ECDSA-Sig-Value).
    For version 2 it signs the whole-file hash; for version 3 it signs
    ``H(ima_file_id(hash_algo, fs-verity digest))``.
    """

    xattr_type: int
    version: int
    hash_algo: int
    keyid: int
    signature: bytes

    def __post_init__(self) -> None:
        if self.xattr_type == XattrType.EVM_IMA_XATTR_DIGSIG:
            if self.version == 3:
                raise FormatError("a v3 signature in a type 0x03 attribute is not accepted")
            if self.version != 2:
                raise FormatError(f"unsupported IMA signature version {self.version}")
        elif self.xattr_type == XattrType.IMA_VERITY_DIGSIG:
            if self.version != 3:
                raise FormatError(
                    f"a type 0x06 (verity) signature must be version 3, not {self.version}"
                )
        else:
            raise FormatError(f"type 0x{self.xattr_type:02x} is not an IMA signature type")
        algo_by_id(self.hash_algo)
        if self.xattr_type == XattrType.IMA_VERITY_DIGSIG:
            verity_number_for_kernel(self.hash_algo)
        if not 0 <= self.keyid < 1 << 32:
            raise FormatError(f"keyid {self.keyid} out of range")
        if not 0 < len(self.signature) <= MAX_SIGNATURE_SIZE:
            raise FormatError(f"signature of {len(self.signature)} bytes is out of bounds")

    @property
    def algorithm(self) -> KernelHashAlgo:
        return algo_by_id(self.hash_algo)

    @property
    def is_verity(self) -> bool:
        return self.xattr_type == XattrType.IMA_VERITY_DIGSIG

    @property
    def keyid_hex(self) -> str:
        """The keyid as the kernel prints it (``%08x``)."""
        return f"{self.keyid:08x}"

    def signed_digest(self, digest: bytes) -> bytes:
        """What the signature covers, given the file's digest (whole-file or fs-verity)."""
        if self.is_verity:
            return file_id_hash(self.hash_algo, digest)
        alg = self.algorithm
        if len(digest) != alg.digest_size:
            raise FormatError(f"{alg.name} digest must be {alg.digest_size} bytes")
        return digest

    def to_bytes(self) -> bytes:
        header = SIGNATURE_HEADER.pack(
            self.xattr_type, self.version, self.hash_algo, self.keyid, len(self.signature)
        )
        return header + self.signature

    @classmethod
    def v2(cls, hash_algo: int, keyid: int, signature: bytes) -> ImaSignature:
        return cls(XattrType.EVM_IMA_XATTR_DIGSIG, 2, hash_algo, keyid, signature)

    @classmethod
    def v3(cls, hash_algo: int, keyid: int, signature: bytes) -> ImaSignature:
        return cls(XattrType.IMA_VERITY_DIGSIG, 3, hash_algo, keyid, signature)


ImaValue = ImaHash | ImaSignature


def parse_ima_value(data: bytes) -> ImaValue:
    """Parse a ``security.ima`` value strictly (see the module docstring for what is refused)."""
    data = bytes(data)
    if not data:
        raise FormatError("IMA attribute is empty")
    kind = data[0]
    if kind in (XattrType.EVM_XATTR_HMAC, XattrType.EVM_XATTR_PORTABLE_DIGSIG):
        raise FormatError(f"IMA attribute has EVM-only type 0x{kind:02x}")
    if kind == XattrType.IMA_XATTR_DIGEST:
        if len(data) == 21:
            return ImaHash(HashAlgoId.SHA1, data[1:], XattrType.IMA_XATTR_DIGEST)
        if len(data) == 17:
            return ImaHash(HashAlgoId.MD5, data[1:], XattrType.IMA_XATTR_DIGEST)
        raise FormatError(f"type 0x01 IMA hash has length {len(data)}, expected 21 (sha1)")
    if kind == XattrType.IMA_XATTR_DIGEST_NG:
        if len(data) < 2:
            raise FormatError("type 0x04 IMA hash is truncated")
        alg = algo_by_id(data[1])
        if len(data) != 2 + alg.digest_size:
            raise FormatError(
                f"type 0x04 IMA {alg.name} hash has length {len(data)},"
                f" expected {2 + alg.digest_size}"
            )
        return ImaHash(alg.id, data[2:])
    if kind in (XattrType.EVM_IMA_XATTR_DIGSIG, XattrType.IMA_VERITY_DIGSIG):
        if len(data) < 2:
            raise FormatError("IMA signature is truncated")
        if kind == XattrType.EVM_IMA_XATTR_DIGSIG and data[1] == 1:
            raise FormatError("legacy v1 IMA signatures are not supported")
        if len(data) <= SIGNATURE_HEADER.size:
            raise FormatError(
                f"IMA signature is {len(data)} bytes, no longer than its 9-byte header"
            )
        _, version, hash_algo, keyid, sig_size = SIGNATURE_HEADER.unpack_from(data)
        if len(data) - SIGNATURE_HEADER.size != sig_size:
            raise FormatError(
                f"IMA signature header says sig_size {sig_size},"
                f" but {len(data) - SIGNATURE_HEADER.size} bytes follow"
            )
        return ImaSignature(kind, version, hash_algo, keyid, data[SIGNATURE_HEADER.size :])
    raise FormatError(f"IMA attribute has unknown type 0x{kind:02x}")


def ima_file_id(
    hash_algo: int, digest: bytes, xattr_type: int = XattrType.IMA_VERITY_DIGSIG
) -> bytes:
    """``struct ima_file_id``, only its used ``2 + N`` bytes: ``type ‖ algo ‖ digest``.

    Only type 0x06 (fs-verity) is defined for v3 signatures in released kernels.
    """
    if xattr_type != XattrType.IMA_VERITY_DIGSIG:
        raise FormatError("only fs-verity (type 0x06) file ids are supported")
    alg = algo_by_id(hash_algo)
    if len(digest) != alg.digest_size:
        raise FormatError(f"{alg.name} digest must be {alg.digest_size} bytes")
    return bytes([xattr_type, hash_algo]) + digest


def file_id_hash(hash_algo: int, digest: bytes) -> bytes:
    """``H_alg(ima_file_id)``: the pre-hashed digest a v3 signature signs."""
    return algo_by_id(hash_algo).hash(ima_file_id(hash_algo, digest))
