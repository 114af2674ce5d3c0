"""``pyverity sign PATH... --key KEY``: sign files for IMA (DESIGN.md §2).

Default: compute the fs-verity digest, write the descriptor to ``<ns>.verity`` and then the
type 0x06 v3 signature to ``<ns>.ima`` (one ``setxattr`` each, in that order).

* ``--sigfile``: write ``FILE.sig`` (the raw ``<ns>.ima`` value, as evmctl) instead of attributes.
* ``--imasig``: classic ``evmctl ima_sign``: a 0x03 v2 signature over the whole-file hash
  (``--hash-alg`` then takes kernel names: sha256 (default), sha1, sha224, sha384, sha512).
* ``--builtin-sig OUT``: one FILE; write the fs-verity built-in PKCS#7 signature to OUT, byte
  for byte what ``fsverity sign FILE OUT --key KEY --cert CERT`` writes (needs the certificate:
  ``--cert``, a PEM key file that also holds it, or the token's certificate object).
* ``--out-merkle-tree F`` / ``--out-descriptor F``: one FILE; also write its tree and descriptor,
  as ``fsverity sign`` does.
* ``--key pkcs11:…``: a key in a PKCS#11 token (RFC 7512 URI; :mod:`pyverity.keys.pkcs11`), the
  PIN from ``--pass-file``/``--pass-env``/the URI's ``pin-source``, the module from the URI's
  ``module-path``, else ``--pkcs11-module``, else the p11-kit proxy.
* ``-r``: sign trees of files, hashed in parallel, progress bar on a terminal; with
  ``--cluster ADDRESS|local[:N]`` hashed on Dask, signed and written here (docs/cluster.md),
  v3 signatures and ``--imasig`` alike (``--builtin-sig`` signs one FILE, so never there).

The keyid is the certificate's SKID tail (``--cert``, or a certificate in the key file), or
``--keyid HEX``; without either, SHA-1 of the public key, as evmctl, with a warning. A
certificate without SKID is refused without ``--keyid``: the kernel could never find it.
``--keyid-from-key`` writes the SHA-1 of the public key even beside a certificate: what
``evmctl ima_sign`` writes by default (the SKID is what ``evmctl --keyid-from-cert`` writes).
Passphrases: ``--pass-file F``, ``--pass-env VAR``, else a prompt when stdin is a terminal.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pyverity.cli._cluster import add_cluster_options, cluster_options_of
from pyverity.cli._common import ArgumentParser
from pyverity.cli._keyoptions import add_key_options, load_cli_signer
from pyverity.cli.enable import (
    Progress,
    add_batch_options,
    add_namespace_options,
    add_tree_options,
    add_wait_options,
    namespace_of,
    print_failure,
    report_failed,
    tree_params_of,
    wait_for_daemon,
)
from pyverity.errors import Error, UsageError
from pyverity.format.digest import format_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyverity.cluster.bulk import Options
    from pyverity.fs.openfile import FileRef
    from pyverity.keys import Signer
    from pyverity.protect.sign import HashedFile, SignedFile

__all__ = ["main"]

logger = logging.getLogger(__name__)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity sign",
        description="Sign files: v3 signature in <ns>.ima and descriptor in <ns>.verity.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    add_key_options(parser)
    add_tree_options(parser)
    add_namespace_options(parser)
    add_batch_options(parser)
    parser.add_argument("--sigfile", action="store_true", help="write FILE.sig, not attributes")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--imasig",
        action="store_true",
        help="classic 0x03 v2 signature of the whole-file hash (also with -r --cluster)",
    )
    mode.add_argument(
        "--builtin-sig",
        metavar="OUT",
        help="one FILE: write its fs-verity built-in signature to OUT (not with --cluster)",
    )
    parser.add_argument("--out-merkle-tree", metavar="F", help="one FILE: also write its tree")
    parser.add_argument("--out-descriptor", metavar="F", help="one FILE: also write its descriptor")
    add_wait_options(parser)
    add_cluster_options(parser)
    return parser


def _check_mode_options(args: argparse.Namespace) -> None:
    if args.imasig and (args.block_size != 4096 or args.salt):
        raise UsageError("--block-size and --salt do not apply to --imasig")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_mode_options(args)
    ns = namespace_of(args)
    if args.builtin_sig is not None:
        if args.sigfile:
            raise UsageError("--sigfile and --builtin-sig are exclusive")
        if len(args.paths) != 1 or args.recursive:
            raise UsageError("--builtin-sig signs exactly one FILE")
    cluster = cluster_options_of(args)
    if cluster is not None and (not args.recursive or args.builtin_sig):
        raise UsageError("--cluster runs sign -r (not --builtin-sig, which signs one FILE)")
    signer = load_cli_signer(args)
    if args.builtin_sig is not None and signer.certificate is None:
        raise UsageError(
            "--builtin-sig needs the key's certificate, from --cert (PKCS#7 names it)",
            remedy="give --cert CERT, or use a PEM key file (or a token) that also holds it",
        )
    if signer.certificate is None and args.keyid is None and not args.keyid_from_key:
        logger.warning(
            "no --cert: keyid %08x is SHA-1 of the public key (as evmctl); it matches the"
            " certificate's SKID only if that was made the standard way",
            signer.keyid,
        )
    hashed = _hash_with_outputs(args)
    if args.builtin_sig is not None:
        return _builtin(args, signer, hashed)
    if args.imasig:
        return _imasig(args, signer, ns, cluster)
    return _verity(args, signer, ns, hashed, cluster)


def _hash_with_outputs(args: argparse.Namespace) -> HashedFile | None:
    """``--out-merkle-tree``/``--out-descriptor``: hash the one FILE keeping its tree, write
    them (as ``fsverity sign`` does) and return what signing then uses."""
    from pyverity.fs.openfile import FileRef, identity
    from pyverity.hashing import build_tree
    from pyverity.keys.generate import publish_file
    from pyverity.protect.sign import HashedFile

    if args.out_merkle_tree is None and args.out_descriptor is None:
        return None
    if args.imasig:
        raise UsageError("--out-merkle-tree and --out-descriptor do not apply to --imasig")
    if len(args.paths) != 1 or args.recursive:
        raise UsageError("--out-merkle-tree and --out-descriptor take exactly one FILE")
    ref = FileRef(None, args.paths[0])  # named: O_NOFOLLOW, as every batch command
    fd = ref.open()
    try:
        before = identity(os.fstat(fd))
        tree = build_tree(fd, tree_params_of(args), keep_tree=args.out_merkle_tree is not None)
    finally:
        os.close(fd)
    if args.out_merkle_tree is not None:
        publish_file(Path(args.out_merkle_tree), tree.tree or b"", overwrite=True)
    if args.out_descriptor is not None:
        publish_file(Path(args.out_descriptor), tree.descriptor.to_bytes(), overwrite=True)
    return HashedFile(ref.path, before, tree.descriptor, ref)


def _builtin(args: argparse.Namespace, signer: Signer, hashed: HashedFile | None) -> int:
    from pyverity.format.formatted_digest import FormattedDigest
    from pyverity.fs.openfile import FileRef
    from pyverity.keys.builtin_sig import builtin_signature
    from pyverity.keys.generate import publish_file
    from pyverity.protect.sign import hash_file

    path = args.paths[0]
    if hashed is None:
        hashed = hash_file(FileRef(None, path), tree_params_of(args), jobs=args.jobs)
    desc = hashed.descriptor
    formatted = FormattedDigest(desc.hash_algorithm, desc.digest())
    cert = signer.certificate
    assert cert is not None  # noqa: S101 - checked in main
    der = builtin_signature(formatted, signer, cert.cert)
    publish_file(Path(args.builtin_sig), der, overwrite=True)
    print(f"Signed file '{path}' ({format_digest(desc.hash_alg.name, desc.digest())})")
    return 0


def _imasig(
    args: argparse.Namespace, signer: Signer, ns: str, cluster: Options | None = None
) -> int:
    from pyverity.format.ima import algo_by_name
    from pyverity.protect.batch import expand_paths
    from pyverity.protect.sign import imasign_file

    alg = algo_by_name(args.hash_alg)
    files = expand_paths(args.paths, recursive=args.recursive)
    progress = Progress(len(files), "sign", enabled=args.recursive)
    if cluster is not None:
        return _imasig_cluster(args, signer, ns, cluster=cluster, files=files, progress=progress)
    worst = 0
    write = not args.sigfile
    for ref in files:
        sign = functools.partial(imasign_file, ref, signer, alg, namespace=ns, write=write)
        worst = max(worst, _sign_one(ref.path, sign, args, progress))
        progress.done += 1
    if args.recursive:
        progress.summary()
    return worst


def _imasig_cluster(
    args: argparse.Namespace,
    signer: Signer,
    ns: str,
    *,
    cluster: Options,
    files: list[FileRef],
    progress: Progress,
) -> int:
    """``-r --imasig --cluster``: workers hash whole files; this process signs each hash (the
    key stays here) and writes it as the local run does, if the file is still the one hashed."""
    from pyverity.cli.progress import cluster_bar
    from pyverity.cluster.bulk import file_hash_outcomes
    from pyverity.format.ima import algo_by_name
    from pyverity.protect.sign import imasign_hashed

    alg = algo_by_name(args.hash_alg)
    bar = cluster_bar("sign", len(files))
    worst = 0
    for out in file_hash_outcomes(cluster, files, alg, on_done=bar.got):
        if out.value is None:
            worst = max(worst, report_failed(out))
            continue
        write = not args.sigfile
        sign = functools.partial(imasign_hashed, out.value, signer, namespace=ns, write=write)
        worst = max(worst, _sign_one(out.path, sign, args, progress))
    bar.close()
    progress.done, progress.failed = bar.files, progress.failed + bar.failed
    progress.summary()
    return worst


def _sign_one(
    path: str, sign: Callable[[], SignedFile], args: argparse.Namespace, progress: Progress
) -> int:
    """One file's classic signature: made (and written) by ``sign``, its ``.sig`` written with
    ``--sigfile``; a failure printed and counted. The failure's exit code, else 0."""
    try:
        done = sign()
        assert done.signature is not None  # noqa: S101
        if args.sigfile:
            _write_sigfile(path, done.signature.to_bytes())
    except Error as e:
        print_failure(path, e.message, e.remedy)
        progress.failed += 1
        return e.exit_code
    return 0


