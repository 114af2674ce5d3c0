"""Benchmark: the bulk verbs on a Dask cluster against the local pool at the same core count.

    python bench/cluster.py [--dir D] [--files 10000] [--big-gib 4] [--workers 1,2] [--repeat 3]

For each worker count N, a ``dask scheduler`` and N ``dask worker --nthreads 1 --no-nanny``
processes on 127.0.0.1, then, for

* (a) ``--files`` files of 16-64 KiB and (b) one ``--big-gib`` GiB file (page-cached),
* ``manifest create`` and ``sign -r`` (attributes written, RSA-2048 key),

the wall time of ``--jobs N`` and of ``--cluster tcp://…``, run interleaved (local, cluster,
local, cluster, ...), the best of ``--repeat`` each, the ratio cluster/local against the target
(at most 1.15), the 1-minute load average when each best run ended and the CPU seconds of
each best run (the command's, with its children; on the cluster also the scheduler's and each
worker's: on one shared machine the cluster is CPU-bound, so this says where its time went).
It checks that both produce the same bytes (manifest entries; the attributes of a sample of
files).

Then the throughput model of docs/cluster.md, measured in this process: one core's tree hashing
(what a worker does with a range of a big file) and whole-file SHA-256, the client's v3
signatures per second (RSA-2048, RSA-4096, ECDSA P-256), the client's own per-file cost on a
cluster run (listing stat, cutting, pickling, results, the stat check: everything but hashing
and signing), and the fixed cost of a cluster run (importing distributed, connecting, the first
task), from which it derives the run length above which the fixed cost is under 15 %.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TARGET = 1.15


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dask() -> str:
    return shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"


def _load() -> float:
    return os.getloadavg()[0]


def cpu() -> str:
    """``lscpu``'s model name and /proc/cpuinfo's family and model (the name alone can be
    just "AMD EPYC" in a VM)."""
    name = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                     if ln.startswith("Model name")), "")  # fmt: skip
    except OSError:
        pass
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    fam, model = fields.get("cpu family", "?"), fields.get("model", "?")
    fam_hex = f"{int(fam):#x}" if fam.isdigit() else fam
    model_hex = f"{int(model):#x}" if model.isdigit() else model
    flags = fields.get("flags", "").split()
    sha = "SHA-NI" if "sha_ni" in flags else "no SHA-NI"
    return (
        f"{name or platform.processor()} (family {fam_hex}, model {model_hex}), {sha},"
        f" {len(os.sched_getaffinity(0))} CPUs"
    )


class Cluster:
    """A ``dask scheduler`` and ``n`` ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, n: int, log: Path) -> None:
        import distributed

        port = _port()
        self.address = f"tcp://127.0.0.1:{port}"
        out = log.open("ab")
        scheduler = [_dask(), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        scheduler += ["--dashboard-address", ":0", "--no-show"]
        worker = [_dask(), "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1"]
        worker += ["--no-nanny", "--no-dashboard"]
        self.procs = [subprocess.Popen(scheduler, stdout=out, stderr=out)]
        self.procs += [subprocess.Popen(worker, stdout=out, stderr=out) for _ in range(n)]
        deadline = time.monotonic() + 60
        while True:
            try:
                with distributed.Client(self.address, timeout=2) as c:
                    c.wait_for_workers(n, timeout=60)
                    return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.2)

    def cpu(self) -> list[float]:
        """CPU seconds so far of the scheduler, then of each worker (/proc/PID/stat)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)  # utime + stime
        return out

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _run(*args: str | Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children) of one pyverity run."""
    before = os.times()
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pyverity.cli", *map(str, args)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t
    after = os.times()
    if done.returncode != 0:
        sys.stderr.buffer.write(done.stderr)
        raise SystemExit(f"pyverity {' '.join(map(str, args))}: exit {done.returncode}")
    cpu = after.children_user + after.children_system
    return elapsed, cpu - before.children_user - before.children_system


def _attrs(paths: list[Path]) -> list[tuple[bytes, bytes]]:
    return [(os.getxattr(p, "security.verity"), os.getxattr(p, "security.ima")) for p in paths]


