"""``--cluster ADDRESS|local[:N]``, ``--insecure``, ``--recheck FRACTION`` and the TLS files
``--tls-ca``, ``--tls-cert``, ``--tls-key`` for the bulk verbs.

Parsing imports nothing of Dask; :mod:`pyverity.cluster` is imported only when the flag is
given (docs/cluster.md).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pyverity.errors import UsageError

if TYPE_CHECKING:
    from pyverity.cluster.bulk import Options

__all__ = ["add_cluster_options", "cluster_options_of"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"invalid --recheck '{text}': expected a fraction from 0 to 1")
    return value


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (pip install 'pyverity[cluster]'; docs/cluster.md)")
    g.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="hash on Dask: tcp://HOST:PORT, tls://HOST:PORT or local[:N]",
    )
    g.add_argument(
        "--insecure", action="store_true", help="allow plain tcp:// to a scheduler off loopback"
    )
    g.add_argument(
        "--recheck",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="re-hash this random fraction of the files here and compare",
    )
    g.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="tls://: the cluster's CA certificate (PEM), which signed the scheduler's",
    )
    g.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="tls://: this client's certificate (PEM), signed by the CA the scheduler trusts",
    )
    g.add_argument(
        "--tls-key",
        metavar="FILE",
        help="tls://: this client's private key (PEM, unencrypted; default: in --tls-cert)."
        " Without --tls-ca and --tls-cert, Dask's distributed.comm.tls settings are used",
    )


def cluster_options_of(args: argparse.Namespace) -> Options | None:
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if args.cluster is None:
        if args.insecure or args.recheck or any(f is not None for f in tls_files):
            raise UsageError("--insecure, --recheck and --tls-* apply only with --cluster")
        return None
    import os

    from pyverity.cluster.bulk import Options
    from pyverity.cluster.connect import Tls, parse_target
    from pyverity.cluster.plan import Cut

    tls = None
    if any(f is not None for f in tls_files):
        if args.tls_ca is None or args.tls_cert is None:
            raise UsageError("--tls-ca and --tls-cert go together (and --tls-key with them)")
        tls = Tls(args.tls_ca, args.tls_cert, args.tls_key)
    # Bytes per task (default 64 MiB): tests make big files spread over several tasks.
    task_bytes = os.environ.get("PYVERITY_CLUSTER_TASK_BYTES", "")
    cut = Cut(task_bytes=int(task_bytes)) if task_bytes.isdigit() else Cut()
    target = parse_target(args.cluster, insecure=args.insecure, tls=tls)
    return Options(target, args.recheck, cut)