def _write_sigfile(path: str, value: bytes) -> None:
    from pyverity.keys.generate import publish_file

    publish_file(Path(path + ".sig"), value, overwrite=True)


def _verity(
    args: argparse.Namespace,
    signer: Signer,
    ns: str,
    hashed: HashedFile | None = None,
    cluster: Options | None = None,
) -> int:
    from pyverity.keys import sign_v3
    from pyverity.protect.batch import Outcome, expand_paths, map_files
    from pyverity.protect.sign import hash_file, write_hashed

    params = tree_params_of(args)
    files = expand_paths(args.paths, recursive=args.recursive)
    progress = Progress(len(files), "sign", enabled=args.recursive)
    fn = functools.partial(hash_file, params=params, jobs=1 if len(files) > 1 else args.jobs)
    worst = 0
    written: list[str] = []
    # Workers only hash; the signer (a PKCS#11 session does not survive fork) signs here.
    outcomes = (
        map_files(fn, files, jobs=args.jobs, on_done=progress)
        if hashed is None
        else iter([Outcome(hashed.path, hashed, None)])
    )
    if cluster is not None:
        from pyverity.cli.progress import cluster_bar
        from pyverity.cluster.bulk import hashed_outcomes

        bar = cluster_bar("sign", len(files))
        outcomes = hashed_outcomes(cluster, files, params, on_done=bar.got)
    for out in outcomes:
        if out.value is None:
            worst = max(worst, report_failed(out))
            continue
        desc = out.value.descriptor
        try:
            if args.sigfile:
                sig = sign_v3(signer, desc.hash_algorithm, desc.digest())
                _write_sigfile(out.path, sig.to_bytes())
            else:
                write_hashed(out.value, signer, namespace=ns)
                written.append(out.path)
        except Error as e:
            print_failure(out.path, e.message, e.remedy)
            worst = max(worst, e.exit_code)
            progress.failed += 1
            continue
        if not args.recursive:
            print(f"Signed file '{out.path}' ({format_digest(desc.hash_alg.name, desc.digest())})")
    if cluster is not None:
        bar.close()
        progress.done, progress.failed = bar.files, progress.failed + bar.failed
    if args.recursive and not progress.enabled:
        progress.summary()
    if args.wait and written:
        worst = max(worst, wait_for_daemon(args, written))
    return worst
