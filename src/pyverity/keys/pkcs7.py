"""Checking fs-verity built-in signatures (spec/fsverity.md §5) against a keyring.

The kernel hands the signature given to ``FS_IOC_ENABLE_VERITY`` to ``verify_pkcs7_signature``
with the ``FSVerity`` formatted digest as the detached content, and trusts the certificates of
the ``.fs-verity`` keyring. This module does the same against a :class:`~.keyring.Keyring`,
accepting only what ``fsverity sign`` (and :mod:`.builtin_sig`) produce, parsed strictly as DER:

* a ``ContentInfo`` of type ``signedData``, nothing after it, at most 16128 bytes;
* ``SignedData`` version 1, one digest algorithm, a ``data`` content info with **no content**
  (detached), optional certificates and CRLs (skipped: trust comes from the keyring only), and
  exactly one ``SignerInfo``;
* the ``SignerInfo``: version 1, ``issuerAndSerialNumber``, the same digest algorithm — which
  must be the file's fs-verity hash algorithm —, **no authenticated attributes** (so the
  signature covers the formatted digest itself), an RSA or ECDSA signature algorithm, the
  signature, and no unauthenticated attributes.

Failures are told apart as the kernel does, by exception class (all are
:class:`~pyverity.errors.SignatureError`): :class:`MalformedSignatureError` (EBADMSG),
:class:`~.key.UnknownKeyError` (ENOKEY: no certificate with that issuer and serial number),
:class:`~.key.BadSignatureError` (EKEYREJECTED).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from pyverity.errors import Reason, SignatureError
from pyverity.format.formatted_digest import FormattedDigest
from pyverity.format.hashalg import by_number
from pyverity.keys.cert import Certificate
from pyverity.keys.der import oid
from pyverity.keys.key import BadSignatureError, UnknownKeyError
from pyverity.keys.keyring import Keyring

__all__ = [
    "MAX_BUILTIN_SIG_SIZE",
    "BuiltinSignature",
    "MalformedSignatureError",
    "find_signer",
    "parse_builtin_signature",
    "verify_builtin_signature",
]

#: ``FS_VERITY_MAX_SIGNATURE_SIZE``: 16384 − 256 bytes.
MAX_BUILTIN_SIG_SIZE = 16128

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_CTX0 = 0xA0  # [0], constructed
_CTX1 = 0xA1  # [1], constructed


_SIGNED_DATA = oid("1.2.840.113549.1.7.2")
_DATA = oid("1.2.840.113549.1.7.1")
_DIGESTS = {
    oid("2.16.840.1.101.3.4.2.1"): "sha256",
    oid("2.16.840.1.101.3.4.2.3"): "sha512",
}
#: Signature algorithm → (key type, digest it implies or None for "the digest algorithm's").
_SIG_ALGS: dict[bytes, tuple[str, str | None]] = {
    oid("1.2.840.113549.1.1.1"): ("rsa", None),  # rsaEncryption (what OpenSSL writes)
    oid("1.2.840.113549.1.1.11"): ("rsa", "sha256"),
    oid("1.2.840.113549.1.1.13"): ("rsa", "sha512"),
    oid("1.2.840.10045.2.1"): ("ecdsa", None),  # id-ecPublicKey
    oid("1.2.840.10045.4.3.2"): ("ecdsa", "sha256"),
    oid("1.2.840.10045.4.3.4"): ("ecdsa", "sha512"),
}
_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha512": hashes.SHA512,
}


class MalformedSignatureError(SignatureError):
    """The built-in signature is not a PKCS#7 message of the accepted shape (EBADMSG)."""

    reason = Reason.MALFORMED


@dataclass(frozen=True)
class BuiltinSignature:
    """The parts of a parsed (not yet verified) built-in signature that verification uses."""

    digest_algorithm: str
    #: DER of the signer certificate's issuer ``Name``, and its serial number.
    issuer: bytes
    serial: int
    key_type: str
    signature: bytes


