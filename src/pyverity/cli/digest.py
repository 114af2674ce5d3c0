"""``pyverity digest``: the fs-verity digest of files, exactly as ``fsverity digest`` (v1.5).

Output lines, option spelling (GNU ``getopt_long``: ``--opt=val`` or ``--opt val``, options
anywhere among the files, ``--`` ends options, unique prefixes), error wording and exit codes
follow fsverity-utils (spec/fsverity.md §9), so a script can switch tools without noticing.
Extensions: ``-`` reads standard input; a FIFO or device is refused at once instead of read;
``--jobs=N`` sets the number of hashing processes; ``--out-*`` files are published atomically
and left untouched when any FILE fails.

Start-up time counts: only the format and hashing layers are imported, never ``cryptography``.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyverity.errors import Error, FormatError, InputError, UsageError

if TYPE_CHECKING:
    from pyverity.format.params import TreeParams

__all__ = ["USAGE", "DigestOptions", "GetoptError", "getopt_long", "main", "parse_args"]

PROG = "digest"

USAGE = """\
Usage:
    pyverity digest FILE...
               [--hash-alg=HASH_ALG] [--block-size=BLOCK_SIZE] [--salt=SALT]
               [--out-merkle-tree=FILE] [--out-descriptor=FILE]
               [--compact] [--for-builtin-sig] [--jobs=N]
"""

#: long option -> takes an argument; in fsverity-utils' table order (it orders the
#: "ambiguous; possibilities:" list).
LONGOPTS: dict[str, bool] = {
    "hash-alg": True,
    "block-size": True,
    "salt": True,
    "out-merkle-tree": True,
    "out-descriptor": True,
    "compact": False,
    "for-builtin-sig": False,
    "jobs": True,
}

_INT_MAX = (1 << 31) - 1
# strtoul(arg, &end, 10) with *end == '\0': C-locale spaces, an optional sign, decimal digits.
_STRTOUL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_LIB_FAILED = "ERROR: failed to compute digest"


class GetoptError(Exception):
    """A ``getopt_long`` diagnostic, printed as ``digest: ...`` without the ``ERROR:`` prefix."""


def getopt_long(
    args: list[str], longopts: dict[str, bool], prog: str = PROG
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Split ``args`` as glibc ``getopt_long(argc, argv, "", longopts)`` does (permuting).

    Returns ``([(name, value), ...], operands)``; raises :class:`GetoptError` with glibc's
    wording for an unknown, ambiguous or malformed option.
    """
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands.extend(args[i:])
            break
        if arg.startswith("--"):
            given, has_value, value = arg[2:].partition("=")
            if given in longopts:
                name = given
            else:
                matches = [n for n in longopts if n.startswith(given)]
                if not matches:
                    raise GetoptError(f"{prog}: unrecognized option '{arg}'")
                if len(matches) > 1:
                    listed = " ".join(f"'--{n}'" for n in matches)
                    raise GetoptError(
                        f"{prog}: option '{arg}' is ambiguous; possibilities: {listed}"
                    )
                name = matches[0]
            if longopts[name]:
                if not has_value:
                    if i >= len(args):
                        raise GetoptError(f"{prog}: option '--{name}' requires an argument")
                    value = args[i]
                    i += 1
                opts.append((name, value))
            else:
                if has_value:
                    raise GetoptError(f"{prog}: option '--{name}' doesn't allow an argument")
                opts.append((name, None))
        elif arg.startswith("-") and arg != "-":
            raise GetoptError(f"{prog}: invalid option -- '{arg[1]}'")
        else:
            operands.append(arg)
    return opts, operands


def _strtoul(text: str) -> int | None:
    """``strtoul(text, &end, 10)`` when it consumes all of ``text`` (else None)."""
    m = _STRTOUL.fullmatch(text)
    if m is None:
        return None
    n = int(m.group(2))
    if n >= 1 << 64:
        return (1 << 64) - 1
    return ((1 << 64) - n) % (1 << 64) if m.group(1) == "-" else n


