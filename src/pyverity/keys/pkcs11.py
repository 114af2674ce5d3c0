"""Keys held in a PKCS#11 token (an HSM, a smart card, SoftHSM), through ``python-pkcs11``.

Imported only when a ``pkcs11:`` key is used (``load_signer`` dispatches here); it needs the
optional extra ``pyverity[pkcs11]``. :func:`load_pkcs11_signer` resolves an RFC 7512 URI
(:mod:`.pkcs11uri`) and returns a :class:`Pkcs11Signer`:

* **module**: the URI's ``module-path`` (a file, or a directory with ``module-name``), else the
  caller's ``module`` (``--pkcs11-module``), else the p11-kit proxy, which loads every module
  configured on the system;
* **token**: exactly one initialised token must match the URI's token, slot and library
  attributes;
* **PIN**: the URI's ``pin-source`` (a file, first line) or the caller's ``pin`` (``--pass-file``,
  ``--pass-env``, a prompt), not both. There is exactly one ``C_Login``: a wrong PIN is
  reported, never retried (tokens lock after a few wrong PINs);
* **key**: exactly one private key must match ``object``/``id`` (RSA 2048–4096, ECDSA P-256/384);
* **certificate**: the caller's ``cert``, else the token's certificate with the key's
  ``CKA_ID``; its key must be the token's. The keyid follows :func:`.signer.choose_keyid`.

Signing: RSA is ``CKM_RSA_PKCS`` over the DER ``DigestInfo`` (so the bytes equal a file key's);
ECDSA is ``CKM_ECDSA``, whose raw ``r‖s`` is DER-encoded as IMA and PKCS#7 need. Each
signature is checked with the public key before it is returned. A token session does not
survive ``fork``: the signer refuses to sign in any process but the one that logged in, so
batch signing hashes in workers and signs in the parent.
"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11

from pyverity.errors import ConfigurationError, SignatureError, UsageError
from pyverity.format.ima import algo_by_id
from pyverity.keys import der
from pyverity.keys.cert import Certificate, load_certificate, parse_certificate, read_bounded
from pyverity.keys.key import (
    BadSignatureError,
    PublicKey,
    PublicKeyTypes,
    check_key_type,
)
from pyverity.keys.pkcs11uri import Pkcs11Uri, parse_pkcs11_uri
from pyverity.keys.signer import Signer, choose_keyid

__all__ = ["PROXY_NAME", "Pkcs11Signer", "find_proxy_module", "load_pkcs11_signer"]

logger = logging.getLogger(__name__)

PROXY_NAME = "p11-kit-proxy.so"
MAX_PIN_FILE = 4096
#: Named curve OIDs (DER, CKA_EC_PARAMS) of the curves pyverity signs with.
_CURVES: dict[bytes, ec.EllipticCurve] = {
    der.tlv(der.OID, der.oid("1.2.840.10045.3.1.7")): ec.SECP256R1(),
    der.tlv(der.OID, der.oid("1.3.132.0.34")): ec.SECP384R1(),
}
_PIN_ERRORS = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange)

PinSource = bytes | Callable[[], bytes] | None


class Pkcs11Signer(Signer):
    """A private key in a token, used through the session that logged in to it."""

    def __init__(
        self,
        session: Any,
        key: Any,
        public: PublicKey,
        certificate: Certificate | None,
        label: str,
    ) -> None:
        self._session = session
        self._key = key
        self._public = public
        self._certificate = certificate
        self._pid = os.getpid()
        self.label = label

    @property
    def keyid(self) -> int:
        return self._public.keyid

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def certificate(self) -> Certificate | None:
        return self._certificate

    def sign_digest(self, digest: bytes, hash_algo: int) -> bytes:
        if os.getpid() != self._pid:
            raise SignatureError(
                f"{self.label}: a PKCS#11 session does not survive fork; sign in the process"
                " that logged in"
            )
        alg = algo_by_id(hash_algo)
        if len(digest) != alg.digest_size:
            raise SignatureError(f"{alg.name} digest must be {alg.digest_size} bytes")
        key = self._public.key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                if alg.name not in der.DIGEST_OIDS:
                    raise SignatureError(f"{alg.name} cannot be signed with PKCS#1 v1.5 here")
                raw = self._key.sign(
                    der.digest_info(alg.name, digest), mechanism=Mechanism.RSA_PKCS
                )
                signature = bytes(raw)
            else:
                # CKM_ECDSA signs the leftmost order-size bytes of the hash (SEC 1 §4.1.3);
                # truncating here keeps that independent of the token.
                size = (key.curve.key_size + 7) // 8
                raw = self._key.sign(digest[:size], mechanism=Mechanism.ECDSA)
                signature = der.ecdsa_signature(bytes(raw))
        except p11.PKCS11Error as e:
            raise SignatureError(f"{self.label}: the token refused to sign: {_describe(e)}") from e
        try:
            self._public.verify_signature(signature, digest, hash_algo)
        except BadSignatureError as e:
            raise SignatureError(
                f"{self.label}: the token's signature does not verify with its public key"
                " (wrong certificate for this key?)"
            ) from e
        return signature

    def close(self) -> None:
        """End the session (logging out); the signer cannot sign afterwards."""
        if self._pid == os.getpid():
            try:
                self._session.close()
            except p11.PKCS11Error:  # pragma: no cover - best effort
                logger.debug("closing the PKCS#11 session failed", exc_info=True)


def _describe(err: Exception) -> str:
    name = type(err).__name__
    text = str(err)
    return f"{name} ({text})" if text else name


def find_proxy_module() -> str:
    """The p11-kit proxy module's path (Debian: package ``p11-kit-modules``)."""
    dirs = []
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for base in ("/usr/lib", "/usr/local/lib", "/lib"):
        if multiarch:
            dirs.append(Path(base) / str(multiarch))
        dirs.append(Path(base))
    dirs.append(Path("/usr/lib64"))
    for d in dirs:
        candidate = d / PROXY_NAME
        if candidate.is_file():
            return str(candidate)
    raise ConfigurationError(
        "no PKCS#11 module named: the URI has no module-path, no --pkcs11-module was given,"
        f" and the p11-kit proxy ({PROXY_NAME}) is not installed",
        remedy="give --pkcs11-module /path/to/module.so, or install p11-kit-modules",
    )


