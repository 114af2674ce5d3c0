"""A real PKCS#11 token for the tests: SoftHSM2 (Debian's ``softhsm2``), made once per process.

:func:`softhsm` initialises, in a temporary ``SOFTHSM2_CONF`` directory, the token ``pyverity``
(user PIN in :attr:`SoftToken.pin_file`) holding, each imported from a PKCS#8 PEM file by
``softhsm2-util --import``:

* ``rsa`` (id 01): an RSA-2048 key, with its certificate stored as a certificate object (id 01);
* ``ec`` (id 02): an ECDSA P-256 key, with its certificate object (id 02);
* ``bare`` (id 03): an RSA-2048 key without a certificate object;

and a second, empty token ``spare`` (for "more than one token matches"). The key files are
:func:`tests.unit.keys.keyhelpers.make_key` keys, so a test can sign with the same key from a
file. Environment: ``SOFTHSM2_CONF`` is set for this process (SoftHSM reads it when the module is
initialised, once per process) and given to subprocesses by :meth:`SoftToken.env`.

With ``CI=true`` a missing ``softhsm2-util`` or ``python-pkcs11`` fails instead of skipping.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyverity.keys.generate import GeneratedKey, generate_key
from tests.support.needs import need
from tests.unit.keys.keyhelpers import make_key

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
)
SPY_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
    "/usr/lib64/pkcs11/pkcs11-spy.so",
)
PIN = "1234"
SO_PIN = "5678"


def first_existing(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


@dataclass(frozen=True)
class SoftToken:
    directory: Path
    conf: Path
    module: str
    pin_file: Path
    rsa: GeneratedKey
    ec: GeneratedKey
    bare: GeneratedKey

    def uri(self, obj: str, *, module: bool = True, pin: bool = False, extra: str = "") -> str:
        query = []
        if module:
            query.append(f"module-path={self.module}")
        if pin:
            query.append(f"pin-source=file:{self.pin_file}")
        text = f"pkcs11:token=pyverity;object={obj}{extra}"
        return text + ("?" + "&".join(query) if query else "")

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


def _run(*args: str, env: dict[str, str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0, f"{args[:3]}: {proc.stdout} {proc.stderr}"


def _store_certificate(module: str, key_id: bytes, label: str, der: bytes) -> None:
    import pkcs11
    from cryptography import x509
    from pkcs11 import Attribute, CertificateType, ObjectClass

    cert = x509.load_der_x509_certificate(der)

    token = pkcs11.lib(module).get_token(token_label="pyverity")  # noqa: S106 - a label
    with token.open(rw=True, user_pin=PIN) as session:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.ID: key_id,
                Attribute.LABEL: label,
                Attribute.VALUE: der,
                Attribute.SUBJECT: cert.subject.public_bytes(),
            }
        )


def softhsm() -> SoftToken:
    """The token (made on first use); skips (fails under CI=true) without SoftHSM2."""
    need("softhsm2 (softhsm2-util)", shutil.which("softhsm2-util") is not None)
    try:
        import pkcs11  # noqa: F401
    except ModuleNotFoundError:
        need("python-pkcs11 (pip install 'pyverity[pkcs11]')", False)
    module = first_existing(MODULE_CANDIDATES)
    need("the SoftHSM2 PKCS#11 module (libsofthsm2.so)", module is not None)
    assert module is not None
    return _make(module)


@functools.cache
def _make(module: str) -> SoftToken:
    d = Path(tempfile.mkdtemp(prefix="pyverity-softhsm-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    env = {**os.environ}
    for label in ("pyverity", "spare"):
        _run(
            "softhsm2-util", "--init-token", "--free", "--label", label,
            "--pin", PIN, "--so-pin", SO_PIN, env=env,
        )  # fmt: skip
    rsa, ec = make_key("rsa", "2048"), make_key("ecdsa", "P-256")
    bare = generate_key(d / "bare", "rsa", bits=2048)
    for key, label, key_id in ((rsa, "rsa", "01"), (ec, "ec", "02"), (bare, "bare", "03")):
        _run(
            "softhsm2-util", "--import", str(key.key_path), "--token", "pyverity",
            "--label", label, "--id", key_id, "--pin", PIN, env=env,
        )  # fmt: skip
    _store_certificate(module, b"\x01", "rsa", rsa.der_path.read_bytes())
    _store_certificate(module, b"\x02", "ec", ec.der_path.read_bytes())
    pin_file = d / "pin"
    pin_file.write_text(PIN + "\n")
    return SoftToken(d, conf, module, pin_file, rsa, ec, bare)