@dataclass
class _OutFile:
    """An output file being prepared: a temp file beside ``path``, renamed over it at the end."""

    path: str
    tmp_path: str
    fd: int

    @classmethod
    def create(cls, path: str) -> _OutFile:
        """Create the temp file now, so an unwritable target is a usage error as in fsverity."""
        import tempfile
        from pathlib import Path

        target = Path(path)
        try:
            if _is_dir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            fd, tmp_path = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
        except OSError as e:
            raise UsageError(f"can't open '{path}' for writing: {e.strerror}") from e
        os.fchmod(fd, 0o666 & ~_umask())
        return cls(path, tmp_path, fd)

    def publish(self, data: bytes | bytearray) -> None:
        """Write ``data``, fsync, rename over the target, fsync the directory."""
        from pathlib import Path

        from pyverity.fs.atomic import fsync_dir, write_all

        try:
            write_all(self.fd, data)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            Path(self.tmp_path).replace(self.path)
        except OSError as e:
            raise InputError(f"writing to '{self.path}': {e.strerror}") from e
        try:
            fsync_dir(Path(self.path).parent)
        except OSError:
            import logging  # only here: start-up counts

            logging.getLogger(__name__).debug("cannot fsync the directory of %s", self.path)

    def discard(self) -> None:
        """Close and remove the temp file if it was not published."""
        from pathlib import Path

        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        Path(self.tmp_path).unlink(missing_ok=True)


