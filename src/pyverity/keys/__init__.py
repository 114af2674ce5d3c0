"""Keys, certificates, keyrings and IMA signatures (securesystemslib's Signer/Key shape).

* :class:`Signer` (``keyid``, ``public_key``, ``sign_digest(digest, hash_algo)``), loaded with
  :func:`load_signer`: a key file or ``file:`` URI (:class:`FileSigner`; optional
  certificate/keyid, passphrase, a PEM file may hold the certificate too), or a ``pkcs11:`` URI
  (RFC 7512, parsed strictly by :mod:`.pkcs11uri`) naming exactly one private key in a token:
  :mod:`.pkcs11`, imported only then and only with the extra ``pyverity[pkcs11]``
  (``python-pkcs11``). Its PIN is the ``passphrase`` or the URI's ``pin-source`` (never
  ``pin-value``), given to exactly one ``C_Login``; its module the URI's ``module-path``, else
  ``pkcs11_module``, else the p11-kit proxy; its certificate ``cert``, else the token's
  certificate object with the key's CKA_ID. RSA signatures are byte-equal to the same key in a
  file; ECDSA's raw r‖s is DER-encoded (:mod:`.der`). A token signer signs only in the process
  that logged in (sessions do not survive ``fork``).
* :func:`sign_v2` (0x03, whole-file hash) and :func:`sign_v3` (0x06, fs-verity digest) return
  :class:`~pyverity.format.ima.ImaSignature` values.
* :class:`PublicKey.verify_signature` raises :class:`BadSignatureError`;
  :class:`Keyring` (a directory of certificates by keyid) raises :class:`UnknownKeyError` or
  :class:`BadSignatureError` — both :class:`~pyverity.errors.SignatureError`, told apart by class
  or by their ``reason`` (``Reason.UNKNOWN_KEY`` / ``Reason.BAD_SIGNATURE``).
* :func:`load_certificate` (PEM/DER); keyid = last 4 bytes of the SKID (:mod:`.keyid`).
* :mod:`.generate` makes a key pair and a self-signed certificate for IMA.
* :mod:`.builtin_sig` makes fs-verity built-in (PKCS#7) signatures; :mod:`.pkcs7` parses them
  strictly and verifies them against a :class:`Keyring` (signer by issuer and serial number).
* :mod:`.kernel_keyring` loads a certificate into a kernel keyring (``_ima``, ``.ima``,
  ``.fs-verity``, ``%keyring:NAME``, ...) through the ``add_key`` system call, as ``evmctl
  import`` does; the kernel suite checks that IMA and fs-verity then use it.

Importing this package imports ``cryptography``; the ``digest`` command never does.
"""

from pyverity.keys.cert import Certificate, load_certificate, parse_certificate
from pyverity.keys.key import BadSignatureError, PublicKey, UnknownKeyError
from pyverity.keys.keyid import keyid_from_public_key, parse_keyid, skid_keyid
from pyverity.keys.keyring import Keyring
from pyverity.keys.signer import (
    FileSigner,
    Passphrase,
    Signer,
    load_private_key,
    load_signer,
    sign_v2,
    sign_v3,
)

__all__ = [
    "BadSignatureError",
    "Certificate",
    "FileSigner",
    "Keyring",
    "Passphrase",
    "PublicKey",
    "Signer",
    "UnknownKeyError",
    "keyid_from_public_key",
    "load_certificate",
    "load_private_key",
    "load_signer",
    "parse_certificate",
    "parse_keyid",
    "sign_v2",
    "sign_v3",
    "skid_keyid",
]
