"""``pyverity verify PATH... --keyring DIR``: recompute, check attributes and signatures.

For each file: read ``<ns>.verity`` and ``<ns>.ima`` (strictly), recompute the fs-verity digest
with the declared parameters (or the whole-file hash for classic 0x03/0x04 values), check the
signature against the keyring, and print one line::

    PATH: ok (verity-signed, sha256:…, key 872439d8)
    PATH: FAILED: bad signature: signature does not verify with key 872439d8

Reasons: ``no attribute``, ``malformed``, ``no keyring``, ``unknown key``, ``bad signature``,
``content does not match``, ``unreadable``. ``--json`` prints one JSON array instead. The exit
status is 1 if any file failed (2 for usage errors).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

from pyverity.cli._cluster import add_cluster_options, cluster_options_of
from pyverity.cli._common import ArgumentParser
from pyverity.cli.enable import Progress, add_batch_options, add_namespace_options, namespace_of

if TYPE_CHECKING:
    from pyverity.keys import Keyring
    from pyverity.protect.batch import Measured, Outcome

__all__ = ["main"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pyverity verify",
        description="Recompute digests and check attributes and signatures against a keyring.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--keyring", metavar="DIR", help="directory of X.509 certificates")
    add_namespace_options(parser)
    add_batch_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON array of results")
    add_cluster_options(parser)
    return parser


def _result(out: Outcome[Measured], keyring: Keyring | None) -> dict[str, Any]:
    from pyverity.protect.gate import appraisal_result

    if out.failure is not None or out.value is None:
        message = out.failure.message if out.failure is not None else "unknown failure"
        return {"path": out.path, "ok": False, "state": "error", "reason": "unreadable",
                "message": message, "kind": None, "keyid": None, "digest": None}  # fmt: skip
    m = out.value
    if m.protection is None:
        return {"path": out.path, "ok": False, "state": "invalid",
                "reason": m.invalid_reason.value, "message": m.invalid, "kind": None,
                "keyid": None, "digest": None}  # fmt: skip
    r = appraisal_result(m.protection, m.computed, keyring)
    return {
        "path": out.path,
        "ok": r.ok,
        "state": r.state.lower(),
        "reason": r.reason.value,
        "message": r.message,
        "kind": r.kind.value,
        "keyid": None if r.keyid is None else f"{r.keyid:08x}",
        "digest": r.digest,
    }


def _line(res: dict[str, Any]) -> str:
    if res["ok"]:
        extra = [res["kind"], res["digest"]]
        if res["keyid"] is not None:
            extra.append(f"key {res['keyid']}")
        return f"{res['path']}: ok ({', '.join(e for e in extra if e)})"
    message = res["message"]
    reason = res["reason"]
    if message in (None, reason):
        text = reason
    elif message.startswith(reason):
        text = message  # the message already names its reason
    else:
        text = f"{reason}: {message}"
    return f"{res['path']}: FAILED: {text}"


def main(argv: list[str]) -> int:
    from pyverity.protect.batch import expand_paths, map_files, measure_file

    args = build_parser().parse_args(argv)
    ns = namespace_of(args)
    keyring = None
    if args.keyring is not None:
        from pyverity.keys import Keyring

        keyring = Keyring.from_directory(args.keyring)
    cluster = cluster_options_of(args)  # before the walk: a bad option fails at once
    files = expand_paths(args.paths, recursive=args.recursive)
    progress = Progress(len(files), "verify", enabled=args.recursive and not args.json)
    fn = functools.partial(measure_file, namespace=ns, jobs=1 if len(files) > 1 else args.jobs)
    results = []
    outcomes = map_files(fn, files, jobs=args.jobs, on_done=progress)
    if cluster is not None:
        from pyverity.cli.progress import cluster_bar
        from pyverity.cluster.bulk import measured_outcomes

        bar = cluster_bar("verify", len(files), enabled=not args.json)
        outcomes = measured_outcomes(cluster, files, ns, on_done=bar.got)
    for out in outcomes:
        res = _result(out, keyring)
        results.append(res)
        if not args.json:
            print(_line(res), flush=True)
    if cluster is not None:
        bar.close()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0 if all(r["ok"] for r in results) else 1
