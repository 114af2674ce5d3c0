"""The ``pyverity`` command: one module per subcommand, each imported only when used.

Every subcommand module has ``main(argv: list[str]) -> int``. Exit codes: 0 ok, 1 runtime
failure, 2 usage error. Errors are printed as one line (``ERROR: ...``, as ``fsverity`` does);
``-v`` before the subcommand (or ``PYVERITY_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "entry_point", "main"]

#: subcommand -> one-line summary (the module is ``pyverity.cli.<name>``).
COMMANDS: dict[str, str] = {
    "digest": "compute the fs-verity digest of files (as `fsverity digest`)",
    "measure": "show the fs-verity digest recorded for files (kernel, or the .verity attribute)",
    "dump-metadata": "write a file's tree, descriptor or signature (as `fsverity dump_metadata`)",
    "sign": "sign files: v3 signature in <ns>.ima and descriptor in <ns>.verity",
    "sign-digest": "sign 'DIGEST PATH' lines from stdin without the files (evmctl sign_hash)",
    "apply-signatures": "write sign-digest output onto the files, checking each digest",
    "enable": "protect files unsigned: write the <ns>.verity descriptor",
    "verify": "recompute digests and check attributes and signatures against a keyring",
    "key": "generate keys and certificates, list a keyring",
    "status": "show the daemon's per-file states, progress and errors",
    "daemon": "run the background tree builder over the configured roots",
    "rebuild": "ask the daemon to rebuild the tree of a STALE file",
    "mount": "mount a directory through the verifying FUSE filesystem",
    "umount": "unmount a pyverity FUSE mount",
    "log": "show, verify and replay the measurement list",
    "policy": "check a policy file and show what it decides for paths",
    "manifest": "create, verify and apply signed manifests of whole trees",
}

_USAGE = """\
Usage: pyverity [-v] COMMAND [ARGS...]

fs-verity Merkle trees and IMA signatures, byte-compatible with Linux, fsverity and evmctl.

Commands:
{commands}

Run `pyverity COMMAND --help` for the options of one command.
Options:
  -v, --verbose   show tracebacks and debug logging
  -h, --help      show this help
  --version       show the version
"""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
    return _USAGE.format(commands=lines)


def main(argv: list[str] | None = None) -> int:
    from pyverity.cli import _common

    args = list(sys.argv[1:] if argv is None else argv)
    while args and args[0] in ("-v", "--verbose"):
        _common.set_verbose(True)
        args.pop(0)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from pyverity import __version__

        print(f"pyverity v{__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        sys.stderr.write(f"ERROR: unknown command '{name}'\n\n{usage()}")
        return 2
    module = importlib.import_module(f"pyverity.cli.{name.replace('-', '_')}")
    rc: int = _common.run(module.main, args[1:])
    return rc


def entry_point() -> None:
    sys.exit(main())