def _is_dir(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class DigestOptions:
    """What ``pyverity digest`` was asked to do (parameters not yet validated by libfsverity)."""

    files: list[str]
    hash_alg: int = 0
    block_size: int = 0
    salt: bytes | None = None
    compact: bool = False
    for_builtin_sig: bool = False
    jobs: int | None = None
    out_tree: _OutFile | None = None
    out_descriptor: _OutFile | None = None
    outputs: list[_OutFile] = field(default_factory=list)


def _parse_hash_alg(value: str) -> int:
    from pyverity.format import hashalg

    n = _strtoul(value)
    if n is not None and 0 < n < _INT_MAX:
        return n
    for name in hashalg.names():
        if value == name:
            return hashalg.by_name(name).number
    raise UsageError(
        f"unknown hash algorithm: '{value}'",
        remedy="Available hash algorithms: " + " ".join(hashalg.names()),
    )


def _parse_block_size(value: str) -> int:
    n = _strtoul(value)
    if n is None or n <= 0 or n >= _INT_MAX or n & (n - 1):
        raise UsageError(f"Invalid block size: {value}.  Must be power of 2")
    return n


def _parse_salt(value: str) -> bytes:
    if not _HEX.fullmatch(value):
        raise UsageError("salt is not a valid hex string")
    return bytes.fromhex(value)


def _parse_jobs(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise UsageError(f"Invalid number of jobs: {value}.  Must be a positive integer")
    return int(value)


def parse_args(args: list[str]) -> DigestOptions:
    """Parse the arguments; usage errors raise :class:`UsageError` or :class:`GetoptError`.

    Output files named by ``--out-*`` are created (as temp files) here, as fsverity opens
    them while parsing; the caller must :meth:`_OutFile.discard` ``outputs`` on failure.
    """
    opts = DigestOptions(files=[])
    try:
        pairs, opts.files = getopt_long(args, LONGOPTS)
        seen: set[str] = set()
        for name, value in pairs:
            if name in ("compact", "for-builtin-sig"):
                setattr(opts, name.replace("-", "_"), True)
                continue
            if value is None:  # pragma: no cover - getopt_long gives every valued option one
                raise UsageError(f"option '--{name}' requires an argument")
            if name in seen:
                raise UsageError(f"--{name} can only be specified once")
            seen.add(name)
            if name == "hash-alg":
                opts.hash_alg = _parse_hash_alg(value)
            elif name == "block-size":
                opts.block_size = _parse_block_size(value)
            elif name == "salt":
                opts.salt = _parse_salt(value)
            elif name == "jobs":
                opts.jobs = _parse_jobs(value)
            else:
                out = _OutFile.create(value)
                opts.outputs.append(out)
                if name == "out-merkle-tree":
                    opts.out_tree = out
                else:
                    opts.out_descriptor = out
        if not opts.files:
            raise UsageError("no FILE given")
    except BaseException:
        for out in opts.outputs:
            out.discard()
        raise
    return opts


def _tree_params(opts: DigestOptions) -> TreeParams:
    """The :class:`TreeParams`, checked in libfsverity's order with its wording (exit 1)."""
    from pyverity.format import hashalg
    from pyverity.format.params import MAX_SALT_SIZE
    from pyverity.format.params import TreeParams as _TreeParams

    salt = opts.salt or b""
    if len(salt) > MAX_SALT_SIZE:
        raise FormatError(f"unsupported salt size ({len(salt)})", remedy=_LIB_FAILED)
    try:
        alg = hashalg.by_number(opts.hash_alg or 1)
    except FormatError as e:
        raise FormatError(str(e), remedy=_LIB_FAILED) from None
    block_size = opts.block_size or 4096
    if block_size < 2 * alg.digest_size:
        raise FormatError(
            f"block size ({block_size}) too small for hash algorithm {alg.name}",
            remedy=_LIB_FAILED,
        )
    return _TreeParams(alg, block_size, salt)


def _open(path: str, params_error: Error | None) -> int:
    """Open one FILE; errors ordered and worded as fsverity's (open, parameters, read)."""
    from pyverity.fs.openfile import open_regular

    try:
        return open_regular(path)
    except InputError as e:
        if e.__cause__ is not None:  # open(2) itself failed: fsverity reports this first
            raise
        if params_error is not None:
            raise params_error from None
        if _is_dir(path):
            raise InputError(
                f"reading from '{path}': Is a directory",
                remedy="ERROR: error reading file\n" + _LIB_FAILED,
            ) from None
        raise


def _run(opts: DigestOptions) -> int:
    from pyverity.hashing import build_tree

    params: TreeParams | None = None
    params_error: Error | None = None
    try:
        params = _tree_params(opts)
    except Error as e:
        params_error = e
    keep_tree = opts.out_tree is not None
    tree_out: bytes | bytearray = b""
    descriptors = bytearray()
    out = sys.stdout
    for path in opts.files:
        fd = None if path == "-" else _open(path, params_error)
        try:
            if params is None:
                raise params_error or UsageError("no tree parameters")
            if fd is None:
                if sys.stdin is None:
                    raise InputError("can't open '-' for reading: standard input is closed")
                result = build_tree(sys.stdin.buffer, params, keep_tree=keep_tree)
            else:
                result = build_tree(fd, params, keep_tree=keep_tree, jobs=opts.jobs)
        except OSError as e:
            raise InputError(
                f"reading from '{path}': {e.strerror or e}",
                remedy="ERROR: error reading file\n" + _LIB_FAILED,
            ) from e
        finally:
            if fd is not None:
                os.close(fd)
        digest = result.file_digest()
        if keep_tree and result.tree:
            # fsverity pwrite()s each file's tree at offset 0 of the same output file. One
            # file (the usual case) keeps its tree as is: no copy, peak memory = tree size.
            if len(result.tree) >= len(tree_out):
                tree_out = result.tree
            else:
                tree_out = bytearray(tree_out)
                tree_out[: len(result.tree)] = result.tree
        descriptors += result.descriptor.to_bytes()
        text = digest.formatted().to_bytes().hex() if opts.for_builtin_sig else digest.hex()
        if opts.compact:
            out.write(f"{text}\n")
        elif opts.for_builtin_sig:
            out.write(f"{text} {path}\n")
        else:
            out.write(f"{digest.algorithm}:{text} {path}\n")
    out.flush()
    if opts.out_tree is not None:
        opts.out_tree.publish(tree_out)
    if opts.out_descriptor is not None:
        opts.out_descriptor.publish(descriptors)
    return 0


def _help_or_version(args: list[str]) -> int | None:
    """``--help`` / ``--version`` anywhere before ``--``, as fsverity's common options."""
    for arg in args:
        if arg == "--":
            return None
        if arg == "--help":
            sys.stdout.write(USAGE)
            return 0
        if arg == "--version":
            from pyverity import __version__

            sys.stdout.write(f"pyverity v{__version__}\n")
            return 0
    return None


def main(argv: list[str]) -> int:
    done = _help_or_version(argv)
    if done is not None:
        return done
    try:
        opts = parse_args(argv)
    except GetoptError as e:
        sys.stderr.write(f"{e}\n{USAGE}")
        return 2
    except UsageError as e:
        if e.message == "no FILE given":
            sys.stderr.write(USAGE)
            return 2
        remedy = f"{e.remedy}\n" if e.remedy else ""
        raise UsageError(e.message, remedy=remedy + USAGE.rstrip("\n")) from None
    try:
        return _run(opts)
    finally:
        for out in opts.outputs:
            out.discard()
