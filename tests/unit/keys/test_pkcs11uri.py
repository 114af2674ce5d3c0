"""RFC 7512 URIs: parsed strictly (unknown or repeated attributes, pin-value, bad escapes)."""

from __future__ import annotations

import pytest

from pyverity.errors import UsageError
from pyverity.keys.pkcs11uri import parse_pkcs11_uri


def test_path_and_query_attributes_are_decoded() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=My%20Token;object=ima;id=%01%ab;slot-id=3;type=private"
        "?module-path=/usr/lib/x.so&pin-source=file:/run/pin"
    )
    assert uri.path["token"] == "My Token"  # noqa: S105 - a token label
    assert uri.path["object"] == "ima"
    assert uri.object_id == b"\x01\xab"
    assert uri.slot_id == 3
    assert uri.query == {"module-path": "/usr/lib/x.so", "pin-source": "file:/run/pin"}
    assert uri.get("module-path") == "/usr/lib/x.so"


def test_empty_uri_matches_everything() -> None:
    uri = parse_pkcs11_uri("pkcs11:")
    assert uri.path == {}
    assert uri.query == {}
    assert uri.object_id is None


def test_utf8_labels() -> None:
    assert parse_pkcs11_uri("pkcs11:object=cl%C3%A9").path["object"] == "clé"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs11:token=a?pin-value=1234", "pin-value is refused"),
        ("pkcs11:pin-value=1234", "pin-value is refused"),
        ("pkcs11:tokn=a", "unknown path attribute 'tokn'"),
        ("pkcs11:token=a?module=x", "unknown query attribute 'module'"),
        ("pkcs11:token=a;token=b", "given twice"),
        ("pkcs11:object=a%2", "bad percent escape"),
        ("pkcs11:object=a%zz", "bad percent escape"),
        ("pkcs11:object=%ff", "not UTF-8"),
        ("pkcs11:object", "not name=value"),
        ("pkcs11:type=cert", "cannot sign"),
        ("pkcs11:type=nonsense", "unknown type"),
        ("pkcs11:slot-id=x1", "not a decimal number"),
        ("pkcs11:id=", "id is empty"),
        ("pkcs11:object=a#frag", "fragment"),
        ("pkcs11:object=a?module-path=", "module-path is empty"),
        ("file:/x", "not a PKCS#11 URI"),
    ],
)
def test_malformed_uris_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_pkcs11_uri(text)
    assert info.value.exit_code == 2


def test_pin_value_error_names_the_remedy() -> None:
    with pytest.raises(UsageError) as info:
        parse_pkcs11_uri("pkcs11:object=a?pin-value=1234")
    assert "1234" not in str(info.value)
    assert info.value.remedy is not None
    assert "--pass-file" in info.value.remedy


def test_very_long_uri_is_refused() -> None:
    with pytest.raises(UsageError, match="longer than"):
        parse_pkcs11_uri("pkcs11:object=" + "a" * 5000)


def test_load_signer_without_python_pkcs11_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from pyverity.errors import ConfigurationError
    from pyverity.keys import load_signer

    monkeypatch.setitem(sys.modules, "pkcs11", None)
    monkeypatch.delitem(sys.modules, "pyverity.keys.pkcs11", raising=False)
    with pytest.raises(ConfigurationError, match="python-pkcs11") as info:
        load_signer("pkcs11:object=a")
    assert info.value.remedy == "pip install 'pyverity[pkcs11]'"
