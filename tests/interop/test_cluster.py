"""The bulk verbs on a real Dask cluster on this machine (issue 14; docs/cluster.md).

A ``dask scheduler`` and two ``dask worker`` processes (no nanny, so ``kill -9`` really loses
a worker) started by the test on 127.0.0.1 only; each fault test gets its own scheduler.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.polling import wait_until

DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
if DASK is None:  # the cluster extra brings both the module and the command
    if os.environ.get("CI") == "true":
        pytest.fail("the cluster extra (dask) is not installed", pytrace=False)
    pytest.skip("the cluster extra (dask) is not installed", allow_module_level=True)
distributed = pytest.importorskip("distributed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(d: Path) -> Path:
    """With openssl: a CA and, signed by it, certificates for the scheduler, the worker and
    the client (P-256, for IP 127.0.0.1, server and client auth); another CA and a client
    certificate of its own (a stranger's)."""
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )

    def ssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        ssl("req", "-x509", *ec, "-keyout", f"{ca}-key.pem", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN={ca}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for name, ca in (("scheduler", "ca"), ("worker", "ca"), ("client", "ca"),
                     ("stranger", "other-ca")):  # fmt: skip
        ssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", "ext.cnf")  # fmt: skip
    return d


def _tls_args(pki: Path, name: str) -> list[str]:
    """The dask command's TLS options for ``name``'s certificate."""
    return ["--tls-ca-file", str(pki / "ca.pem"), "--tls-cert", str(pki / f"{name}.pem"),
            "--tls-key", str(pki / f"{name}-key.pem")]  # fmt: skip


class Cluster:
    def __init__(self, tmp: Path, workers: int, *, pki: Path | None = None) -> None:
        self.pki = pki
        self.address = f"{'tls' if pki else 'tcp'}://127.0.0.1:{_port()}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tmp / "dask.log"
        tls = ["--protocol", "tls", *_tls_args(pki, "scheduler")] if pki else []
        self.scheduler = self._start(
            "scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
            "--dashboard-address", ":0", "--no-show", *tls,
        )  # fmt: skip
        self.workers = [self.add_worker() for _ in range(workers)]
        if workers:
            self.wait_workers(workers)

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        assert DASK is not None
        with self.log.open("ab") as log:
            p = subprocess.Popen([DASK, *args], stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def add_worker(self) -> subprocess.Popen[bytes]:
        tls = _tls_args(self.pki, "worker") if self.pki else []
        return self._start(
            "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
            "--no-dashboard", *tls,
        )  # fmt: skip

    def client(self) -> distributed.Client:
        security = None
        if self.pki is not None:
            security = distributed.Security(
                tls_ca_file=str(self.pki / "ca.pem"),
                tls_client_cert=str(self.pki / "client.pem"),
                tls_client_key=str(self.pki / "client-key.pem"),
                require_encryption=True,
            )
        return wait_until(
            lambda: _try_client(self.address, security), timeout=60, what="scheduler up"
        )

    def wait_workers(self, n: int) -> None:
        with self.client() as c:
            wait_until(lambda: len(c.scheduler_info()["workers"]) >= n, timeout=60, what="workers")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _try_client(address: str, security: object = None) -> distributed.Client | None:
    try:
        return distributed.Client(address, timeout=2, security=security)
    except (OSError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("dask"), 2)
    yield c
    c.close()


def _keys(tmp: Path, kind: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{kind}.pem", tmp / f"{kind}.crt"
    gen = ["-newkey", "rsa:2048"] if kind == "rsa" else ["-newkey", "ec", "-pkeyopt",
                                                          "ec_paramgen_curve:P-256"]  # fmt: skip
    subprocess.run(
        ["openssl", "req", "-x509", *gen, "-nodes", "-keyout", key, "-out", cert, "-subj",
         "/CN=cluster test", "-days", "2"], check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def _tree(root: Path, files: int = 40, big: int = 3 << 20) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(files):
        (root / ("sub" if i % 3 else "") / f"f{i}").write_bytes(os.urandom(i * 1500))
    (root / "big").write_bytes(os.urandom(big))
    (root / "link").symlink_to("f0")
    return root


def _run(
    *args: str | Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip


def _attrs(root: Path) -> dict[str, tuple[bytes, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (
                os.getxattr(p, "user.verity"),
                os.getxattr(p, "user.ima"),
            )
    return out


CREATED = "2026-01-02T03:04:05Z"
SMALL_TASKS = {"PYVERITY_CLUSTER_TASK_BYTES": str(1 << 20)}


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_same_bytes_as_a_local_run(cluster: Cluster, tmp_path: Path, kind: str) -> None:
    key, cert = _keys(tmp_path, kind)
    tree = _tree(tmp_path / "t")
    common = ["--key", key, "--cert", cert, "--created", CREATED, "--name", "t", tree]
    local = _run("manifest", "create", "-o", tmp_path / "local.m", *common)
    assert local.returncode == 0, local.stderr
    remote = _run(
        "manifest", "create", "-o", tmp_path / "cluster.m", *common, "--cluster", cluster.address,
        "--recheck", "0.5",
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    a, b = (tmp_path / "local.m").read_bytes(), (tmp_path / "cluster.m").read_bytes()
    if kind == "rsa":
        assert a == b
    else:  # ECDSA signatures are randomised: everything before the signature line is equal
        assert a.rsplit(b"\n", 2)[0] == b.rsplit(b"\n", 2)[0]
        assert a != b
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    sign = ["sign", "-r", "--xattr-user", "--key", key, "--cert", cert]
    assert _run(*sign, tree).returncode == 0
    r = _run(*sign, copy, "--cluster", cluster.address)
    assert r.returncode == 0, r.stderr
    mine, theirs = _attrs(tree), _attrs(copy)
    assert mine.keys() == theirs.keys()
    assert len(mine) == 41
    for name, (desc, sig) in mine.items():
        assert theirs[name][0] == desc
        assert (theirs[name][1] == sig) == (kind == "rsa"), name
    keyring = tmp_path / "kr"
    keyring.mkdir()
    shutil.copy(cert, keyring)
    v = _run("verify", "-r", "--xattr-user", "--keyring", keyring, copy, "--json",
             "--cluster", cluster.address)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.count('"ok": true') == 41


def _all_attrs(root: Path) -> dict[str, dict[str, bytes]]:
    return {
        str(p.relative_to(root)): {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_imasig_same_bytes_as_a_local_run(cluster: Cluster, tmp_path: Path) -> None:
    key, cert = _keys(tmp_path, "rsa")  # RSA PKCS#1 v1.5: deterministic signatures
    tree = _tree(tmp_path / "t")
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    keys = ["--xattr-user", "--key", key, "--cert", cert]
    for t in (tree, copy):  # a v3 signing first: --imasig must remove the stale descriptor
        assert _run("sign", "-r", *keys, t).returncode == 0
    local = _run("sign", "-r", "--imasig", *keys, tree)
    assert local.returncode == 0, local.stderr
    r = _run("sign", "-r", "--imasig", *keys, copy, "--cluster", cluster.address,
             "--recheck", "0.5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr == local.stderr  # the same summary line
    mine, theirs = _all_attrs(tree), _all_attrs(copy)
    assert len(mine) == 41
    assert theirs == mine
    assert all(set(a) == {"user.ima"} and a["user.ima"][:1] == b"\x03" for a in mine.values())
    # --sigfile with another algorithm: the same FILE.sig bytes, and no attribute written
    small = _tree(tmp_path / "s", files=4, big=1 << 20)
    small_copy = tmp_path / "s2"
    shutil.copytree(small, small_copy, symlinks=True)
    sigfile = ["sign", "-r", "--imasig", "--sigfile", "--hash-alg", "sha512", *keys]
    assert _run(*sigfile, small).returncode == 0
    r = _run(*sigfile, small_copy, "--cluster", cluster.address)
    assert r.returncode == 0, r.stderr
    sigs = {p.name: p.read_bytes() for p in sorted(small.rglob("*.sig"))}
    assert len(sigs) == 5
    assert {p.name: p.read_bytes() for p in sorted(small_copy.rglob("*.sig"))} == sigs
    assert not any(os.listxattr(p) for p in small_copy.rglob("*") if not p.is_symlink())


def test_a_worker_killed_mid_run(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 2)
    try:
        key, cert = _keys(tmp_path, "rsa")
        tree = _tree(tmp_path / "t", files=10, big=96 << 20)
        common = ["--key", key, "--cert", cert, "--created", CREATED, "--name", "t", tree]
        assert _run("manifest", "create", "-o", tmp_path / "local.m", *common).returncode == 0
        env = {**os.environ, **SMALL_TASKS}
        p = subprocess.Popen(
            [sys.executable, "-m", "pyverity.cli", "manifest", "create", "-o",
             str(tmp_path / "cluster.m"), *map(str, common), "--cluster", c.address],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with c.client() as client:
            wait_until(lambda: any(client.processing().values()), timeout=60, what="tasks run")
        os.kill(c.workers[0].pid, signal.SIGKILL)
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert (tmp_path / "cluster.m").read_bytes() == (tmp_path / "local.m").read_bytes()
    finally:
        c.close()


def test_scheduler_gone(tmp_path: Path, cluster: Cluster) -> None:
    c = Cluster(tmp_path, 1)
    try:
        key, cert = _keys(tmp_path, "rsa")
        tree = _tree(tmp_path / "t", files=300, big=64 << 20)
        env = {**os.environ, **SMALL_TASKS}
        sign = ["sign", "-r", "--xattr-user", "--key", str(key), "--cert", str(cert), str(tree)]
        p = subprocess.Popen(
            [sys.executable, "-m", "pyverity.cli", *sign, "--cluster", c.address],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with c.client() as client:
            wait_until(lambda: any(client.processing().values()), timeout=60, what="tasks run")
        c.scheduler.kill()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1
        assert "lost the cluster's scheduler" in err
        for f in (x for x in tree.rglob("*") if x.is_file() and not x.is_symlink()):
            names = set(os.listxattr(f))
            assert names in (set(), {"user.verity", "user.ima"}), (f, names)
        m = _run("manifest", "create", "-o", tmp_path / "m", "--key", key, "--cert", cert, tree,
                 "--cluster", c.address)  # fmt: skip
        assert m.returncode == 1
        assert not (tmp_path / "m").exists()
        again = _run(*sign, "--cluster", cluster.address)
        assert again.returncode == 0, again.stderr
        assert len(_attrs(tree)) == 301
    finally:
        c.close()


@pytest.mark.parametrize("mode", [[], ["--imasig"]], ids=["v3", "imasig"])
def test_a_changed_file_is_reported_and_never_signed(tmp_path: Path, mode: list[str]) -> None:
    c = Cluster(tmp_path, 0)  # no worker yet: the run lists, submits and waits
    try:
        key, cert = _keys(tmp_path, "rsa")
        tree = _tree(tmp_path / "t", files=5)
        p = subprocess.Popen(
            [sys.executable, "-m", "pyverity.cli", "sign", "-r", *mode, "--xattr-user", "--key",
             str(key), "--cert", str(cert), str(tree), "--cluster", c.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with c.client() as client:
            wait_until(
                lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)),
                timeout=60,
                what="tasks submitted",
            )
        with (tree / "big").open("r+b") as f:
            f.write(b"changed")
        c.add_worker()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1
        assert "big: file changed during the run; not signed" in err
        assert "user.ima" not in os.listxattr(tree / "big")
        assert os.getxattr(tree / "f3", "user.ima")[:1] == (b"\x03" if mode else b"\x06")
    finally:
        c.close()


def test_plain_tcp_off_loopback_needs_insecure(tmp_path: Path) -> None:
    r = _run("verify", "-r", tmp_path, "--cluster", "tcp://192.0.2.1:8786")
    assert r.returncode == 2
    assert "off loopback" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    r = _run("verify", "-r", tmp_path, "--cluster", "tcp://192.0.2.1:8786", "--insecure")
    assert r.returncode == 1
    assert "can't reach the scheduler" in r.stderr


def test_local_cluster_and_no_dask_without_the_flag(tmp_path: Path) -> None:
    key, cert = _keys(tmp_path, "rsa")
    tree = _tree(tmp_path / "t", files=6)
    common = ["--key", key, "--cert", cert, "--created", CREATED, "--name", "t", tree]
    assert _run("manifest", "create", "-o", tmp_path / "a", *common).returncode == 0
    r = _run("manifest", "create", "-o", tmp_path / "b", *common, "--cluster", "local:2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    probe = (
        "import sys; from pyverity.cli import main; "
        f"main(['manifest', 'create', '-o', {str(tmp_path / 'c')!r}, '--key', {str(key)!r},"
        f" {str(tree)!r}]); print('dask' in sys.modules or 'distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip().endswith("False")


def test_the_collector_is_tuned_for_the_run_and_put_back(cluster: Cluster) -> None:
    """connect() freezes what Dask made and raises the first generation's threshold while the
    run lasts; afterwards, and after a failed connection, the collector is as it was; with
    objects frozen already it is left alone."""
    import gc

    from pyverity.cluster.connect import ClusterError, connect, parse_target

    before = gc.get_threshold()
    assert gc.isenabled()
    with connect(parse_target(cluster.address)) as client:
        assert client.status == "running"
        assert gc.isenabled()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] >= 10_000
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == (before, 0, True)
    with (
        pytest.raises(ClusterError, match="no TLS CA"),
        connect(parse_target(f"tls://127.0.0.1:{_port()}")),
    ):
        pass  # refused once Dask is imported, before connecting
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == (before, 0, True)
    gc.freeze()  # someone else's: left alone (unfreeze would thaw it)
    try:
        frozen = gc.get_freeze_count()
        with connect(parse_target(cluster.address)):
            assert gc.get_threshold() == before
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_task_that_raises_is_not_a_lost_scheduler(cluster: Cluster) -> None:
    from pyverity.cluster.connect import ClusterError
    from pyverity.cluster.engine import Engine

    with cluster.client() as client:
        engine: Engine[str, int] = Engine(client, int)  # int("x") raises on the worker
        with pytest.raises(ClusterError) as caught:
            list(engine.run(["x"]))
    text = caught.value.message
    assert text == (
        f"a task failed on a worker of {cluster.address}: ValueError: invalid literal for"
        " int() with base 10: 'x'"
    )


def test_tls_with_certificates(tmp_path: Path) -> None:
    pki = _pki(tmp_path / "pki")
    c = Cluster(tmp_path, 1, pki=pki)
    try:
        c.wait_workers(1)
        key, cert = _keys(tmp_path, "rsa")
        tree = _tree(tmp_path / "t", files=12)
        copy = tmp_path / "copy"
        shutil.copytree(tree, copy, symlinks=True)
        sign = ["sign", "-r", "--xattr-user", "--key", key, "--cert", cert]
        assert _run(*sign, tree).returncode == 0
        mine = ["--tls-ca", pki / "ca.pem", "--tls-cert", pki / "client.pem",
                "--tls-key", pki / "client-key.pem"]  # fmt: skip
        r = _run(*sign, copy, "--cluster", c.address, *mine)
        assert r.returncode == 0, r.stderr
        assert len(_attrs(copy)) == 13
        assert _attrs(copy) == _attrs(tree)  # RSA: the same bytes as the local run
        keyring = tmp_path / "kr"
        keyring.mkdir()
        shutil.copy(cert, keyring)
        verify = ["verify", "-r", "--xattr-user", "--keyring", keyring, copy, "--json"]
        v = _run(*verify, "--cluster", c.address, *mine)
        assert v.returncode == 0, v.stdout + v.stderr
        assert v.stdout.count('"ok": true') == 13
        # Dask's own TLS settings instead of the flags
        env = {**os.environ, "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(pki / "ca.pem"),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(pki / "client.pem"),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(pki / "client-key.pem")}  # fmt: skip
        v = _run(*verify, "--cluster", c.address, env=env)
        assert v.returncode == 0, v.stdout + v.stderr
        assert v.stdout.count('"ok": true') == 13
        manifest = ["manifest", "create", "--key", key, "--cert", cert, "--created", CREATED,
                    "--name", "t", tree]  # fmt: skip
        assert _run(*manifest, "-o", tmp_path / "local.m").returncode == 0
        m = _run(*manifest, "-o", tmp_path / "tls.m", "--cluster", c.address, *mine)
        assert m.returncode == 0, m.stderr
        assert (tmp_path / "tls.m").read_bytes() == (tmp_path / "local.m").read_bytes()

        def refused(*tls: str | Path) -> str:
            r = _run("verify", "-r", copy, "--cluster", c.address, *tls, timeout=60)
            assert r.returncode == 1, r.stdout + r.stderr
            assert r.stdout == ""
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 2, r.stderr  # the error and its remedy
            return lines[0]

        # a client certificate from another CA: the scheduler refuses it
        stranger = ["--tls-ca", pki / "ca.pem", "--tls-cert", pki / "stranger.pem",
                    "--tls-key", pki / "stranger-key.pem"]  # fmt: skip
        assert refused(*stranger).startswith(f"ERROR: TLS with the scheduler at {c.address} failed")
        # a CA that did not sign the scheduler's certificate: this client refuses it
        other = ["--tls-ca", pki / "other-ca.pem", "--tls-cert", pki / "client.pem",
                 "--tls-key", pki / "client-key.pem"]  # fmt: skip
        assert refused(*other).startswith(
            f"ERROR: the scheduler at {c.address} has a certificate the TLS CA given did not sign"
        )
        # no certificate at all: refused before connecting
        assert refused() == f"ERROR: --cluster {c.address}: no TLS CA or client certificate given"
    finally:
        c.close()


def test_tls_to_a_plain_scheduler_is_one_line(cluster: Cluster, tmp_path: Path) -> None:
    pki = _pki(tmp_path / "pki")
    address = cluster.address.replace("tcp://", "tls://")
    r = _run("verify", "-r", tmp_path, "--cluster", address, "--tls-ca", pki / "ca.pem",
             "--tls-cert", pki / "client.pem", "--tls-key", pki / "client-key.pem",
             timeout=60)  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"ERROR: TLS with the scheduler at {address} failed (")
    assert "--protocol tls" in lines[1]
