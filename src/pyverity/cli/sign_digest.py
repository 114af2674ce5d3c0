"""``pyverity sign-digest --key KEY < DIGESTS``: sign digests computed elsewhere.

The job of ``evmctl sign_hash`` (and its ``--veritysig``): a signing server that holds the key
(often in a token: ``--key pkcs11:…``) signs what the build machines hashed, without ever seeing
the files. Standard input carries one ``DIGEST PATH`` line per file; each is written back
followed by a space and the hex of the whole ``security.ima`` value, as evmctl writes it. The
paths are echoed, never opened.

* ``ALG:HEX PATH`` (``fsverity digest``, ``pyverity digest``): an fs-verity digest, signed as a
  type 0x06 v3 signature (ALG: ``sha256`` or ``sha512``);
* ``HEX  PATH`` (``sha256sum``, ``sha512sum``…; ``HEX *PATH`` and ``HEX PATH`` too) or a bare
  ``HEX``: a whole-file hash, signed as a type 0x03 v2 signature. Its algorithm cannot be told
  from the line, so it needs ``--hash-alg`` (kernel names: sha256, sha512, sha384, sha224,
  sha1); with ``--veritysig`` bare lines are fs-verity digests instead (``--hash-alg`` sha256
  or sha512), for ``fsverity digest --compact``.

All lines are checked before anything is signed: a malformed line, or a digest of the wrong
length for its algorithm, is one ``ERROR: line N: ...`` and exit 1, with nothing written.
:func:`parse_digest_line` is shared with ``pyverity apply-signatures``.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from pyverity.cli._common import ArgumentParser
from pyverity.cli._keyoptions import add_key_options, load_cli_signer
from pyverity.errors import FormatError, UsageError

if TYPE_CHECKING:
    from pyverity.format.ima import ImaSignature, KernelHashAlgo
    from pyverity.keys import Signer

__all__ = ["DigestLine", "main", "parse_digest_line", "read_lines", "stdin_bytes"]

#: A longer line is not a digest line (PATH_MAX is 4096; the signature hex adds ~2 KiB).
MAX_LINE = 64 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class DigestLine:
    """One parsed input line: what to sign, and the line as given (echoed in the output)."""

    number: int
    raw: bytes
    #: True for an fs-verity digest (v3 signature), False for a whole-file hash (v2).
    verity: bool
    #: Kernel hash algorithm (v2), or the kernel algorithm of the fs-verity one (v3).
    algorithm: KernelHashAlgo
    #: fs-verity algorithm number (1 sha256, 2 sha512) for v3 lines, else 0.
    verity_algorithm: int
    digest: bytes
    #: The path as written (undecoded; sha256sum's ``\\`` escapes undone), or None.
    path: bytes | None

    def sign(self, signer: Signer) -> ImaSignature:
        from pyverity.keys import sign_v2, sign_v3

        if self.verity:
            return sign_v3(signer, self.verity_algorithm, self.digest)
        return sign_v2(signer, self.algorithm.id, self.digest)


def _bad(number: int, what: str) -> FormatError:
    return FormatError(
        f"line {number}: {what}",
        remedy="expected 'ALG:HEX PATH' (fsverity digest) or 'HEX  PATH' (sha256sum)",
    )


def _unescape(path: bytes) -> bytes:
    """Undo coreutils' escaping of a name with ``\\`` or a newline (line starts with ``\\``)."""
    out = bytearray()
    i = 0
    while i < len(path):
        c = path[i : i + 1]
        if c == b"\\" and i + 1 < len(path):
            nxt = path[i + 1 : i + 2]
            out += {b"n": b"\n", b"r": b"\r", b"\\": b"\\"}.get(nxt, b"\\" + nxt)
            i += 2
            continue
        out += c
        i += 1
    return bytes(out)


