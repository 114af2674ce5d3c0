"""The signing-key options ``sign``, ``sign-digest`` and ``manifest create`` share.

``--key`` (a PEM/DER file, ``file:PATH`` or an RFC 7512 ``pkcs11:`` URI), ``--pkcs11-module``
(the module when the URI has no ``module-path``; else the p11-kit proxy), ``--cert``, ``--keyid``
or ``--keyid-from-key`` (evmctl's default keyid, SHA-1 of the public key), and the passphrase
or PIN from ``--pass-file``/``--pass-env`` (for a token also the URI's ``pin-source``;
``pin-value`` is refused). :func:`load_cli_signer` turns them into a
:class:`~pyverity.keys.Signer`; ``prompt`` says what happens when a secret is needed and none
was given (ask on the terminal, or refuse).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyverity.errors import UsageError

if TYPE_CHECKING:
    from pyverity.keys import Signer

__all__ = [
    "MAX_PASS_FILE",
    "add_key_options",
    "add_pass_options",
    "load_cli_signer",
    "passphrase_of",
    "prompt_passphrase",
]

MAX_PASS_FILE = 4096


def add_pass_options(parser: argparse.ArgumentParser, what: str = "the key's passphrase") -> None:
    """``--pass-file F`` | ``--pass-env VAR`` (exclusive)."""
    pw = parser.add_mutually_exclusive_group()
    pw.add_argument("--pass-file", metavar="F", help=f"read {what} from F")
    pw.add_argument("--pass-env", metavar="VAR", help=f"take {what} from $VAR")


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """``--key``, ``--pkcs11-module``, ``--cert``, ``--keyid``, ``--pass-file``/``--pass-env``."""
    parser.add_argument(
        "--key", required=True, help="private key: PEM/DER file, file:PATH or a pkcs11: URI"
    )
    parser.add_argument(
        "--pkcs11-module", metavar="SO", help="PKCS#11 module when the URI has no module-path"
    )
    parser.add_argument("--cert", help="the key's X.509 certificate (its SKID gives the keyid)")
    keyid = parser.add_mutually_exclusive_group()
    keyid.add_argument("--keyid", help="keyid to write (8 hex digits), overriding the SKID")
    keyid.add_argument(
        "--keyid-from-key",
        action="store_true",
        help="keyid = SHA-1 of the public key, as evmctl without --keyid-from-cert"
        " (the kernel finds keys by SKID)",
    )
    add_pass_options(parser, "the key's passphrase or the token's PIN")


def passphrase_of(args: argparse.Namespace) -> bytes | None:
    """The passphrase from ``--pass-file``/``--pass-env``; None means "prompt if needed"."""
    pass_file = args.pass_file
    pass_env = args.pass_env
    if pass_file is not None:
        from pyverity.fs.inputs import read_input

        # a pipe is fine here (--pass-file <(...), /dev/fd/N); a FIFO with no writer reads empty
        data = read_input(pass_file, "passphrase file", MAX_PASS_FILE, allow_fifo=True)
        return data.split(b"\n", 1)[0].rstrip(b"\r")
    if pass_env is not None:
        value = os.environb.get(os.fsencode(pass_env))
        if value is None:
            raise UsageError(f"environment variable {pass_env} is not set")
        return value
    return None


def prompt_passphrase() -> bytes:
    """Ask on the terminal; without one, a usage error naming the options."""
    import getpass

    if not sys.stdin.isatty():
        raise UsageError(
            "the key is encrypted and there is no terminal to ask for its passphrase",
            remedy="use --pass-file FILE or --pass-env VAR",
        )
    return getpass.getpass("Passphrase: ").encode()


def load_cli_signer(
    args: argparse.Namespace, prompt: Callable[[], bytes] = prompt_passphrase
) -> Signer:
    """The signer named by the options of :func:`add_key_options`."""
    from pyverity.keys import load_signer, parse_keyid

    keyid = parse_keyid(args.keyid) if args.keyid is not None else None
    given = passphrase_of(args)
    signer = load_signer(
        args.key,
        cert=args.cert,
        keyid=keyid,
        passphrase=given if given is not None else prompt,
        allow_computed_keyid=True,
        pkcs11_module=args.pkcs11_module,
    )
    if getattr(args, "keyid_from_key", False):
        from pyverity.keys.keyid import keyid_from_public_key
        from pyverity.keys.signer import with_keyid

        signer = with_keyid(signer, keyid_from_public_key(signer.public_key.key))
    return signer