def _module_path(uri: Pkcs11Uri, module: str | None) -> str:
    path = uri.query.get("module-path")
    name = uri.query.get("module-name")
    if path is not None:
        if Path(path).is_dir():
            if name is None:
                raise UsageError("PKCS#11 URI: module-path is a directory; add module-name")
            for candidate in (Path(path) / name, Path(path) / f"{name}.so"):
                if candidate.is_file():
                    return str(candidate)
            raise ConfigurationError(f"PKCS#11 module '{name}' is not in '{path}'")
        return path
    if name is not None:
        raise UsageError(
            "PKCS#11 URI: module-name needs a module-path directory (or use --pkcs11-module)"
        )
    return module if module is not None else find_proxy_module()


def _load_library(path: str) -> Any:
    if not Path(path).is_file():
        raise ConfigurationError(f"PKCS#11 module '{path}' does not exist")
    try:
        return pkcs11.lib(path)
    except (p11.PKCS11Error, OSError) as e:
        raise ConfigurationError(f"cannot load PKCS#11 module '{path}': {_describe(e)}") from e


def _library_matches(lib: Any, uri: Pkcs11Uri) -> bool:
    want = uri.path.get("library-manufacturer")
    if want is not None and lib.manufacturer_id != want:
        return False
    want = uri.path.get("library-description")
    if want is not None and lib.library_description != want:
        return False
    want = uri.path.get("library-version")
    if want is not None:
        major, _, minor = want.partition(".")
        have = lib.library_version
        if str(have[0]) != major or (minor and str(have[1]) != minor):
            return False
    return True


def _token_matches(slot: Any, token: Any, uri: Pkcs11Uri) -> bool:
    checks: dict[str, Callable[[], str]] = {
        "token": lambda: str(token.label),
        "manufacturer": lambda: str(token.manufacturer_id),
        "model": lambda: str(token.model),
        "serial": lambda: bytes(token.serial).decode("utf-8", "replace").strip(),
        "slot-description": lambda: str(slot.slot_description),
        "slot-manufacturer": lambda: str(slot.manufacturer_id),
    }
    for name, value in checks.items():
        want = uri.path.get(name)
        if want is not None and value() != want:
            return False
    return uri.slot_id is None or slot.slot_id == uri.slot_id


