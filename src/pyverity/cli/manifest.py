"""``pyverity manifest create|verify|apply``: signed manifests of whole trees (docs/manifest.md).

* ``create -o M --key K|pkcs11:URI [--cert C] DIR...``: walk the trees (symlinks recorded, never
  followed), compute each file's fs-verity digest and whole-file hashes in one read, sign.
* ``verify --keyring R M [DIR]``: check the signature (before any entry is read), then with
  DIR every file: added, missing, changed, a summary; exit 1 on any difference.
* ``apply --keyring R M DIR``: write ``<ns>.verity`` (and the signature, when the manifest
  carries one that verifies with R) where the content matches; report and leave the rest.
* ``export --format keylime --keyring R M``: verify, then write a Keylime runtime policy
  (:mod:`pyverity.attest.keylime`; docs/attestation.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyverity.cli._cluster import add_cluster_options, cluster_options_of
from pyverity.cli._common import ArgumentParser
from pyverity.cli._keyoptions import add_key_options, load_cli_signer
from pyverity.cli.enable import (
    add_namespace_options,
    add_tree_options,
    namespace_of,
    tree_params_of,
)
from pyverity.errors import UsageError

if TYPE_CHECKING:
    from pyverity.manifest import Expectations, VerifiedManifest

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"invalid --jobs '{text}': expected a positive integer")
    return value


def _serial(text: str) -> int:
    if not text.isdigit() or int(text) >= 1 << 63:
        raise UsageError(f"invalid serial '{text}': expected a non-negative integer")
    return int(text)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs", type=_jobs, default=None, metavar="N", help="worker processes (default: CPUs)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def _expect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keyring", required=True, metavar="R", help="directory of X.509 certificates")
    p.add_argument("--name", help="refuse a manifest whose name is not NAME")
    p.add_argument("--min-serial", type=_serial, metavar="S", help="refuse a serial below S")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity manifest", description="Signed manifests of whole trees."
    )
    sub = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=ArgumentParser
    )
    c = sub.add_parser("create", help="walk trees and write a signed manifest of their digests")
    c.description = "Walk trees and write a signed manifest of their digests."
    c.add_argument("dirs", nargs="+", metavar="DIR")
    c.add_argument("-o", "--output", required=True, metavar="M", help="manifest to write")
    add_key_options(c)
    c.add_argument("--name", help="the manifest's name (default: the first DIR's base name)")
    c.add_argument("--serial", type=_serial, default=1, metavar="N", help="serial (default 1)")
    c.add_argument("--created", metavar="TIME", help="RFC 3339 UTC time (default: now)")
    c.add_argument(
        "--file-hash",
        default="sha256",
        metavar="ALGS",
        help="whole-file hashes, comma-separated (default sha256)",
    )
    add_tree_options(c)
    sig = c.add_mutually_exclusive_group()
    sig.add_argument("--signatures", action="store_true", help="record each file's v3 signature")
    sig.add_argument(
        "--imasig", action="store_true", help="record v2 signatures of the first file hash"
    )
    _common(c)
    add_cluster_options(c)
    v = sub.add_parser("verify", help="check a manifest's signature and, with DIR, every file")
    v.description = "Check a manifest's signature and, with DIR, every file against it."
    v.add_argument("manifest", metavar="M")
    v.add_argument("dir", nargs="?", metavar="DIR")
    _expect(v)
    _common(v)
    a = sub.add_parser("apply", help="re-attach protection to the files of DIR that match")
    a.description = "Re-attach protection (descriptor, signature) to the files of DIR that match."
    a.add_argument("manifest", metavar="M")
    a.add_argument("dir", metavar="DIR")
    _expect(a)
    a.add_argument("--force", action="store_true", help="replace attributes that differ")
    add_namespace_options(a)
    _common(a)
    e = sub.add_parser("export", help="verify a manifest and write it as a Keylime runtime policy")
    e.description = "Verify a manifest, then write it as a Keylime runtime policy (JSON)."
    e.add_argument("manifest", metavar="M")
    _expect(e)
    e.add_argument("--format", required=True, choices=("keylime",), help="output format")
    e.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    e.add_argument("--prefix", default="/", metavar="PATH", help="where DIR lives (default /)")
    e.add_argument(
        "--log-hash-alg",
        default="sha1",
        choices=("sha1", "sha256", "sha384", "sha512"),
        help="the list's template-hash algorithm (default sha1)",
    )
    e.add_argument(
        "--boot-aggregate",
        metavar="LIST",
        help="allow the boot_aggregate of this measurement list (its first entry)",
    )
    e.add_argument(
        "--exclude", action="append", default=[], metavar="REGEX", help="add an excludes regex"
    )
    e.add_argument("--json", action="store_true", help="print a JSON summary on stderr")
    return parser


def _file_hashes(text: str) -> tuple[str, ...]:
    from pyverity.format.ima import algo_by_name
    from pyverity.manifest.model import FILE_HASHES

    names = []
    for part in text.split(","):
        alg = algo_by_name(part.strip())
        if alg.hashlib_name not in FILE_HASHES:
            raise UsageError(f"--file-hash {part}: not a whole-file hash a manifest can carry")
        names.append(alg.hashlib_name)
    if len(set(names)) != len(names):
        raise UsageError("--file-hash names an algorithm twice")
    return tuple(names)


def _created(text: str | None) -> str:
    from pyverity.errors import FormatError
    from pyverity.manifest.model import format_created, parse_created

    if text is None:
        return format_created(datetime.datetime.now(datetime.UTC))
    try:
        parse_created(text)
    except FormatError as e:
        raise UsageError(f"--created: {e}") from None
    return text


def _print(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _create(args: argparse.Namespace) -> int:
    from pyverity.manifest import CreateOptions, DigestOptions, create_manifest
    from pyverity.manifest.model import display

    options = CreateOptions(
        name=args.name if args.name is not None else Path(args.dirs[0]).resolve().name,
        serial=args.serial,
        created=_created(args.created),
        digest=DigestOptions(tree_params_of(args), _file_hashes(args.file_hash)),
        signatures="v3" if args.signatures else "v2" if args.imasig else None,
        jobs=args.jobs or len(os.sched_getaffinity(0)),
    )
    signer = load_cli_signer(args)
    for d in args.dirs:
        if not Path(d).is_dir():
            raise UsageError(f"'{d}' is not a directory")

    def failed(f: Any) -> None:
        sys.stderr.write(f"{display(f.path)}: FAILED: {f.message}\n")

    from pyverity.cli.progress import Bar, counted
    from pyverity.manifest.create import local_source

    bar = Bar("manifest", enabled=not args.json)
    cluster = cluster_options_of(args)
    if cluster is not None:
        from pyverity.cluster.bulk import manifest_source

        source = manifest_source(cluster, options.digest)
    else:
        source = local_source(options)
    try:
        report = create_manifest(
            args.output, args.dirs, signer, options, on_failure=failed, source=counted(source, bar)
        )
    finally:
        bar.close()
    if args.json:
        _print({"manifest": args.output, **report.__dict__, "run": bar.summary()})
    else:
        print(
            f"Wrote manifest '{args.output}': {report.entries} entries ({report.files} files,"
            f" {report.symlinks} symlinks), {report.skipped} other files skipped"
        )
    return 0


def _open(args: argparse.Namespace) -> VerifiedManifest:
    from pyverity.keys import Keyring
    from pyverity.manifest import Expectations, open_manifest

    expect: Expectations = Expectations(args.name, args.min_serial)
    return open_manifest(args.manifest, Keyring.from_directory(args.keyring), expect)


def _about(m: VerifiedManifest) -> dict[str, Any]:
    h = m.header
    return {
        "name": h.name,
        "serial": h.serial,
        "created": h.created,
        "keyid": f"{h.keyid:08x}",
        "entries": h.entries,
    }


def _verify(args: argparse.Namespace) -> int:
    from pyverity.manifest import Summary, compare_tree
    from pyverity.manifest.model import display

    with _open(args) as m:
        about = _about(m)
        if args.dir is None:
            m.check()
            if args.json:
                _print({"manifest": about, "ok": True})
            else:
                print(
                    f"{args.manifest}: OK (name '{about['name']}', serial {about['serial']},"
                    f" created {about['created']}, key {about['keyid']},"
                    f" {about['entries']} entries)"
                )
            return 0
        summary = Summary()
        diffs = []
        for d in compare_tree(m, args.dir, summary, jobs=args.jobs or len(os.sched_getaffinity(0))):
            if args.json:
                diffs.append({"kind": d.kind, "path": display(d.path), "detail": d.detail})
            else:
                tail = f" ({d.detail})" if d.detail else ""
                print(f"{d.kind}: {display(d.path)}{tail}", flush=True)
    counts = {
        "checked": summary.checked,
        "ok": summary.ok,
        "added": summary.added,
        "missing": summary.missing,
        "changed": summary.changed,
        "skipped": summary.skipped,
    }
    if args.json:
        _print(
            {
                "manifest": about,
                "ok": summary.differences == 0,
                "differences": diffs,
                "summary": counts,
            }
        )
    else:
        print(
            f"{summary.checked} paths: {summary.ok} ok, {summary.added} added,"
            f" {summary.missing} missing, {summary.changed} changed"
        )
    return 0 if summary.differences == 0 else 1


def _apply(args: argparse.Namespace) -> int:
    from pyverity.keys import Keyring
    from pyverity.manifest import Expectations, apply_manifest, open_manifest
    from pyverity.manifest.apply import describe
    from pyverity.manifest.model import display

    keyring = Keyring.from_directory(args.keyring)
    counts: dict[str, int] = {}
    results = []
    with open_manifest(args.manifest, keyring, Expectations(args.name, args.min_serial)) as m:
        for a in apply_manifest(
            m,
            args.dir,
            keyring,
            namespace=namespace_of(args),
            force=args.force,
            jobs=args.jobs or len(os.sched_getaffinity(0)),
        ):
            counts[a.action] = counts.get(a.action, 0) + 1
            if args.json:
                results.append({"path": display(a.path), "action": a.action, "detail": a.detail})
            elif not a.ok or a.detail:
                print(describe(a), flush=True)
    bad = sum(n for k, n in counts.items() if k not in ("written", "unchanged"))
    if args.json:
        _print({"ok": bad == 0, "files": results, "summary": counts})
    else:
        print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no files")
    return 0 if bad == 0 else 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "create":
        return _create(args)
    if args.action == "verify":
        return _verify(args)
    if args.action == "export":
        from pyverity.cli.attest import export_keylime

        return export_keylime(args)
    return _apply(args)
