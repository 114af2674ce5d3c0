"""The few DER encodings signing needs (X.690): lengths, TLVs, OIDs, DigestInfo.

Used to build what a private key cannot be handed to ``cryptography`` for because it lives in
a token: the PKCS#1 ``DigestInfo`` that ``CKM_RSA_PKCS`` signs, the DER ``ECDSA-Sig-Value`` made
from ``CKM_ECDSA``'s raw ``r‖s``, and the fs-verity built-in PKCS#7 message (:mod:`.builtin_sig`).
Encoding only; strict parsing lives in :mod:`.pkcs7`.
"""

from __future__ import annotations

__all__ = [
    "DIGEST_OIDS",
    "INTEGER",
    "NULL",
    "OCTET_STRING",
    "OID",
    "SEQUENCE",
    "SET",
    "algorithm_identifier",
    "digest_info",
    "ecdsa_signature",
    "integer",
    "oid",
    "tlv",
]

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06


def oid(dotted: str) -> bytes:
    """The DER contents of an OBJECT IDENTIFIER (base-128 arcs)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def tlv(tag: int, contents: bytes) -> bytes:
    """One element: tag, minimal definite length, contents."""
    n = len(contents)
    if n < 0x80:
        return bytes([tag, n]) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + contents


def integer(value: int) -> bytes:
    """A minimal INTEGER of a non-negative value (a leading 0 byte when the top bit is set)."""
    if value < 0:
        raise ValueError("negative INTEGERs are not needed here")
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


#: Kernel hash algorithm name -> OID (RFC 8017 §9.2 note 1, NIST CSOR for SHA-3).
DIGEST_OIDS: dict[str, str] = {
    "md5": "1.2.840.113549.2.5",
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "sha3-256": "2.16.840.1.101.3.4.2.8",
    "sha3-384": "2.16.840.1.101.3.4.2.9",
    "sha3-512": "2.16.840.1.101.3.4.2.10",
}


def algorithm_identifier(dotted: str, *, null_params: bool = True) -> bytes:
    """``AlgorithmIdentifier``: the OID and (by default) NULL parameters."""
    params = tlv(NULL, b"") if null_params else b""
    return tlv(SEQUENCE, tlv(OID, oid(dotted)) + params)


def digest_info(hash_name: str, digest: bytes) -> bytes:
    """PKCS#1 v1.5 ``DigestInfo`` of a digest (what an RSA signature encrypts)."""
    return tlv(SEQUENCE, algorithm_identifier(DIGEST_OIDS[hash_name]) + tlv(OCTET_STRING, digest))


def ecdsa_signature(raw: bytes) -> bytes:
    """``ECDSA-Sig-Value`` (DER ``SEQUENCE {r, s}``) from the raw ``r‖s`` of ``CKM_ECDSA``."""
    half = len(raw) // 2
    if not raw or len(raw) % 2:
        raise ValueError(f"raw ECDSA signature has odd length {len(raw)}")
    r = int.from_bytes(raw[:half], "big")
    s = int.from_bytes(raw[half:], "big")
    return tlv(SEQUENCE, integer(r) + integer(s))