def _find_token(lib: Any, uri: Pkcs11Uri, module: str) -> Any:
    if not _library_matches(lib, uri):
        raise SignatureError(f"PKCS#11 module '{module}' does not match the URI's library-*")
    found = []
    try:
        for slot in lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
            except (p11.TokenNotPresent, p11.TokenNotRecognised):
                continue
            initialised = token.flags & TokenFlag.TOKEN_INITIALIZED
            if initialised and _token_matches(slot, token, uri):
                found.append(token)
    except p11.PKCS11Error as e:
        raise SignatureError(f"cannot list the tokens of '{module}': {_describe(e)}") from e
    if not found:
        raise SignatureError(
            f"no token matches '{uri}' (module {module})",
            remedy="is the token plugged in? `p11tool --list-tokens` or `pkcs11-tool -L` lists"
            " the tokens and their labels",
        )
    if len(found) > 1:
        labels = ", ".join(sorted(repr(t.label) for t in found))
        raise SignatureError(
            f"{len(found)} tokens match '{uri}' ({labels})",
            remedy="name one with token=LABEL or serial=SERIAL",
        )
    return found[0]


def _pin_from_source(source: str) -> bytes:
    path = source.removeprefix("file:")
    if source.startswith("file:") and path.startswith("//"):
        path = "/" + path[2:].partition("/")[2]  # file://host/path: a local path only
    if not path.startswith("/"):
        raise UsageError(f"PKCS#11 URI: pin-source '{source}' must be an absolute file path")
    data = read_bounded(path, "PIN file", MAX_PIN_FILE)
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _login(token: Any, uri: Pkcs11Uri, pin: PinSource) -> Any:
    """Open a session, logged in with one ``C_Login`` (never retried)."""
    source = uri.query.get("pin-source")
    if source is not None and isinstance(pin, bytes):
        raise UsageError(
            "the PIN is given twice: by the URI's pin-source and by --pass-file/--pass-env"
        )
    flags = token.flags
    user_pin: object = None
    if source is not None:
        user_pin = _pin_from_source(source)
    elif isinstance(pin, bytes):
        user_pin = pin
    elif flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
        user_pin = pkcs11.PROTECTED_AUTH
    elif flags & TokenFlag.LOGIN_REQUIRED:
        if pin is None:
            raise UsageError(
                f"token '{token.label}' needs a PIN",
                remedy="give it with --pass-file FILE, --pass-env VAR or pin-source=FILE",
            )
        try:
            user_pin = pin()
        except UsageError as e:  # no terminal to ask on
            raise UsageError(
                f"token '{token.label}' needs a PIN and there is no terminal to ask for it",
                remedy="give it with --pass-file FILE, --pass-env VAR or pin-source=FILE",
            ) from e
    if isinstance(user_pin, bytes):
        try:
            user_pin = user_pin.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the PIN is not UTF-8") from None
    label = f"token '{token.label}'"
    try:
        return token.open(user_pin=user_pin)
    except _PIN_ERRORS as e:
        raise SignatureError(
            f"wrong PIN for {label} (not retried: tokens lock after a few wrong PINs)"
        ) from e
    except p11.PinLocked as e:
        raise SignatureError(
            f"the PIN of {label} is locked", remedy="unlock it with the SO PIN"
        ) from e
    except p11.PinExpired as e:
        raise SignatureError(f"the PIN of {label} has expired") from e
    except p11.UserAlreadyLoggedIn:
        # This process logged in before (another signer on the token): sessions share it.
        return token.open()
    except p11.PKCS11Error as e:
        raise SignatureError(f"cannot log in to {label}: {_describe(e)}") from e


def _find_key(session: Any, uri: Pkcs11Uri) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
    label = uri.path.get("object")
    if label is not None:
        attrs[Attribute.LABEL] = label
    if uri.object_id is not None:
        attrs[Attribute.ID] = uri.object_id
    try:
        keys = list(session.get_objects(attrs))
    except p11.PKCS11Error as e:
        raise SignatureError(f"cannot search the token: {_describe(e)}") from e
    if not keys:
        raise SignatureError(
            f"no private key matches '{uri}'",
            remedy="check object=LABEL / id=%HEX (`pkcs11-tool -O --login` lists the objects)",
        )
    if len(keys) > 1:
        raise SignatureError(
            f"{len(keys)} private keys match '{uri}'", remedy="name one with object= or id="
        )
    return keys[0]