def parse_digest_line(
    raw: bytes, number: int, *, hash_alg: str | None = None, veritysig: bool = False
) -> DigestLine:
    """Parse one ``DIGEST [PATH]`` line (without its newline); :class:`FormatError` if bad."""
    from pyverity.format import hashalg
    from pyverity.format.ima import algo_by_name, kernel_algo_for_verity

    line = raw
    escaped = line.startswith(b"\\")
    if escaped:
        line = line[1:]
    if not line.strip():
        raise _bad(number, "empty line")
    cut = min((i for i in (line.find(b" "), line.find(b"\t")) if i >= 0), default=len(line))
    token, sep, rest = line[:cut], line[cut : cut + 1], line[cut + 1 :]
    name: str | None = None
    if b":" in token:
        prefix, _, token = token.partition(b":")
        name = prefix.decode("ascii", "replace").lower()
    if not token or len(token) % 2 or any(c not in _HEX for c in token):
        raise _bad(number, "the digest is not hexadecimal")
    digest = bytes.fromhex(token.decode("ascii"))
    verity = name is not None or veritysig
    if name is None:
        if hash_alg is None:
            raise UsageError(
                f"line {number}: a bare hex digest needs --hash-alg (its algorithm is not on"
                " the line)"
            )
        name = hash_alg
    verity_number = 0
    try:
        if verity:
            verity_number = hashalg.by_name(name).number
            kernel = kernel_algo_for_verity(verity_number)
        else:
            kernel = algo_by_name(name)
    except (FormatError, UsageError) as e:
        raise _bad(number, f"hash algorithm '{name}': {e.message}") from e
    if len(digest) != kernel.digest_size:
        raise _bad(
            number, f"{kernel.name} digest is {len(digest)} bytes, expected {kernel.digest_size}"
        )
    path: bytes | None = None
    if sep:
        # sha256sum writes "HEX  PATH" (text) or "HEX *PATH" (binary); fsverity "ALG:HEX PATH".
        if not verity and rest[:1] in (b" ", b"*"):
            rest = rest[1:]
        path = _unescape(rest) if escaped else rest
        if not path:
            raise _bad(number, "the path after the digest is empty")
    return DigestLine(number, raw, verity, kernel, verity_number, digest, path)


def stdin_bytes() -> BinaryIO:
    """Standard input as bytes (its buffer; a text-only stand-in is read and encoded)."""
    if sys.stdin is None:
        raise UsageError("standard input is closed")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return cast("BinaryIO", buffer)
    return io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def read_lines(stream: BinaryIO) -> list[tuple[int, bytes]]:
    """``(number, line)`` for each line of ``stream``, without the newline; bounded length."""
    out: list[tuple[int, bytes]] = []
    number = 0
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return out
        number += 1
        if len(raw) > MAX_LINE:
            raise FormatError(f"line {number} is longer than {MAX_LINE} bytes")
        out.append((number, raw[:-1] if raw.endswith(b"\n") else raw))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity sign-digest",
        description="Sign 'DIGEST PATH' lines from stdin (as evmctl sign_hash); the files are"
        " never opened. Each line is written back with the hex of its security.ima value.",
    )
    add_key_options(parser)
    parser.add_argument(
        "--hash-alg", metavar="ALG", help="algorithm of bare-hex lines (sha256, sha512, ...)"
    )
    parser.add_argument(
        "--veritysig", action="store_true", help="bare-hex lines are fs-verity digests (v3)"
    )
    return parser


def _no_prompt() -> bytes:
    raise UsageError(
        "the key needs a passphrase or PIN, and standard input carries the digests",
        remedy="use --pass-file FILE or --pass-env VAR (or pin-source= in a pkcs11: URI)",
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.veritysig and args.hash_alg not in (None, "sha256", "sha512"):
        raise UsageError("--veritysig takes --hash-alg sha256 or sha512 (fs-verity algorithms)")
    parsed = [
        parse_digest_line(raw, n, hash_alg=args.hash_alg, veritysig=args.veritysig)
        for n, raw in read_lines(stdin_bytes())
    ]
    if not parsed:
        raise UsageError("no digest lines on standard input")
    signer = load_cli_signer(args, _no_prompt)
    signed = [(line, line.sign(signer).to_bytes()) for line in parsed]
    out = sys.stdout.buffer
    for line, value in signed:
        out.write(line.raw + b" " + value.hex().encode("ascii") + b"\n")
    out.flush()
    return 0
