"""Attestation at scale: a measurement list checked against an allowlist, by hand (not CI).

    .venv/bin/python bench/allowlist.py [--entries 1000000] [--scratch DIR] [--keep]

Builds, in ``--scratch`` (default a temp dir in /var/tmp):

* a signed pyverity manifest of ``--entries`` files (synthetic entries: a path under
  ``srv/app/dNNNN/``, a sha256 and an fs-verity digest derived from the index; no tree on disk);
* ``pyverity manifest export --format keylime`` of it: a runtime policy with as many paths;
* two measurement lists of ``--entries`` records each, every file once, in an order unlike the
  policy's (index × a large odd number mod N, so lookups are not sequential), each with its
  ``LIST.pcrs``: ``ima-ng`` records (sha256 file hashes) and ``ima-ngv2`` records (fs-verity
  digests).

Then runs, each in its own process with stdout to /dev/null:

* ``export``: the policy written from the manifest;
* ``verify``: ``log verify LIST`` (template hashes and replay only), the baseline;
* ``policy``: ``log verify --allowlist POLICY LIST`` (ima-ng list);
* ``manifest``: ``log verify --allowlist MANIFEST --keyring R LIST`` (ima-ng list);
* ``manifest v2``: the same with the ``ima-ngv2`` list (verity digests, which only a manifest
  holds).

For each: wall and CPU time, entries per CPU-second (on a shared machine wall time measures the
load), peak RSS (``wait4``'s ``ru_maxrss``, the command's own) and the exit code, which must
be 0: every entry is allowed. Run once at a tenth of the size first (``--no-small`` skips it), it
prints the ratio of peak RSS between the two sizes: near 1 means memory does not grow with the
list or the policy.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyverity.format.measurelist import DigestField, MeasurementRecord
from pyverity.format.params import TreeParams
from pyverity.keys import load_signer
from pyverity.keys.generate import generate_key
from pyverity.manifest.create import sign_bytes
from pyverity.manifest.model import FileEntry, Header, SignatureLine, format_created
from pyverity.measure.files import pcr_path
from pyverity.measure.pcr import PcrReplay

MIB = 1 << 20
PYVERITY = [sys.executable, "-m", "pyverity.cli"]
#: Visits every index once in an order far from sorted (odd, so coprime with N = 10^k).
STRIDE = 2_654_435_761


def _path(i: int) -> bytes:
    return f"srv/app/d{i // 1000:04d}/lib-{i:07d}.so".encode()


def _file_hash(i: int) -> bytes:
    return hashlib.sha256(b"file %d" % i).digest()


def _verity(i: int) -> bytes:
    return hashlib.sha256(b"verity %d" % i).digest()


def write_manifest(out: Path, n: int, keys: Path) -> Path:
    """A signed manifest of ``n`` synthetic files; the keyring directory that verifies it."""
    key = generate_key(keys, "rsa", bits=2048)
    ring = keys / "ring"
    ring.mkdir()
    shutil.copy(key.der_path, ring / "ima.der")
    signer = load_signer(key.key_path, cert=key.der_path)
    header = Header(
        name="bench",
        serial=1,
        created=format_created(datetime.datetime.now(datetime.UTC)),
        params=TreeParams(),  # sha256, 4096-byte blocks, no salt
        file_hashes=("sha256",),
        keyid=signer.keyid,
        entries=n,
        skipped=0,
        signatures=None,
    )
    h = hashlib.sha256()
    with out.open("wb", buffering=4 * MIB) as f:
        for i in range(-1, n):
            line = (
                header.to_line()
                if i < 0
                else FileEntry(_path(i), 4096, 0o644, _verity(i), (("sha256", _file_hash(i)),))
                .to_line()
            )  # fmt: skip
            h.update(line)
            f.write(line)
        digest = h.digest()
        f.write(SignatureLine(signer.keyid, digest, sign_bytes(signer, digest)).to_line())
    return ring


def write_list(path: Path, n: int, template: str) -> None:
    """``n`` records, one per file, in stride order, and ``LIST.pcrs``."""
    replay = PcrReplay()
    with path.open("wb", buffering=4 * MIB) as f:
        for k in range(n):
            i = k * STRIDE % n
            if template == "ima-ng":
                digest = DigestField("sha256", _file_hash(i))
            else:
                digest = DigestField("sha256", _verity(i), "verity")
            record = MeasurementRecord.for_file(template, digest, "/" + _path(i).decode())
            blob = record.to_bytes()
            f.write(blob)
            replay.extend(record, size=len(blob))
    pcr_path(path).write_text(replay.values().to_json())


def run(argv: list[str], out: Path | None = None) -> dict[str, float]:
    """Wall s, CPU s, exit code and peak RSS (MiB) of ``pyverity ARGV``."""
    load = os.getloadavg()[0]
    with open(out or os.devnull, "wb") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*PYVERITY, *argv], stdout=sink, stderr=subprocess.PIPE)
        err = proc.stderr.read().decode() if proc.stderr else ""
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(f"  FAILED ({rc}): pyverity {' '.join(argv)}: {err.strip()[:500]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rc": rc,
        "rss": usage.ru_maxrss / 1024,
        "load": load,
    }


def _line(what: str, n: int, r: dict[str, float]) -> None:
    print(
        f"  {what:<12} {r['wall']:7.1f} s ({r['cpu']:6.1f} s CPU)"
        f"  {n / r['cpu']:9,.0f} entries/CPU-s"
        f"  peak RSS {r['rss']:6.1f} MiB  exit {r['rc']:.0f}  (load {r['load']:.2f})",
        flush=True,
    )


def one_size(scratch: Path, n: int) -> dict[str, dict[str, float]]:
    scratch.mkdir()
    t0 = time.perf_counter()
    manifest = scratch / "app.manifest"
    ring = write_manifest(manifest, n, scratch / "keys")
    lists = {t: scratch / f"list-{t}" for t in ("ima-ng", "ima-ngv2")}
    for template, path in lists.items():
        write_list(path, n, template)
    sizes = ", ".join(
        f"{p.name} {p.stat().st_size / MIB:.0f} MiB" for p in (manifest, *lists.values())
    )
    print(f"{n:,} entries: generated {sizes} in {time.perf_counter() - t0:.1f} s", flush=True)
    policy = scratch / "policy.json"
    results: dict[str, dict[str, float]] = {}
    export = ["manifest", "export", "--format", "keylime", "--keyring", str(ring)]
    results["export"] = run([*export, "-o", str(policy), str(manifest)])
    print(f"  (policy {policy.stat().st_size / MIB:.0f} MiB, {n:,} paths)")
    ng, v2 = str(lists["ima-ng"]), str(lists["ima-ngv2"])
    with_manifest = ["--allowlist", str(manifest), "--keyring", str(ring)]
    runs = {
        "verify": ["log", "verify", ng],
        "policy": ["log", "verify", "--allowlist", str(policy), ng],
        "manifest": ["log", "verify", *with_manifest, ng],
        "manifest v2": ["log", "verify", *with_manifest, v2],
    }
    _line("export", n, results["export"])
    for what, argv in runs.items():
        results[what] = run(argv)
        _line(what, n, results[what])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--no-small", action="store_true", help="skip the run at a tenth the size")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(ln for ln in info if ln.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    print(
        f"# {' '.join(sys.argv)}; CPU {cpu} x{os.cpu_count()}; Python {platform.python_version()}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="pyverity-bench-allowlist-", dir=args.scratch))
    try:
        small = None if args.no_small else one_size(scratch / "small", max(args.entries // 10, 1))
        big = one_size(scratch / "big", args.entries)
        if small is not None:
            print("peak RSS ratio, 10x the entries and paths (1.0: memory does not grow):")
            print("  " + "  ".join(f"{k} {big[k]['rss'] / small[k]['rss']:.2f}" for k in big))
        print("allowlist cost per entry over the baseline verify (CPU us):")
        base = big["verify"]["cpu"]
        print(
            "  "
            + "  ".join(
                f"{k} {(big[k]['cpu'] - base) / args.entries * 1e6:.1f}"
                for k in ("policy", "manifest", "manifest v2")
            )
        )
        if any(r["rc"] for r in big.values()):
            raise SystemExit("a run failed")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
