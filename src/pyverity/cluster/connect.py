"""``--cluster ADDRESS|local[:N]``: which cluster, and refusing the unsafe ones.

Dask runs pickled code for whoever can reach the scheduler, so:

* ``local[:N]`` starts a LocalCluster of N worker processes (default: CPUs), one thread each,
  on 127.0.0.1 with TLS and a temporary certificate authority (``Security.temporary()``,
  made with ``cryptography``): other local users cannot submit code to it.
* ``tcp://HOST:PORT`` is plain text and unauthenticated: accepted for a loopback HOST, else only
  with ``--insecure``.
* ``tls://HOST:PORT`` uses Dask's TLS settings (``distributed.comm.tls.*``: the CA, the client's
  certificate and key, from a Dask configuration file or ``DASK_DISTRIBUTED__COMM__TLS__*``),
  which must name a CA and a client certificate.

Dask is imported here, and only from here and :mod:`.engine`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyverity.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ClusterError", "Target", "connect", "is_loopback", "parse_target"]

#: Seconds to reach a scheduler before giving up.
CONNECT_TIMEOUT = 10


class ClusterError(ConfigurationError):
    """The cluster cannot be used: not installed, unreachable, refused, or lost mid-run."""


@dataclass(frozen=True)
class Target:
    #: ``None``: a LocalCluster of ``workers`` processes.
    address: str | None
    workers: int = 0
    insecure: bool = False


def parse_target(text: str, *, insecure: bool = False) -> Target:
    """Parse ``--cluster``; refuse a plain-text address off loopback without ``insecure``."""
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise UsageError(f"invalid --cluster '{text}': expected local or local:N, N >= 1")
        n = int(count) if count else len(os.sched_getaffinity(0))
        return Target(None, n)
    scheme, sep, rest = text.partition("://")
    host, _, port = rest.rpartition(":")
    if not sep or scheme not in ("tcp", "tls") or not host or not port.isdigit():
        raise UsageError(
            f"invalid --cluster '{text}': expected local[:N], tcp://HOST:PORT or tls://HOST:PORT"
        )
    if scheme == "tcp" and not insecure and not is_loopback(host.strip("[]")):
        raise UsageError(
            f"--cluster {text}: plain tcp:// off loopback lets anyone on the network run code on"
            " the workers and read the digests",
            remedy="use tls:// with certificates (docs/cluster.md), or add --insecure",
        )
    return Target(text, insecure=insecure)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(str(a)).is_loopback for a in addrs)


def _import() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ClusterError(
            "--cluster needs Dask distributed", remedy="pip install 'pyverity[cluster]'"
        ) from e
    return distributed


def _tls_security(distributed: Any, address: str) -> Any:
    security = distributed.Security(require_encryption=True)
    if not security.tls_ca_file or not security.tls_client_cert:
        raise ClusterError(
            f"--cluster {address}: no TLS CA or client certificate configured",
            remedy="set distributed.comm.tls.ca-file and tls.client.cert/key (docs/cluster.md)",
        )
    return security


@contextlib.contextmanager
def connect(target: Target) -> Iterator[Client]:
    """A connected client (and, for ``local``, its cluster), closed on exit."""
    distributed = _import()
    for name in ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
                 "distributed.scheduler", "distributed.core", "distributed.comm"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if target.address is None:
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=target.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    protocol="tls://",
                    security=distributed.Security.temporary(),
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            )
            client = stack.enter_context(distributed.Client(cluster, timeout=CONNECT_TIMEOUT))
        else:
            security = None
            if target.address.startswith("tls://"):
                security = _tls_security(distributed, target.address)
            try:
                client = distributed.Client(
                    target.address, security=security, timeout=CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as e:
                raise ClusterError(
                    f"can't reach the scheduler at {target.address}: {e}",
                    remedy="check that it runs and that --cluster names it",
                ) from None
            stack.callback(_close, client)
        yield client


def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close(timeout=2)
