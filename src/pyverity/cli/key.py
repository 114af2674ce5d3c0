"""``pyverity key``: make signing keys and inspect keyrings.

``pyverity key generate --type rsa|ecdsa [--bits N | --curve P-256|P-384] --out DIR [--name N]``
writes ``DIR/N.key`` (private, 0600), ``DIR/N.pem`` (self-signed certificate with SKID,
digitalSignature) and ``DIR/N.der`` (the same in DER, for the kernel's ``.ima``/``_ima`` keyring
and for ``evmctl ima_verify``). ``--pass-file``/``--pass-env`` encrypt the private key.

``pyverity key list DIR [--json]`` shows each certificate's keyid, algorithm and subject, as a
keyring made from DIR would index them.

``pyverity key import CERT --keyring _ima|.ima|.fs-verity|%keyring:NAME|@u|SERIAL`` adds the
certificate to a kernel keyring (``add_key`` system call, as ``evmctl import``) and prints the
key's serial (:mod:`pyverity.keys.kernel_keyring`).
"""

from __future__ import annotations

import argparse
import json
import sys

from pyverity.cli._common import ArgumentParser
from pyverity.errors import UsageError

__all__ = ["main"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="pyverity key", description="Generate keys, list a keyring.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    gen = sub.add_parser("generate", help="a private key and a self-signed certificate")
    gen.add_argument("--type", choices=("rsa", "ecdsa"), default="rsa", dest="kind")
    gen.add_argument("--bits", type=int, help="RSA modulus size, 2048..4096 (default 3072)")
    gen.add_argument("--curve", help="ECDSA curve: P-256 (default) or P-384")
    gen.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    gen.add_argument("--name", default="ima", help="file name stem (default: ima)")
    gen.add_argument("--subject", default="pyverity IMA signing key", help="certificate CN")
    gen.add_argument("--days", type=int, default=3650, help="validity (default 3650 days)")
    pw = gen.add_mutually_exclusive_group()
    pw.add_argument("--pass-file", metavar="F", help="encrypt the key with the passphrase in F")
    pw.add_argument("--pass-env", metavar="VAR", help="encrypt the key with $VAR")
    ls = sub.add_parser("list", help="keyids, algorithms and subjects of a keyring directory")
    ls.add_argument("dir", metavar="DIR")
    ls.add_argument("--json", action="store_true")
    imp = sub.add_parser("import", help="add a certificate to a kernel keyring; print its serial")
    imp.add_argument("cert", metavar="CERT", help="X.509 certificate (PEM or DER)")
    imp.add_argument(
        "--keyring",
        required=True,
        metavar="RING",
        help="_ima, .ima, .fs-verity, %%keyring:NAME, @s, @u or a serial",
    )
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "generate":
        return _generate(args)
    if args.action == "list":
        return _list(args)
    if args.action == "import":
        from pyverity.keys.kernel_keyring import import_certificate

        print(import_certificate(vars(args)["cert"], vars(args)["keyring"]))
        return 0
    raise UsageError(
        "missing action: generate, list or import", remedy=parser.format_usage().strip()
    )


def _generate(args: argparse.Namespace) -> int:
    from pyverity.cli._keyoptions import passphrase_of
    from pyverity.keys.generate import generate_key

    ns = vars(args)
    if ns["days"] < 1:
        raise UsageError("--days must be at least 1")
    made = generate_key(
        ns["out"],
        ns["kind"],
        bits=ns["bits"],
        curve=ns["curve"],
        name=ns["name"],
        subject=ns["subject"],
        days=ns["days"],
        passphrase=passphrase_of(args),
    )
    print(f"keyid {made.keyid:08x}")
    print(f"private key: {made.key_path}")
    print(f"certificate: {made.cert_path}")
    print(f"certificate (DER, for the kernel's IMA keyring and evmctl): {made.der_path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from pyverity.keys import Keyring

    ns = vars(args)
    keyring = Keyring.from_directory(ns["dir"])
    rows = [
        {
            "keyid": f"{c.keyid:08x}",
            "algorithm": c.algorithm,
            "subject": c.subject,
            "file": c.public_key.source,
            "keyid_from_skid": c.keyid_from_skid,
        }
        for c in keyring
    ]
    if ns["json"]:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        note = "" if r["keyid_from_skid"] else "  (no SKID: the kernel cannot find this key)"
        print(f"{r['keyid']}  {r['algorithm']:<11} {r['subject']}  [{r['file']}]{note}")
    return 0