def _entries(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[1:-2]  # without the header and the signature line


def _make(base: Path, files: int, big_gib: float) -> None:
    small, big = base / "small", base / "big"
    if not small.exists():
        tmp = base / "small.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(files):
            sub = tmp / f"{i // 1000:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}").write_bytes(os.urandom(16384 + (i * 7919) % 49153))  # 16-64 KiB
        tmp.rename(small)
    if not big.exists():
        tmp = base / "big.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        block = os.urandom(1 << 20)
        with (tmp / "big").open("wb") as f:
            for _ in range(int(big_gib * 1024)):
                f.write(block)
        tmp.rename(big)
    for bits in ("rsa:2048", "rsa:4096", "ec"):
        name = bits.replace(":", "")
        if (base / f"{name}.pem").exists():
            continue
        extra = ["-pkeyopt", "ec_paramgen_curve:P-256"] if bits == "ec" else []
        subprocess.run(["openssl", "req", "-x509", "-newkey", bits, *extra, "-nodes", "-keyout",
                        base / f"{name}-key.pem", "-out", base / f"{name}.pem", "-subj",
                        "/CN=bench", "-days", "2"], check=True, capture_output=True)  # fmt: skip


def _cache(path: Path) -> None:
    """Read a file once so that it is in the page cache."""
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


# -- the throughput model, measured in this process ------------------------------------------


def signatures_per_second(base: Path) -> dict[str, float]:
    from pyverity.keys import load_signer, sign_v3

    out = {}
    for name, label in (("rsa2048", "RSA-2048"), ("rsa4096", "RSA-4096"), ("ec", "ECDSA P-256")):
        signer = load_signer(str(base / f"{name}-key.pem"), cert=str(base / f"{name}.pem"))
        best = 0.0
        for _ in range(3):
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < 0.5:
                sign_v3(signer, 1, n.to_bytes(32, "little"))  # fs-verity sha256
                n += 1
            best = max(best, n / (time.perf_counter() - t))
        out[label] = best
    return out


