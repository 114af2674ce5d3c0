"""PCR banks of a measurement list: names, template-digest sizes and hashes (spec/ima.md §4.3).

Since 6.10 the kernel writes one list pair per TPM PCR bank: ``binary_runtime_measurements_<bank>``
and ``ascii_runtime_measurements_<bank>``, ``<bank>`` being the kernel's hash name (``sha1``,
``sha256``, ``sha384``, ``sha512``, ``sm3``) or, for a bank whose algorithm the kernel's crypto
lacks, ``tpm_alg_<hex>`` (the TPM's ``TPM_ALG_ID``). Each record's template digest is that
bank's: the bank's hash over the template data, or, in a ``tpm_alg_`` bank, the SHA-1 template
hash zero-padded to the bank's size (what the kernel extends there). The unsuffixed names are
the sha1 lists.

Pure functions, no I/O: :func:`bank_from_name`, :func:`normalize_bank`, :func:`digest_size`,
:func:`template_hash` and :func:`extend`. An algorithm pyverity cannot compute is an
:class:`~pyverity.errors.UnsupportedError` (reason ``unsupported``).
"""

from __future__ import annotations

import functools
import hashlib

from pyverity.errors import UnsupportedError

__all__ = [
    "BANK_SIZES",
    "TPM_ALGS",
    "bank_from_name",
    "digest_size",
    "extend",
    "hash_bytes",
    "normalize_bank",
    "template_hash",
]

#: The kernel's names of the banks a TPM may have, and their digest sizes.
BANK_SIZES: dict[str, int] = {
    "sha1": 20,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "sm3": 32,
    "sha3-256": 32,
    "sha3-384": 48,
    "sha3-512": 64,
}
#: ``TPM_ALG_ID`` -> the algorithm (for the ``tpm_alg_<hex>`` banks).
TPM_ALGS: dict[int, str] = {
    0x0004: "sha1",
    0x000B: "sha256",
    0x000C: "sha384",
    0x000D: "sha512",
    0x0012: "sm3",
    0x0027: "sha3-256",
    0x0028: "sha3-384",
    0x0029: "sha3-512",
}
_ALIASES = {"sm3_256": "sm3", "sm3-256": "sm3", "sha3_256": "sha3-256", "sha3_384": "sha3-384",
            "sha3_512": "sha3-512"}  # fmt: skip
_HASHLIB = {"sha3-256": "sha3_256", "sha3-384": "sha3_384", "sha3-512": "sha3_512"}
_TPM_PREFIX = "tpm_alg_"
#: What a list file's name may start with before its bank suffix.
_LIST_PREFIXES = ("binary_runtime_measurements", "ascii_runtime_measurements")


def _tpm_alg(bank: str) -> str | None:
    """The algorithm of a ``tpm_alg_<hex>`` bank, ``None`` for another name."""
    if not bank.startswith(_TPM_PREFIX):
        return None
    text = bank[len(_TPM_PREFIX) :]
    if not text or len(text) > 4 or any(c not in "0123456789abcdef" for c in text.lower()):
        raise UnsupportedError(f"PCR bank {bank!r}: not a TPM algorithm id")
    alg = TPM_ALGS.get(int(text, 16))
    if alg is None:
        raise UnsupportedError(f"PCR bank {bank!r}: TPM algorithm 0x{text} is not supported")
    return alg


def normalize_bank(bank: str) -> str:
    """The bank's canonical name (``sm3_256`` -> ``sm3``, ``tpm_alg_B`` -> ``tpm_alg_b``);
    :class:`UnsupportedError` if it is no bank pyverity knows."""
    name = bank.lower()
    name = _ALIASES.get(name, name)
    if name in BANK_SIZES:
        return name
    if _tpm_alg(name) is not None:
        return _TPM_PREFIX + format(int(name[len(_TPM_PREFIX) :], 16), "x")
    raise UnsupportedError(
        f"PCR bank {bank!r} is not supported",
        remedy="banks: " + ", ".join(BANK_SIZES) + ", tpm_alg_<hex>",
    )


def bank_from_name(path: str) -> str | None:
    """The bank named by a list file's suffix (``…runtime_measurements_sha256``,
    ``…runtime_measurements_tpm_alg_12``), else ``None``."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    for prefix in _LIST_PREFIXES:
        _, sep, suffix = base.rpartition(prefix + "_")
        if sep and (suffix.lower() in BANK_SIZES or suffix.lower() in _ALIASES):
            return normalize_bank(suffix)
        if sep and suffix.startswith(_TPM_PREFIX):
            return normalize_bank(suffix)  # an unknown TPM algorithm: unsupported
    return None


def digest_size(bank: str) -> int:
    """Bytes of the template digest (and PCR value) of ``bank``."""
    name = normalize_bank(bank)
    alg = _tpm_alg(name)
    return BANK_SIZES[alg if alg is not None else name]


@functools.cache
def _usable(name: str) -> str:
    """The hashlib name of ``name``, or ``"cryptography"`` when only that library has it."""
    hl = _HASHLIB.get(name, name)
    try:
        hashlib.new(hl)
    except ValueError:
        pass
    else:
        return hl
    if name == "sm3":
        from cryptography.hazmat.primitives import hashes

        try:
            hashes.Hash(hashes.SM3())
        except Exception:  # noqa: BLE001 - an OpenSSL without SM3 raises UnsupportedAlgorithm
            return _unavailable(name)
        return "cryptography"
    return _unavailable(name)


def _unavailable(name: str) -> str:
    raise UnsupportedError(
        f"hash algorithm {name} is not available (neither hashlib nor cryptography has it)"
    )


def hash_bytes(name: str, data: bytes) -> bytes:
    """``name`` (a kernel hash name: ``sha256``, ``sm3``, ``sha3-256`` …) over ``data``."""
    hl = _usable(name)
    if hl != "cryptography":
        return hashlib.new(hl, data).digest()
    from cryptography.hazmat.primitives import hashes

    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def template_hash(bank: str, data: bytes) -> bytes:
    """The template digest the kernel stores and extends in ``bank`` for template ``data``."""
    name = normalize_bank(bank)
    if name.startswith(_TPM_PREFIX):
        return hash_bytes("sha1", data).ljust(digest_size(name), b"\0")
    return hash_bytes(name, data)


def extend(bank: str, old: bytes, value: bytes) -> bytes:
    """A TPM extend of PCR value ``old`` by ``value`` in ``bank``."""
    name = normalize_bank(bank)
    alg = _tpm_alg(name)
    return hash_bytes(alg if alg is not None else name, old + value)
