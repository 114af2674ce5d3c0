"""``pyverity apply-signatures < SIGNED``: write ``sign-digest`` output back onto the files.

The other half of signing without the files: the build machine hashed its files
(``fsverity digest`` / ``pyverity digest``, or ``sha256sum``), a signing server answered with
``pyverity sign-digest`` (or ``evmctl sign_hash``) lines ``DIGEST PATH SIGHEX``. For each line
this command opens PATH, **recomputes its digest** and writes the signature only if the digest
is the one that was signed (and, with ``--keyring``, if the signature verifies):

* ``ALG:HEX`` lines (v3, type 0x06): the fs-verity digest with ``--block-size``/``--salt`` (the
  defaults of ``fsverity digest``); the descriptor goes to ``<ns>.verity`` first, then the
  signature to ``<ns>.ima``, as ``pyverity sign`` writes them;
* bare-hex lines (v2, type 0x03): the whole-file hash with the signature's algorithm; the
  value goes to ``<ns>.ima`` (a stale descriptor is removed), as ``evmctl ima_sign`` writes it.

PATH is opened beneath ``--root`` (default: the current directory) without following symlinks:
a ``..``, a symlink or an absolute path (unless ``--root /``) is refused for that line, so the
lines can only reach files under the root. Every line is parsed before any file is touched (a
malformed line: one error, exit 1, nothing written). A file that does not match its line is
reported and left alone; the exit code is then 1 and the other files are still written.
"""

from __future__ import annotations

import argparse
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyverity.cli._common import ArgumentParser
from pyverity.cli.enable import add_namespace_options, namespace_of, print_failure
from pyverity.errors import (
    Error,
    FormatError,
    InputError,
    IntegrityError,
    SignatureError,
    UsageError,
)
from pyverity.keys.signer import Signer

if TYPE_CHECKING:
    from pyverity.cli.sign_digest import DigestLine
    from pyverity.format.ima import ImaSignature
    from pyverity.keys import PublicKey

__all__ = ["ReplaySigner", "main"]


class ReplaySigner(Signer):
    """A "signer" that returns a signature made elsewhere, only for the digest it was made for.

    The protect layer's writers (:func:`~pyverity.protect.sign.write_hashed`,
    :func:`~pyverity.protect.sign.imasign_file`) hash the file and ask their signer to sign what
    they computed; this one compares that with what the signing server signed, so a file whose
    content differs from the line's digest is never given its signature.
    """

    def __init__(self, signature: ImaSignature, signed_digest: bytes, path: str) -> None:
        self._signature = signature
        self._signed = signed_digest
        self._path = path

    @property
    def keyid(self) -> int:
        return self._signature.keyid

    @property
    def public_key(self) -> PublicKey:
        raise SignatureError("a replayed signature has no key")

    def sign_digest(self, digest: bytes, hash_algo: int) -> bytes:
        if hash_algo != self._signature.hash_algo or not hmac.compare_digest(
            digest, self._signed
        ):
            raise IntegrityError(
                f"'{self._path}' does not have the digest that was signed; not written",
                remedy="the file changed since it was hashed, or (v3) was hashed with another"
                " --block-size/--salt",
            )
        return self._signature.signature


@dataclass(frozen=True)
class SignedLine:
    line: DigestLine
    path: str
    signature: ImaSignature