def hash_rates(big: Path, nbytes: int = 1 << 30) -> tuple[float, float]:
    """One core's GB/s: the tree of a range (:func:`hash_subtrees`, a worker's range task)
    and the whole-file SHA-256 (:func:`file_digests`, sequential), best of three."""
    from pyverity.cluster.tasks import file_digests
    from pyverity.format.params import TreeParams
    from pyverity.hashing.subtree import hash_subtrees, subtree_height

    params = TreeParams()
    nbytes = min(nbytes, big.stat().st_size)
    height = subtree_height(params, 64 << 20)
    tree, whole = 0.0, 0.0
    fd = os.open(big, os.O_RDONLY)
    try:
        for _ in range(3):
            t = time.perf_counter()
            hash_subtrees(fd, params, 0, nbytes, height)
            tree = max(tree, nbytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            file_digests(fd, ("sha256",), nbytes)
            whole = max(whole, nbytes / (time.perf_counter() - t) / 1e9)
    finally:
        os.close(fd)
    return tree, whole


def client_per_file(small: Path) -> float:
    """Seconds of this process's CPU per file for the cluster client's own work, with the
    workers' replies replayed (computed once beforehand) and pickled both ways as on the wire.
    """
    from pyverity.cluster.bulk import _want
    from pyverity.cluster.digests import Digester
    from pyverity.cluster.tasks import Job, Reply, load_replies, pack_replies, run_unit
    from pyverity.format.params import TreeParams
    from pyverity.fs.openfile import FileRef

    root = str(small)
    st = small.stat()
    rels = sorted(str(p.relative_to(small)) for p in small.rglob("*") if p.is_file())
    replies: dict[tuple[int, int], list[Reply]] = {}

    class Replay:
        def run(self, units: Iterator[list[Job]], hold: object = None) -> Iterator[object]:
            for unit in units:
                key = (unit[0].file, len(unit))
                if key not in replies:
                    replies[key] = run_unit(unit)
                pickle.loads(pickle.dumps(unit, protocol=5))  # noqa: S301 - our own bytes
                yield unit, load_replies(pack_replies(replies[key]))  # as on the wire

    params = TreeParams()

    def once() -> float:
        refs = [FileRef(root, r, (st.st_dev, st.st_ino)) for r in rels]
        t = time.process_time()
        wants = (_want(ref, params=params, hashes=("sha256",)) for ref in refs)
        for got in Digester(Replay()).run(wants):
            assert got.ok, got.error
        return (time.process_time() - t) / len(rels)

    once()
    return min(once() for _ in range(3))


def worker_per_file(small: Path) -> tuple[float, float]:
    """(seconds, bytes) per small file of a worker's task (:func:`run_unit`, tree and sha256 in
    one read, as ``manifest create`` asks), in this process, best of three."""
    from pyverity.cluster.plan import Cut, jobs_for
    from pyverity.cluster.tasks import run_unit
    from pyverity.format.params import TreeParams

    paths = sorted(p for p in small.rglob("*") if p.is_file())[:2048]
    jobs = [
        jobs_for(i, str(p), p.stat().st_size, Cut(), params=TreeParams(), hashes=("sha256",))[0]
        for i, p in enumerate(paths)
    ]
    total = sum(j.size for j in jobs)
    best = float("inf")
    for _ in range(4):
        t = time.perf_counter()
        run_unit(jobs)
        best = min(best, time.perf_counter() - t)
    return best / len(jobs), total / len(jobs)


_PHASES = """
import gc, sys, time
t0 = time.perf_counter()
gc.disable()  # as connect() does while Dask is imported
import distributed
gc.enable()
t1 = time.perf_counter()
from pyverity.cluster.connect import connect, parse_target
from pyverity.cluster.tasks import Opaque, run_opaque, run_packed
with connect(parse_target(sys.argv[1])) as c:
    t2 = time.perf_counter()
    c.submit(run_opaque, run_packed, Opaque([]), pure=False).result()
    t3 = time.perf_counter()
    for _ in range(20):
        c.submit(run_opaque, run_packed, Opaque([]), pure=False).result()
    t4 = time.perf_counter()
    cpu = time.process_time()
    c.gather([c.submit(run_opaque, run_packed, Opaque([]), pure=False) for _ in range(200)])
    cpu = time.process_time() - cpu
print(t1 - t0, t2 - t1, t3 - t2, (t4 - t3) / 20, cpu / 200)
"""


@dataclass(frozen=True)
class Fixed:
    """A cluster run's cost that does not depend on the files (seconds, best of the runs)."""

    imports: float  # import distributed
    connect: float
    fresh: float  # the first task on workers that never ran one (imports pyverity there)
    warm: float  # the first task of a later run
    trip: float  # one empty task's round trip, later
    cpu: float  # the client's CPU per task, 200 in flight

    @property
    def total(self) -> float:
        return self.imports + self.connect + self.warm


def fixed_cost(address: str, repeat: int) -> Fixed:
    """Phases of a client that runs nothing but empty tasks (the first run on fresh workers)."""
    runs = []
    for _ in range(max(2, repeat)):
        out = subprocess.run([sys.executable, "-c", _PHASES, address], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        runs.append([float(x) for x in out.split()])
    later = runs[1:]
    return Fixed(
        min(r[0] for r in runs),
        min(r[1] for r in runs),
        runs[0][2],
        min(r[2] for r in later),
        min(r[3] for r in later),
        min(r[4] for r in later),
    )


Row = tuple[str, int, float, float, float, float]
Case = tuple[str, str, Path]


def _cases(base: Path, files: int, size: int) -> list[Case]:
    gib = f"one {size / 2**30:g} GiB file"
    return [
        (f"manifest create, {files:,} files", "manifest", base / "small"),
        (f"manifest create, {gib}", "manifest", base / "big"),
        (f"sign -r, {files:,} files", "sign", base / "small"),
        (f"sign -r, {gib}", "sign", base / "big"),
    ]


def _measure(
    case: Case, n: int, cluster: Cluster, base: Path, sample: list[Path], *, repeat: int
) -> Row | None:
    """Local and cluster runs of ``case``, interleaved; the best of each (None: bytes differ),
    with the CPU seconds of the best runs: the command's (the local pool's processes are its
    children), and the scheduler's and the workers' during the cluster's."""
    label, verb, tree = case
    key, cert = base / "rsa2048-key.pem", base / "rsa2048.pem"
    out = {"local": base / "m.local", "cluster": base / "m.cluster"}
    if verb == "manifest":
        args: list[str | Path] = ["manifest", "create", "--key", key, "--cert", cert, tree]
    else:
        args = ["sign", "-r", "--key", key, "--cert", cert, tree]
    best = {"local": (float("inf"), 0.0), "cluster": (float("inf"), 0.0)}
    cpus: dict[str, list[float]] = {}
    seen: dict[str, object] = {}
    for _ in range(repeat):
        for mode in ("local", "cluster"):
            extra: list[str | Path] = ["--jobs", str(n)]
            if mode == "cluster":
                extra = ["--cluster", cluster.address]
            if verb == "manifest":
                extra += ["-o", out[mode]]
            procs = cluster.cpu() if mode == "cluster" else []
            t, cpu = _run(*args, *extra)
            if t < best[mode][0]:
                best[mode] = (t, _load())
                after = cluster.cpu() if mode == "cluster" else []
                cpus[mode] = [cpu] + [b - a for a, b in zip(procs, after, strict=True)]
            if verb == "manifest":
                seen[mode] = _entries(out[mode])
            else:
                seen[mode] = _attrs([p for p in sample if p.is_relative_to(tree)])
    if seen["local"] != seen["cluster"]:
        print(f"!! {label}, N = {n}: the cluster's bytes differ from the local run's")
        return None
    (lt, ll), (ct, cl) = best["local"], best["cluster"]
    client, sched, *workers = cpus["cluster"]
    print(f"  N = {n}: {label}: local {lt:.2f} s (load {ll:.2f}), cluster {ct:.2f} s"
          f" (load {cl:.2f}), ratio {ct / lt:.2f}; CPU s of the best runs: local"
          f" {cpus['local'][0]:.2f}, cluster {client + sched + sum(workers):.2f} (client"
          f" {client:.2f}, scheduler {sched:.2f}, workers"
          f" {' + '.join(f'{w:.2f}' for w in workers)})", flush=True)  # fmt: skip
    return label, n, lt, ct, ll, cl


def _report(rows: list[Row], fixed: dict[int, Fixed], size: int) -> None:
    print()
    print(f"| case | N | local `--jobs N` | cluster, N workers | cluster / local"
          f" | ≤ {TARGET:.2f}? | load (local / cluster) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, n, lt, ct, ll, cl in rows:
        rate = f" ({size / lt / 1e9:.2f} GB/s)" if "GiB" in label else ""
        crate = f" ({size / ct / 1e9:.2f} GB/s)" if "GiB" in label else ""
        ok = "yes" if ct / lt <= TARGET else "no"
        print(f"| {label} | {n} | {lt:.2f} s{rate} | {ct:.2f} s{crate} | {ct / lt:.2f} | {ok}"
              f" | {ll:.2f} / {cl:.2f} |")  # fmt: skip
    print()
    for n, f in fixed.items():
        print(f"fixed cost of a cluster run, N = {n}: import distributed {f.imports:.2f} s,"
              f" connect {f.connect * 1e3:.0f} ms, first task {f.warm * 1e3:.0f} ms"
              f" ({f.fresh * 1e3:.0f} ms on fresh workers): {f.total:.2f} s; then"
              f" {f.trip * 1e3:.1f} ms per task round trip, {f.cpu * 1e3:.2f} ms of the"
              " client's CPU per task")  # fmt: skip
    print()
    print("Without the fixed cost F, cluster / local = (cluster - F) / local; the overhead is")
    print("under 15 % once the local run takes longer than F / (1.15 - that):")
    for label, n, lt, ct, _, _ in rows:
        f = fixed[n].total
        steady = (ct - f) / lt
        if steady >= TARGET:
            when = "never at this file size (the per-file or per-byte cost alone is over 15 %)"
        else:
            t = f / (TARGET - steady)
            scale = t / lt  # the local time taken as proportional to the work
            if "GiB" in label:
                what = f"{scale * size / 2**30:.1f} GiB"
            else:
                what = f"{scale * int(label.split()[-2].replace(',', '')):,.0f} such files"
            when = f"local runs over {t:.1f} s, about {what}"
        print(f"  {label}, N = {n}: {steady:.2f} without F; under 15 % for {when}")


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None, help="where the trees are made (kept for reruns)")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--big-gib", type=float, default=4.0)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="pyverity-bench-cluster-"))
    _make(base, a.files, a.big_gib)
    small, big_dir = base / "small", base / "big"
    big = big_dir / "big"
    size = big.stat().st_size
    _cache(big)
    sample = [*sorted(small.rglob("f*"))[:: max(1, a.files // 100)], big]

    print(f"data: {base} (kept: delete it, or give it to --dir to run again)")
    print(f"CPU: {cpu()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[Row] = []
    fixed: dict[int, Fixed] = {}
    for n in (int(x) for x in a.workers.split(",")):
        cluster = Cluster(n, base / "dask.log")
        try:
            fixed[n] = fixed_cost(cluster.address, a.repeat)  # the first on fresh workers
            for case in _cases(base, a.files, size):
                row = _measure(case, n, cluster, base, sample, repeat=a.repeat)
                if row is None:
                    return 1
                rows.append(row)
        finally:
            cluster.close()
    _report(rows, fixed, size)
    tree, whole = hash_rates(big)
    print(f"one core (a worker): tree of a range {tree:.2f} GB/s (sha256, 4 KiB blocks),"
          f" whole-file sha256 {whole:.2f} GB/s (sequential)")  # fmt: skip
    w_file, w_bytes = worker_per_file(small)
    print(f"a worker per small file (tree + sha256 in one read, mean {w_bytes / 1024:.0f} KiB):"
          f" {w_file * 1e6:.0f} µs, {1 / w_file:,.0f} files/s")  # fmt: skip
    per_file = client_per_file(small)
    print(f"client's own work per file on a cluster run: {per_file * 1e6:.0f} µs of CPU"
          " (stat at listing, cut, pickle, results, stat check;"
          " no hashing, no signing)")  # fmt: skip
    sps = signatures_per_second(base)
    print("client's v3 signatures per second: "
          + ", ".join(f"{k} {v:,.0f}/s" for k, v in sps.items()))  # fmt: skip
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