def _attr(obj: Any, name: Attribute) -> Any:
    try:
        return obj[name]
    except (p11.PKCS11Error, KeyError):
        return None


def _token_public_key(session: Any, key: Any, key_id: bytes | None) -> PublicKeyTypes | None:
    """The public key as the token knows it (the private key's or the public object's)."""
    kind = _attr(key, Attribute.KEY_TYPE)
    if kind == KeyType.RSA:
        n, e = _attr(key, Attribute.MODULUS), _attr(key, Attribute.PUBLIC_EXPONENT)
        if n and e:
            return rsa.RSAPublicNumbers(
                int.from_bytes(e, "big"), int.from_bytes(n, "big")
            ).public_key()
    if not key_id:
        return None
    objs = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id})
    )
    if len(objs) != 1:
        return None
    pub = objs[0]
    if kind == KeyType.RSA:
        n, e = _attr(pub, Attribute.MODULUS), _attr(pub, Attribute.PUBLIC_EXPONENT)
        if not (n and e):
            return None
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    if kind == KeyType.EC:
        curve = _CURVES.get(bytes(_attr(pub, Attribute.EC_PARAMS) or b""))
        point = bytes(_attr(pub, Attribute.EC_POINT) or b"")
        if curve is None or not point:
            return None
        if point[0] == der.OCTET_STRING:  # DER-wrapped (the standard form)
            point = point[2:] if point[1] < 0x80 else point[2 + (point[1] & 0x7F) :]
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError:
            return None
    return None


def _token_certificate(session: Any, key_id: bytes | None, label: str) -> Certificate | None:
    if not key_id:
        return None
    attrs = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id}
    certs = list(session.get_objects(attrs))
    if not certs:
        return None
    if len(certs) > 1:
        raise SignatureError(
            f"{label}: {len(certs)} certificates have the key's id", remedy="give --cert CERT"
        )
    value = _attr(certs[0], Attribute.VALUE)
    if not value:
        return None
    return parse_certificate(bytes(value), f"{label} (certificate object)")


def _same(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    return a.public_numbers() == b.public_numbers()


def load_pkcs11_signer(
    uri_text: str,
    *,
    cert: str | os.PathLike[str] | None = None,
    keyid: int | None = None,
    pin: PinSource = None,
    allow_computed_keyid: bool = False,
    module: str | None = None,
) -> Pkcs11Signer:
    """Log in to the token named by ``uri_text`` and return a signer for its one matching key."""
    uri = parse_pkcs11_uri(uri_text)
    module_path = _module_path(uri, module)
    lib = _load_library(module_path)
    token = _find_token(lib, uri, module_path)
    session = _login(token, uri, pin)
    try:
        key = _find_key(session, uri)
        key_id = _attr(key, Attribute.ID)
        key_id = bytes(key_id) if key_id else None
        label = f"token '{token.label}' key '{_attr(key, Attribute.LABEL) or key_id!r}'"
        if cert is not None:
            certificate: Certificate | None = load_certificate(cert)
            cert_name = os.fsdecode(cert)
        else:
            certificate = _token_certificate(session, key_id, label)
            cert_name = f"{label} (certificate object)"
        token_pub = _token_public_key(session, key, key_id)
        public = certificate.public_key.key if certificate is not None else token_pub
        if public is None:
            raise SignatureError(
                f"{label}: no certificate and no public key object with the key's id",
                remedy="give --cert CERT, or store the certificate on the token with the same id",
            )
        if token_pub is not None and not _same(public, token_pub):
            raise SignatureError(f"{label} does not match certificate '{cert_name}'")
        check_key_type(public, label)
        chosen = choose_keyid(
            public, certificate, cert_name, keyid, allow_computed_keyid=allow_computed_keyid
        )
        return Pkcs11Signer(session, key, PublicKey(chosen, public, label), certificate, label)
    except BaseException:
        session.close()
        raise