def _parse(number: int, raw: bytes, args: argparse.Namespace) -> SignedLine:
    from pyverity.cli.sign_digest import parse_digest_line
    from pyverity.format.ima import ImaSignature, parse_ima_value

    head, sep, sig_hex = raw.rpartition(b" ")
    if not sep or not head:
        raise FormatError(f"line {number}: expected 'DIGEST PATH SIGNATURE-HEX'")
    try:
        value = parse_ima_value(bytes.fromhex(sig_hex.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"line {number}: the signature is not hexadecimal") from None
    except FormatError as e:
        raise FormatError(f"line {number}: {e.message}") from e
    if not isinstance(value, ImaSignature):
        raise FormatError(f"line {number}: the value is not an IMA signature (type 0x03/0x06)")
    # A bare-hex line's algorithm (and kind) is the signature's.
    line = parse_digest_line(
        head,
        number,
        hash_alg=args.hash_alg or value.algorithm.name,
        veritysig=args.veritysig or value.is_verity,
    )
    if line.path is None:
        raise FormatError(f"line {number}: no path after the digest")
    if value.is_verity != line.verity:
        want = "a type 0x06 (v3)" if line.verity else "a type 0x03 (v2)"
        raise FormatError(f"line {number}: the value is not {want} signature")
    if value.hash_algo != line.algorithm.id:
        raise FormatError(
            f"line {number}: signature is {value.algorithm.name}, digest is {line.algorithm.name}"
        )
    return SignedLine(line, os.fsdecode(line.path), value)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity apply-signatures",
        description="Write 'DIGEST PATH SIGNATURE' lines (pyverity sign-digest output) from stdin"
        " onto the files, after checking each file's digest.",
    )
    parser.add_argument("--keyring", metavar="DIR", help="also verify each signature first")
    parser.add_argument(
        "--root", default=".", metavar="DIR", help="the paths are beneath DIR (default: .)"
    )
    parser.add_argument(
        "--hash-alg", metavar="ALG", help="algorithm of bare-hex lines (default: the signature's)"
    )
    parser.add_argument(
        "--block-size", type=int, default=4096, metavar="N", help="v3: tree block size (4096)"
    )
    parser.add_argument("--salt", default="", metavar="HEX", help="v3: tree salt (none)")
    parser.add_argument(
        "--veritysig", action="store_true", help="bare-hex lines are fs-verity digests (v3)"
    )
    add_namespace_options(parser)
    return parser


def _open_beneath(root_fd: int, root: str, path: str) -> int:
    from pyverity.fs.beneath import input_error, open_beneath

    rel = path.lstrip("/") if os.path.realpath(root) == "/" else path
    try:
        return open_beneath(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        err = input_error(e, path)
        if path.startswith("/"):
            err.remedy = "absolute paths need --root / (or hash with relative paths)"
        raise err from e


def _apply(item: SignedLine, args: argparse.Namespace, ns: str, root_fd: int) -> None:
    from pyverity.fs.beneath import proc_path

    fd = _open_beneath(root_fd, args.root, item.path)
    try:
        _write(item, args, ns, proc_path(fd))
    finally:
        os.close(fd)


def _write(item: SignedLine, args: argparse.Namespace, ns: str, path: str) -> None:
    """Hash ``path`` (the opened file, by its /proc/self/fd name) and write if it matches."""
    from pyverity.format import hashalg
    from pyverity.format.params import TreeParams
    from pyverity.protect.sign import hash_file, imasign_file, write_hashed

    line, sig = item.line, item.signature
    signer = ReplaySigner(sig, sig.signed_digest(line.digest), item.path)
    if not line.verity:
        imasign_file(path, signer, line.algorithm, namespace=ns)
        return
    try:
        salt = bytes.fromhex(args.salt)
    except ValueError:
        raise UsageError(f"invalid salt '{args.salt}': expected hex digits") from None
    params = TreeParams(hashalg.by_number(line.verity_algorithm), args.block_size, salt)
    hashed = hash_file(path, params)
    write_hashed(hashed, signer, namespace=ns)


def main(argv: list[str]) -> int:
    from pyverity.cli.sign_digest import read_lines, stdin_bytes
    from pyverity.keys import Keyring

    args = build_parser().parse_args(argv)
    ns = namespace_of(args)
    items = [_parse(n, raw, args) for n, raw in read_lines(stdin_bytes())]
    if not items:
        raise UsageError("no signature lines on standard input")
    keyring = Keyring.from_directory(args.keyring) if args.keyring is not None else None
    try:
        root_fd = os.open(args.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"can't open root directory '{args.root}': {e.strerror}") from e
    worst = 0
    try:
        for item in items:
            try:
                if keyring is not None:
                    keyring.verify_ima_signature(item.signature, item.line.digest)
                _apply(item, args, ns, root_fd)
            except Error as e:
                print_failure(item.path, e.message, e.remedy)
                worst = max(worst, e.exit_code)
                continue
            kind = "v3" if item.line.verity else "v2"
            keyid = item.signature.keyid_hex
            print(f"Applied {kind} signature to '{item.path}' (keyid {keyid})")
    finally:
        os.close(root_fd)
    return worst
