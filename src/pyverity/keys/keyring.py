"""A keyring: a directory of X.509 certificates (PEM or DER) indexed by IMA keyid.

:meth:`Keyring.verify_ima_signature` mirrors the kernel (spec/ima.md §2.6): find the key by the
signature's keyid (:class:`~pyverity.keys.key.UnknownKeyError` if none), then verify over the
file digest — for v2 the whole-file hash itself, for v3 ``H(ima_file_id)`` built from the
fs-verity digest (:class:`~pyverity.keys.key.BadSignatureError` if it does not verify).

Loading is forgiving per file (an unreadable or unusable file is skipped with a warning, as
the kernel skips a key it cannot load) and strict overall: an empty keyring, or two different
keys with the same keyid, is an error.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyverity.errors import ConfigurationError, Error, InputError
from pyverity.format.ima import ImaSignature
from pyverity.fs.inputs import list_directory
from pyverity.keys.cert import Certificate, parse_certificate, read_bounded
from pyverity.keys.key import PublicKey, UnknownKeyError

__all__ = ["CERT_SUFFIXES", "Keyring"]

logger = logging.getLogger(__name__)

CERT_SUFFIXES = (".pem", ".der", ".crt", ".cer", ".x509")
#: A keyring directory larger than this is a mistake, not a keyring.
MAX_CERTS = 10_000
#: Entries of any kind a keyring directory may hold (certificates or not).
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Keyring:
    """Certificates by keyid. Build with :meth:`from_directory` or :meth:`from_certificates`."""

    certificates: dict[int, Certificate] = field(default_factory=dict)
    source: str = ""
    #: Set by :meth:`remembering`: signatures that verified, as (keyid, hash algorithm,
    #: signature, signed digest), least recently used first.
    _verified: OrderedDict[tuple[int, int, bytes, bytes], None] | None = field(
        default=None, compare=False, repr=False
    )
    _remember: int = field(default=0, compare=False, repr=False)

    def remembering(self, entries: int = 65536) -> Keyring:
        """The same keys, remembering the last ``entries`` signatures that verified, so that
        checking one again (the daemon checks a file's signature when it sees the attribute,
        when its build starts and when it ends) costs a lookup instead of a public-key
        operation. Only successes are kept, keyed by everything the result depends on (the
        keyring's keys cannot change); a failure is checked again each time."""
        return replace(self, _verified=OrderedDict(), _remember=entries)

    @classmethod
    def from_certificates(cls, certs: Iterable[Certificate], source: str = "") -> Keyring:
        by_id: dict[int, Certificate] = {}
        for c in certs:
            old = by_id.get(c.keyid)
            if (
                old is not None
                and old.public_key.key.public_numbers() != c.public_key.key.public_numbers()
            ):
                raise ConfigurationError(
                    f"keyring {source}: keyid {c.keyid:08x} names two different keys"
                    f" ({old.public_key.source}, {c.public_key.source})"
                )
            by_id.setdefault(c.keyid, c)
        return cls(by_id, source)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load every ``*.pem|der|crt|cer|x509`` file in ``path`` (not recursive)."""
        root = Path(path)
        # opened once: the listing and every certificate come from that one directory
        try:
            dir_fd, names = list_directory(root, "keyring", MAX_ENTRIES)
        except InputError as e:
            raise ConfigurationError(str(e)) from e
        try:
            files = [n for n in names if Path(n).suffix.lower() in CERT_SUFFIXES]
            if len(files) > MAX_CERTS:
                raise ConfigurationError(
                    f"keyring '{root}' has more than {MAX_CERTS} certificates"
                )
            certs: list[Certificate] = []
            for name in files:
                try:
                    data = read_bounded(name, "certificate", dir_fd=dir_fd)
                    certs.append(parse_certificate(data, str(root / name)))
                except Error as e:
                    logger.warning("keyring: skipping %s: %s", root / name, e)
        finally:
            os.close(dir_fd)
        if not certs:
            raise ConfigurationError(
                f"keyring '{root}' holds no usable certificate",
                remedy="put X.509 certificates (.pem or .der) there (`pyverity key generate`)",
            )
        return cls.from_certificates(certs, str(root))

    def __len__(self) -> int:
        return len(self.certificates)

    def __iter__(self) -> Iterator[Certificate]:
        return iter(self.certificates[k] for k in sorted(self.certificates))

    def get(self, keyid: int) -> PublicKey:
        """The key with ``keyid``; :class:`UnknownKeyError` if there is none."""
        cert = self.certificates.get(keyid)
        if cert is None:
            raise UnknownKeyError(f"unknown key {keyid:08x} (not in keyring {self.source})")
        return cert.public_key

    def verify_ima_signature(self, signature: ImaSignature, digest: bytes) -> None:
        """Verify a v2 (whole-file hash) or v3 (fs-verity digest) signature; raise on failure."""
        key = self.get(signature.keyid)
        signed = signature.signed_digest(digest)
        memo = self._verified
        seen = (signature.keyid, signature.hash_algo, bytes(signature.signature), signed)
        if memo is not None and seen in memo:
            memo.move_to_end(seen)
            return
        key.verify_signature(signature.signature, signed, signature.hash_algo)
        if memo is not None:
            memo[seen] = None
            if len(memo) > self._remember:
                memo.popitem(last=False)