class _Der:
    """A strict DER reader over one span: definite, minimal lengths; no trailing bytes."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def peek(self) -> int | None:
        return None if self.at_end() else self._data[self._pos]

    def end(self) -> None:
        if not self.at_end():
            raise MalformedSignatureError(f"PKCS#7: trailing bytes after the {self._what}")

    def read(self, tag: int, what: str) -> tuple[bytes, bytes]:
        """(contents, the whole element) of the next element, which must have ``tag``."""
        data, start = self._data, self._pos
        if len(data) - start < 2:
            raise MalformedSignatureError(f"PKCS#7: {what} is truncated")
        if data[start] != tag:
            raise MalformedSignatureError(
                f"PKCS#7: expected {what} (tag {tag:#04x}), found tag {data[start]:#04x}"
            )
        first = data[start + 1]
        pos = start + 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 3 or len(data) - pos < n:
                raise MalformedSignatureError(f"PKCS#7: bad length of {what}")
            length = int.from_bytes(data[pos : pos + n], "big")
            if length < 0x80 or data[pos] == 0:
                raise MalformedSignatureError(f"PKCS#7: length of {what} is not minimal DER")
            pos += n
        if len(data) - pos < length:
            raise MalformedSignatureError(f"PKCS#7: {what} is truncated")
        self._pos = pos + length
        return data[pos : pos + length], data[start : pos + length]

    def inner(self, tag: int, what: str) -> _Der:
        return _Der(self.read(tag, what)[0], what)

    def integer(self, what: str) -> int:
        raw = self.read(_INTEGER, what)[0]
        if not raw or (len(raw) > 1 and (raw[0], raw[1] & 0x80) in ((0, 0), (0xFF, 0x80))):
            raise MalformedSignatureError(f"PKCS#7: {what} is not a minimal DER INTEGER")
        return int.from_bytes(raw, "big", signed=True)

    def algorithm(self, what: str) -> bytes:
        """An ``AlgorithmIdentifier`` with absent or NULL parameters; returns the OID."""
        seq = self.inner(_SEQUENCE, what)
        oid = seq.read(_OID, what)[0]
        if not seq.at_end():
            params = seq.read(_NULL, f"{what} parameters")[0]
            if params:
                raise MalformedSignatureError(f"PKCS#7: {what} parameters are not NULL")
        seq.end()
        return oid


def _digest_name(oid: bytes, what: str) -> str:
    name = _DIGESTS.get(oid)
    if name is None:
        raise MalformedSignatureError(f"PKCS#7: {what} is neither sha256 nor sha512")
    return name


def parse_builtin_signature(unverified_data: bytes) -> BuiltinSignature:
    """Parse a built-in signature strictly; :class:`MalformedSignatureError` if it is not one."""
    if len(unverified_data) > MAX_BUILTIN_SIG_SIZE:
        raise MalformedSignatureError(
            f"PKCS#7 signature is {len(unverified_data)} bytes (at most {MAX_BUILTIN_SIG_SIZE})"
        )
    top = _Der(bytes(unverified_data), "signature")
    content_info = top.inner(_SEQUENCE, "ContentInfo")
    top.end()
    if content_info.read(_OID, "content type")[0] != _SIGNED_DATA:
        raise MalformedSignatureError("PKCS#7: the content type is not signedData")
    explicit = content_info.inner(_CTX0, "content")
    content_info.end()
    signed = explicit.inner(_SEQUENCE, "SignedData")
    explicit.end()
    if signed.integer("SignedData version") != 1:
        raise MalformedSignatureError("PKCS#7: SignedData version is not 1")
    algorithms = signed.inner(_SET, "digestAlgorithms")
    digest = _digest_name(algorithms.algorithm("digest algorithm"), "the digest algorithm")
    if not algorithms.at_end():
        raise MalformedSignatureError("PKCS#7: more than one digest algorithm")
    inner_info = signed.inner(_SEQUENCE, "contentInfo")
    if inner_info.read(_OID, "inner content type")[0] != _DATA:
        raise MalformedSignatureError("PKCS#7: the signed content type is not data")
    if not inner_info.at_end():
        raise MalformedSignatureError("PKCS#7: the signature is not detached (content present)")
    if signed.peek() == _CTX0:
        signed.read(_CTX0, "certificates")  # never trusted: certificates come from the keyring
    if signed.peek() == _CTX1:
        signed.read(_CTX1, "crls")
    signers = signed.inner(_SET, "signerInfos")
    signed.end()
    info = signers.inner(_SEQUENCE, "SignerInfo")
    if not signers.at_end():
        raise MalformedSignatureError("PKCS#7: more than one SignerInfo")
    return _parse_signer_info(info, digest)


def _parse_signer_info(info: _Der, digest: str) -> BuiltinSignature:
    if info.integer("SignerInfo version") != 1:
        raise MalformedSignatureError(
            "PKCS#7: SignerInfo version is not 1 (only issuerAndSerialNumber is supported)"
        )
    who = info.inner(_SEQUENCE, "issuerAndSerialNumber")
    issuer = who.read(_SEQUENCE, "issuer")[1]
    serial = who.integer("serial number")
    who.end()
    if _digest_name(info.algorithm("signer digest algorithm"), "the signer's digest") != digest:
        raise MalformedSignatureError("PKCS#7: the signer's digest algorithm differs")
    if info.peek() == _CTX0:
        raise MalformedSignatureError(
            "PKCS#7: authenticated attributes are present (fs-verity signs the digest itself)"
        )
    algorithm = _SIG_ALGS.get(info.algorithm("signature algorithm"))
    if algorithm is None:
        raise MalformedSignatureError("PKCS#7: the signature algorithm is neither RSA nor ECDSA")
    key_type, implied = algorithm
    if implied is not None and implied != digest:
        raise MalformedSignatureError("PKCS#7: the signature algorithm's digest differs")
    signature = info.read(_OCTET_STRING, "signature")[0]
    if not signature:
        raise MalformedSignatureError("PKCS#7: the signature is empty")
    if not info.at_end():
        raise MalformedSignatureError("PKCS#7: unauthenticated attributes or trailing bytes")
    return BuiltinSignature(digest, issuer, serial, key_type, signature)


def find_signer(keyring: Keyring, signature: BuiltinSignature) -> Certificate:
    """The keyring's certificate with the signature's issuer and serial number (else ENOKEY)."""
    for cert in keyring:
        if cert.cert.serial_number == signature.serial and (
            cert.cert.issuer.public_bytes() == signature.issuer
        ):
            return cert
    raise UnknownKeyError(
        f"no certificate in keyring {keyring.source} has the signer's issuer and serial"
        f" number {signature.serial:#x}"
    )


def verify_builtin_signature(
    unverified_signature: bytes, formatted: FormattedDigest, keyring: Keyring
) -> Certificate:
    """Check a built-in signature over ``formatted`` as the kernel does; returns the signer.

    Raises :class:`MalformedSignatureError` (also when its digest algorithm is not the file's),
    :class:`~.key.UnknownKeyError` or :class:`~.key.BadSignatureError`.
    """
    parsed = parse_builtin_signature(unverified_signature)
    tree_alg = by_number(formatted.digest_algorithm).name
    if parsed.digest_algorithm != tree_alg:
        raise MalformedSignatureError(
            f"PKCS#7: digest algorithm {parsed.digest_algorithm} is not the file's ({tree_alg})"
        )
    cert = find_signer(keyring, parsed)
    key = cert.public_key.key
    chosen = _HASHES[parsed.digest_algorithm]()
    message = formatted.to_bytes()
    try:
        if parsed.key_type == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(parsed.signature, message, padding.PKCS1v15(), chosen)
        elif parsed.key_type == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(parsed.signature, message, ec.ECDSA(chosen))
        else:
            raise BadSignatureError(
                f"{parsed.key_type} signature, but certificate '{cert.subject}' has an"
                f" {cert.algorithm} key"
            )
    except InvalidSignature:
        raise BadSignatureError(
            f"built-in signature does not verify with certificate '{cert.subject}'"
        ) from None
    except ValueError as e:  # e.g. a malformed DER ECDSA signature value
        raise BadSignatureError(f"built-in signature is malformed for '{cert.subject}'") from e
    return cert
