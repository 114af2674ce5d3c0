"""PKCS#11 URIs (RFC 7512), parsed strictly: what names a key held in a token.

``pkcs11:token=build;object=ima-rsa?pin-source=file:/run/pin`` names the private key labelled
``ima-rsa`` in the token labelled ``build``. :func:`parse_pkcs11_uri` accepts the RFC's path
attributes (``token``, ``manufacturer``, ``serial``, ``model``, ``library-manufacturer``,
``library-description``, ``library-version``, ``slot-id``, ``slot-description``,
``slot-manufacturer``, ``object``, ``id``, ``type``) and query attributes (``module-path``,
``module-name``, ``pin-source``), each at most once, percent-decoded. Anything else is refused
rather than ignored, since an attribute ignored by mistake widens what the URI matches:

* an unknown or repeated attribute, a bad percent escape, a ``type`` other than ``private``
  (only private keys sign);
* ``pin-value``: a PIN on the command line is visible to every user (``ps``, ``/proc``), so it
  must come from ``--pass-file``, ``--pass-env`` or ``pin-source``.

Pure parsing: no PKCS#11 library is loaded here (that is :mod:`pyverity.keys.pkcs11`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyverity.errors import UsageError

__all__ = ["PATH_ATTRIBUTES", "QUERY_ATTRIBUTES", "Pkcs11Uri", "is_pkcs11_uri", "parse_pkcs11_uri"]

SCHEME = "pkcs11:"
#: RFC 7512 §2.3 path attributes that select a token, a slot, a library or an object.
PATH_ATTRIBUTES = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-id",
        "slot-description",
        "slot-manufacturer",
        "object",
        "id",
        "type",
    }
)
QUERY_ATTRIBUTES = frozenset({"module-path", "module-name", "pin-source"})
_TYPES = frozenset({"public", "private", "cert", "secret-key", "data"})
_HEX = "0123456789abcdefABCDEF"
#: A URI longer than this is a mistake (RFC 7512 URIs are a few hundred bytes at most).
MAX_URI = 4096


def is_pkcs11_uri(text: str) -> bool:
    return text.startswith(SCHEME)


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed URI: decoded attribute values by name (``id`` kept as bytes)."""

    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    #: ``id`` as raw bytes (it is binary: CKA_ID), None if the URI has none.
    object_id: bytes | None = None
    text: str = ""

    def get(self, name: str) -> str | None:
        return self.path.get(name, self.query.get(name))

    @property
    def slot_id(self) -> int | None:
        value = self.path.get("slot-id")
        return None if value is None else int(value)

    def __str__(self) -> str:
        return self.text


def _decode(raw: str, what: str) -> bytes:
    """Percent-decode ``raw`` (RFC 3986); a ``%`` not followed by two hex digits is an error."""
    out = bytearray()
    i = 0
    encoded = raw.encode("utf-8")
    while i < len(encoded):
        c = encoded[i]
        if c == ord("%"):
            pair = encoded[i + 1 : i + 3].decode("ascii", "replace")
            if len(pair) != 2 or any(ch not in _HEX for ch in pair):
                raise UsageError(f"PKCS#11 URI: bad percent escape in {what}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(c)
        i += 1
    return bytes(out)


def _text(raw: str, what: str) -> str:
    try:
        return _decode(raw, what).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"PKCS#11 URI: {what} is not UTF-8") from None


def _split(part: str, sep: str, allowed: frozenset[str], seen: dict[str, str]) -> list[str]:
    """``name=value`` items of one part of the URI, checked; returns the raw values' names."""
    names = []
    for item in part.split(sep) if part else []:
        name, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"PKCS#11 URI: '{item}' is not name=value")
        if name == "pin-value":
            raise UsageError(
                "PKCS#11 URI: pin-value is refused (a PIN on the command line is visible to"
                " other users)",
                remedy="give the PIN with --pass-file FILE, --pass-env VAR or pin-source=FILE",
            )
        if name not in allowed:
            where = "path" if sep == ";" else "query"
            raise UsageError(f"PKCS#11 URI: unknown {where} attribute '{name}'")
        if name in seen:
            raise UsageError(f"PKCS#11 URI: attribute '{name}' is given twice")
        seen[name] = value
        names.append(name)
    return names


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse ``pkcs11:PATH[?QUERY]`` strictly; :class:`~pyverity.errors.UsageError` if invalid."""
    if not is_pkcs11_uri(text):
        raise UsageError(f"not a PKCS#11 URI (must start with {SCHEME})")
    if len(text) > MAX_URI:
        raise UsageError(f"PKCS#11 URI is longer than {MAX_URI} characters")
    if "#" in text:
        raise UsageError("PKCS#11 URI: a fragment ('#') is not allowed")
    body = text[len(SCHEME) :]
    path_part, _, query_part = body.partition("?")
    raw: dict[str, str] = {}
    path_names = _split(path_part, ";", PATH_ATTRIBUTES, raw)
    query_names = _split(query_part, "&", QUERY_ATTRIBUTES, raw)
    path: dict[str, str] = {}
    object_id = None
    for name in path_names:
        if name == "id":
            object_id = _decode(raw[name], "id")
            if not object_id:
                raise UsageError("PKCS#11 URI: id is empty")
            continue
        path[name] = _text(raw[name], name)
    query = {name: _text(raw[name], name) for name in query_names}
    kind = path.get("type")
    if kind is not None:
        if kind not in _TYPES:
            raise UsageError(f"PKCS#11 URI: unknown type '{kind}'")
        if kind != "private":
            raise UsageError(f"PKCS#11 URI: type={kind} cannot sign (use type=private or omit it)")
    slot = path.get("slot-id")
    if slot is not None and (not slot.isdigit() or not slot.isascii()):
        raise UsageError(f"PKCS#11 URI: slot-id '{slot}' is not a decimal number")
    for name in ("module-path", "pin-source"):
        value = query.get(name)
        if value is not None and not value:
            raise UsageError(f"PKCS#11 URI: {name} is empty")
    return Pkcs11Uri(path, query, object_id, text)
