"""``--cluster ADDRESS|local[:N]``: which cluster, and refusing the unsafe ones.

Dask runs pickled code for whoever can reach the scheduler, so:

* ``local[:N]`` starts a LocalCluster of N worker processes (default: CPUs), one thread each,
  on 127.0.0.1 with TLS and a temporary certificate authority (``Security.temporary()``,
  made with ``cryptography``): other local users cannot submit code to it.
* ``tcp://HOST:PORT`` is plain text and unauthenticated: accepted for a loopback HOST, else only
  with ``--insecure``.
* ``tls://HOST:PORT`` is mutual TLS with certificates: ``--tls-ca``, ``--tls-cert`` and
  ``--tls-key`` (:class:`Tls`, files checked here before anything is listed), else Dask's TLS
  settings (``distributed.comm.tls.*``, from a Dask configuration file or
  ``DASK_DISTRIBUTED__COMM__TLS__*``), which must name a CA and a client certificate.

Dask is imported here, and only from here and :mod:`.engine`.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyverity.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "ClusterError",
    "Target",
    "Tls",
    "check_tls",
    "connect",
    "error_line",
    "is_loopback",
    "parse_target",
]

#: Seconds to reach a scheduler before giving up.
CONNECT_TIMEOUT = 10
#: A TLS file (CA bundle, certificate, key) is read at most this far (docs/cli.md).
TLS_FILE_LIMIT = 1 << 20


class ClusterError(ConfigurationError):
    """The cluster cannot be used: not installed, unreachable, refused, or lost mid-run."""


@dataclass(frozen=True)
class Tls:
    """The client's side of mutual TLS: the cluster's CA (which signed the scheduler's
    certificate), the client's certificate and its key (None: in the certificate's file)."""

    ca: str
    cert: str
    key: str | None = None


@dataclass(frozen=True)
class Target:
    #: ``None``: a LocalCluster of ``workers`` processes.
    address: str | None
    workers: int = 0
    insecure: bool = False
    #: For a ``tls://`` address: the files given; None: Dask's TLS settings.
    tls: Tls | None = None


def parse_target(text: str, *, insecure: bool = False, tls: Tls | None = None) -> Target:
    """Parse ``--cluster``; refuse a plain-text address off loopback without ``insecure``,
    and TLS files for anything but a ``tls://`` address (``tls`` is checked: :func:`check_tls`).
    """
    if tls is not None and not text.startswith("tls://"):
        raise UsageError(
            f"--tls-ca, --tls-cert and --tls-key apply to a tls:// --cluster, not '{text}'"
        )
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
    if tls is not None:
        check_tls(tls)
    return Target(text, insecure=insecure, tls=tls)


def _no_password() -> bytes:
    raise ClusterError(
        "the TLS client key is encrypted: Dask cannot ask for its passphrase",
        remedy="use an unencrypted key file readable only by you (docs/cluster.md)",
    )


def check_tls(
    tls: Tls, names: tuple[str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key")
) -> None:
    """Refuse, with one line, TLS files that are missing, unreadable, not regular files, larger
    than :data:`TLS_FILE_LIMIT`, not PEM, or a key that does not match its certificate
    (``names``: what the user called them)."""
    from pyverity.fs.inputs import read_input

    for name, path in zip(names, (tls.ca, tls.cert, tls.key), strict=True):
        if path is not None:  # a regular file (a FIFO or a device would block OpenSSL)
            read_input(path, name, TLS_FILE_LIMIT)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        ctx.load_verify_locations(cafile=tls.ca)
    except ssl.SSLError as e:
        raise ClusterError(
            f"{names[0]} '{tls.ca}': no PEM CA certificate in it ({_reason(e)})"
        ) from None
    try:
        ctx.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except ssl.SSLError as e:
        which = f"{names[1]} '{tls.cert}'" + (f" and {names[2]} '{tls.key}'" if tls.key else "")
        raise ClusterError(
            f"{which}: not a PEM certificate and its matching private key ({_reason(e)})",
            remedy=f"give the key with {names[2]} unless it is in the certificate's file",
        ) from None


def _reason(e: ssl.SSLError) -> str:
    """OpenSSL's reason, short: ``key values mismatch``, not ``[X509: ...] ... (_ssl.c:N)``."""
    reason = getattr(e, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    text = str(e.args[1] if len(e.args) > 1 else e)
    return re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", text).lower() or type(e).__name__


def error_line(e: BaseException, *, last: bool = False, default: str | None = None) -> str:
    """One line of an exception's text for a one-line message: the first (``last``: the last),
    else ``default``, else the exception's type name."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__ if default is None else default
    return lines[-1] if last else lines[0]


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


def _tls_security(distributed: Any, target: Target) -> Any:
    tls = target.tls
    if tls is not None:
        return distributed.Security(
            tls_ca_file=tls.ca,
            tls_client_cert=tls.cert,
            tls_client_key=tls.key,
            require_encryption=True,
        )
    security = distributed.Security(require_encryption=True)
    ca, cert, key = security.tls_ca_file, security.tls_client_cert, security.tls_client_key
    if not ca or not cert:
        raise ClusterError(
            f"--cluster {target.address}: no TLS CA or client certificate given",
            remedy="give --tls-ca CA --tls-cert CERT [--tls-key KEY], or set Dask's"
            " distributed.comm.tls.ca-file and tls.client.cert/key (docs/cluster.md)",
        )
    if "\n" not in ca + cert + (key or ""):  # file names, not PEM text in the configuration
        names = ("distributed.comm.tls.ca-file", "tls.client.cert", "tls.client.key")
        check_tls(Tls(ca, cert, key or None), names)
    return security


def _unreachable(target: Target, e: BaseException) -> ClusterError:
    """One line for a failed connection; a TLS failure says which side refused whom."""
    cause: BaseException | None = e
    for _ in range(16):  # the chain of causes, bounded (a context can loop back)
        if cause is None or isinstance(cause, ssl.SSLError):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        cause = None
    text = error_line(e)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ClusterError(
            f"the scheduler at {target.address} has a certificate the TLS CA given did not sign"
            f" ({cause.verify_message or _reason(cause)})",
            remedy="give --tls-ca the CA that signed the scheduler's certificate",
        )
    if isinstance(cause, ssl.SSLError) or "SSL" in text:
        why = _reason(cause) if cause is not None else text.rpartition(": ")[2]
        return ClusterError(
            f"TLS with the scheduler at {target.address} failed ({why}): it does not accept"
            " this client's certificate, or is not a TLS scheduler",
            remedy="use a client certificate signed by the CA the scheduler trusts"
            " (--tls-cert, --tls-key), and check that the scheduler runs with --protocol tls",
        )
    return ClusterError(
        f"can't reach the scheduler at {target.address}: {text}",
        remedy="check that it runs and that --cluster names it",
    )


@contextlib.contextmanager
def connect(target: Target) -> Iterator[Client]:
    """A connected client (and, for ``local``, its cluster), closed on exit.

    The cyclic garbage collector is tuned for the run, and put back as it was when it ends
    (left alone if something was frozen already: :func:`gc.unfreeze` would thaw that too):

    * importing Dask and connecting make some 50,000 objects that live for the whole run: the
      collector is off meanwhile (it ran about 140 times during the import alone, 70-100 ms
      here), then they are frozen out of its sight (:func:`gc.freeze`, as Python's
      documentation suggests for long-lived state), so that no collection walks them again
      (each full one did: two in manifest create of 10,000 small files, 100-200 ms). For
      ``local`` it is on again before the LocalCluster starts (its workers could be forked);
    * the run's own objects (the files in flight, thousands) are young and die young: a first
      generation of 10,000 objects instead of 700 collects them about 15 times less often
      (40-100 ms less in that run).
    """
    enabled = gc.isenabled()
    threshold = gc.get_threshold()
    tune = gc.get_freeze_count() == 0
    if tune:
        gc.disable()
    try:
        distributed = _import()
        if tune and target.address is None:
            gc.freeze()
            if enabled:
                gc.enable()
        with _connected(distributed, target) as client:
            if tune:
                gc.freeze()
                gc.set_threshold(max(threshold[0], 10_000), *threshold[1:])
                if enabled:
                    gc.enable()
            yield client
    finally:
        if tune:
            gc.set_threshold(*threshold)
            gc.unfreeze()
            if enabled:
                gc.enable()


@contextlib.contextmanager
def _connected(distributed: Any, target: Target) -> Iterator[Client]:
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
                security = _tls_security(distributed, target)
            try:
                client = distributed.Client(
                    target.address, security=security, timeout=CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError, ValueError) as e:  # ValueError: tornado, TLS to tcp
                raise _unreachable(target, e) from None
            stack.callback(_close, client)
        yield client


def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close(timeout=2)
