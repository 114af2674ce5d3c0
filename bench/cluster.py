"""Benchmark: the bulk verbs on a Dask cluster against the local pool at the same core count.

    python bench/cluster.py [--dir D] [--files 10000] [--big-gib 4] [--workers 1,2]

For each worker count N: a ``dask scheduler`` and N ``dask worker`` processes (one thread each)
on 127.0.0.1, then

* ``manifest create`` of 10,000 small files (1-16 KiB): ``--jobs N`` against ``--cluster``;
* ``sign -r --sigfile`` of one big file (default 4 GiB): ``--jobs N`` against ``--cluster``
  (the tree's subtrees spread over the workers);

and prints the times, the ratio cluster/local (target <= 1.15), the big file's GB/s per
worker, and the client's v3 signatures per second (RSA-2048, in this process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dask() -> str:
    return shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"


def _cluster(n: int, log: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    import distributed

    address = f"tcp://127.0.0.1:{_port()}"
    out = log.open("ab")
    scheduler = [_dask(), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
    scheduler += ["--dashboard-address", ":0", "--no-show"]
    worker = [_dask(), "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
    worker += ["--no-dashboard"]
    procs = [subprocess.Popen(scheduler, stdout=out, stderr=out)]
    procs += [subprocess.Popen(worker, stdout=out, stderr=out) for _ in range(n)]
    deadline = time.monotonic() + 60
    while True:
        try:
            with distributed.Client(address, timeout=2) as c:
                c.wait_for_workers(n, timeout=60)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
        else:
            return address, procs
            time.sleep(0.2)


def _run(*args: str | Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyverity.cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t


def _signatures_per_second(key: Path) -> float:
    from pyverity.keys import load_signer, sign_v3

    signer = load_signer(str(key), cert=str(key.with_name("c.pem")))
    n = 300
    t = time.perf_counter()
    for i in range(n):
        sign_v3(signer, 1, i.to_bytes(32, "little"))  # fs-verity sha256
    return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--big-gib", type=float, default=4.0)
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="pyverity-bench-cluster-"))
    small, big_dir = base / "small", base / "big"
    key, cert = base / "k.pem", base / "c.pem"
    if not small.exists():
        small.mkdir(parents=True)
        for i in range(a.files):
            sub = small / f"{i // 1000:02d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}").write_bytes(os.urandom(1024 + (i * 7919) % 15360))
        big_dir.mkdir()
        block = os.urandom(1 << 20)
        with (big_dir / "big").open("wb") as f:
            for _ in range(int(a.big_gib * 1024)):
                f.write(block)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", cert, "-subj", "/CN=bench", "-days", "2"],
                       check=True, capture_output=True)  # fmt: skip
    big = big_dir / "big"
    size = big.stat().st_size
    sps = _signatures_per_second(key)
    print(f"client: {sps:.0f} v3 signatures/s (RSA-2048)")
    for n in (int(x) for x in a.workers.split(",")):
        address, procs = _cluster(n, base / "dask.log")
        try:
            man = ["manifest", "create", "--key", key, "--cert", cert, small]
            local = _run(*man, "-o", base / "m.local", "--jobs", n)
            remote = _run(*man, "-o", base / "m.cluster", "--cluster", address)
            same = (base / "m.local").read_bytes().split(b"\n")[1:-2] == (
                base / "m.cluster"
            ).read_bytes().split(b"\n")[1:-2]
            print(
                f"{n} worker(s): manifest create {a.files} files: local --jobs {n} {local:.2f} s,"
                f" cluster {remote:.2f} s, ratio {remote / local:.2f}, entries equal: {same}"
            )
            sign = ["sign", "-r", "--sigfile", "--key", key, "--cert", cert, big_dir]
            local = _run(*sign, "--jobs", n)
            (big_dir / "big.sig").unlink(missing_ok=True)
            remote = _run(*sign, "--cluster", address)
            print(
                f"{n} worker(s): sign -r {size / 2**30:.1f} GiB file: local --jobs {n}"
                f" {local:.2f} s ({size / local / 1e9:.2f} GB/s), cluster {remote:.2f} s"
                f" ({size / remote / 1e9 / n:.2f} GB/s per worker), ratio {remote / local:.2f}"
            )
            (big_dir / "big.sig").unlink(missing_ok=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
