"""Run inside the test VM (host's Python over 9p, chrooted): kernel keyrings and dump-metadata.

``python guest_keys.py import RING CERT...``: the main boot's ECDSA certificates (see
:func:`import_certs`). ``python guest_keys.py DIR RESULTS``: the ``pyverity`` commands of
``tests/kernel/test_keys.py`` in this one process (an interpreter start costs seconds under
TCG), in this order:

1. ``key import`` of the file key's certificate into ``.ima`` (refused: none on Debian's
   kernels, or only CA-signed certificates where it exists), into a keyring restricted as
   ``.ima`` is (refused), into ``_ima`` (created), and of the token's certificates into
   ``%keyring:_ima``;
2. ``enable --kernel --signature`` of built-in signatures before and after ``key import
   --keyring .fs-verity``, and with a key never imported;
3. ``enable --kernel`` of two files, then ``pyverity dump-metadata`` and the host's ``fsverity
   dump_metadata`` (run as a subprocess) of each item of them and of a file with a built-in
   signature, whole and with ``--offset``/``--length``, written to ``RESULTS/dump/``;
4. under ``fs.verity.require_signatures=1``: the host's ``fsverity enable`` with the
   built-in signatures of ``test_keys.REQUIRED`` (and without one), ``pyverity measure`` and
   ``fsverity measure`` of each, and an unsigned ``pyverity enable --kernel`` (refused).

Each command's exit code, standard output and standard error go to ``RESULTS/keys.json``; the
IMA appraisal opens come afterwards, from the shell (see ``test_keys.guest_script``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from pyverity.cli import main as cli_main
from pyverity.keys import kernel_keyring as kk

#: dump-metadata runs: (name, file, item, extra options).
DUMPS = (
    ("dm-a.merkle_tree", "dm-a", "merkle_tree", ()),
    ("dm-a.descriptor", "dm-a", "descriptor", ()),
    ("dm-a.signature", "dm-a", "signature", ()),
    ("dm-a.tree-part", "dm-a", "merkle_tree", ("--offset", "4096", "--length", "5000")),
    ("dm-a.tree-past", "dm-a", "merkle_tree", ("--offset", "1000000", "--length", "10")),
    ("dm-b.merkle_tree", "dm-b", "merkle_tree", ()),
    ("dm-b.descriptor", "dm-b", "descriptor", ()),
    ("dm-b.desc-part", "dm-b", "descriptor", ("--offset", "8", "--length", "100")),
    ("bsig-good.signature", "bsig-good", "signature", ()),
    ("bsig-good.descriptor", "bsig-good", "descriptor", ()),
)


def cli(argv: list[str]) -> dict[str, object]:
    """Run ``pyverity ARGV`` here; its exit code, stdout (hex: may be binary) and stderr."""
    out = io.BytesIO()
    text = io.TextIOWrapper(out, write_through=True)
    err = io.StringIO()
    # pyverity's run() calls logging.basicConfig, which binds the stderr of the time: unbind
    # it, so that each command's warnings land in its own err.
    logging.root.handlers.clear()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
        text.flush()
    return {"rc": rc, "out": out.getvalue().hex(), "err": err.getvalue()}


def main(directory: str, results: str) -> None:
    d, r = Path(directory), Path(results)
    steps: dict[str, dict[str, object]] = {}

    def step(name: str, *argv: str) -> None:
        steps[name] = cli(list(argv))
        print(name, steps[name]["rc"], flush=True)

    step("import-.ima", "key", "import", str(d / "ima.der"), "--keyring", ".ima")
    # A keyring restricted as .ima is where it exists (signed by a built-in or secondary key).
    ring = kk.new_keyring("ima-restricted", kk.KEY_SPEC_USER_KEYRING)
    kk.restrict_keyring(ring, "asymmetric", "builtin_and_secondary_trusted")
    cert = str(d / "ima.der")
    step("import-restricted", "key", "import", cert, "--keyring", "%keyring:ima-restricted")
    step("import-_ima", "key", "import", str(d / "ima.der"), "--keyring", "_ima")
    step(
        "import-token-rsa", "key", "import", str(d / "token-rsa.der"), "--keyring", "%keyring:_ima"
    )
    step("import-token-ec", "key", "import", str(d / "token-ec.der"), "--keyring", "%keyring:_ima")
    sig = ("enable", "--kernel", "--signature")
    step("bsig-before", *sig, str(d / "bsig-before.sig"), str(d / "bsig-before"))
    step("import-.fs-verity", "key", "import", str(d / "ima.pem"), "--keyring", ".fs-verity")
    step("bsig-good", *sig, str(d / "bsig-good.sig"), str(d / "bsig-good"))
    step("bsig-other", *sig, str(d / "bsig-other.sig"), str(d / "bsig-other"))
    step("bsig-after", *sig, str(d / "bsig-before.sig"), str(d / "bsig-before"))
    step("enable-dm-a", "enable", "--kernel", str(d / "dm-a"))
    salt = ("--salt", "00112233445566778899aa")
    step("enable-dm-b", "enable", "--kernel", "--hash-alg", "sha512", *salt, str(d / "dm-b"))
    dump = r / "dump"
    dump.mkdir(exist_ok=True)
    for name, file, item, extra in DUMPS:
        path = str(d / file)
        ours = cli(["dump-metadata", item, path, *extra])
        (dump / f"{name}.pyverity").write_bytes(bytes.fromhex(str(ours["out"])))
        try:
            theirs = subprocess.run(
                ["fsverity", "dump_metadata", item, path, *extra], capture_output=True, check=False
            )
            rc, out, err = theirs.returncode, theirs.stdout, theirs.stderr.decode(errors="replace")
        except FileNotFoundError:  # the host has no fsverity (the test then skips, or fails in CI)
            rc, out, err = None, b"", "no fsverity"
        (dump / f"{name}.fsverity").write_bytes(out)
        steps[f"dump {name}"] = {
            "rc": ours["rc"],
            "err": ours["err"],
            "fsverity_rc": rc,
            "fsverity_err": err,
        }
        print("dump", name, ours["rc"], rc, flush=True)
    require_signatures(d, steps)
    (r / "keys.json").write_text(json.dumps(steps, indent=1))


def _tool(argv: list[str]) -> dict[str, object]:
    """A host tool's exit code, standard output and standard error (text)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # the host has no fsverity (the test then fails)
        return {"rc": None, "out": "", "err": f"no {argv[0]}"}
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}


SYSCTL = Path("/proc/sys/fs/verity/require_signatures")


def _sysctl(value: str) -> dict[str, object]:
    try:
        SYSCTL.write_text(value + "\n")
    except OSError as e:
        return {"rc": 1, "err": str(e)}
    return {"rc": 0, "err": "", "value": SYSCTL.read_text().strip()}


def require_signatures(d: Path, steps: dict[str, dict[str, object]]) -> None:
    """4. With fs.verity.require_signatures=1, the host's ``fsverity enable [--signature]``
    of the files of ``DIR/required.json`` (name -> its signature's file name, or null), then
    ``pyverity measure`` and ``fsverity measure`` of each, and an unsigned ``pyverity enable
    --kernel``; the sysctl is set back to 0 afterwards."""
    required: dict[str, str | None] = json.loads((d / "required.json").read_text())
    steps["require-on"] = _sysctl("1")
    for name, sig in required.items():
        path = str(d / name)
        signature = [f"--signature={d / sig}"] if sig else []
        steps[f"fsverity-{name}"] = _tool(["fsverity", "enable", *signature, path])
        steps[f"measure-{name}"] = cli(["measure", path])
        steps[f"fsverity-measure-{name}"] = _tool(["fsverity", "measure", path])
        print("require", name, steps[f"fsverity-{name}"]["rc"], flush=True)
    steps["require-pyverity-unsigned"] = cli(["enable", "--kernel", str(d / "dm-c")])
    steps["require-off"] = _sysctl("0")


def import_certs(ring: str, certs: list[str]) -> None:
    """``python guest_keys.py import RING CERT...``: ``pyverity key import`` of each into RING;
    one line each, as ``kernel.txt`` has them: ``import <name> <rc> <serial or stderr>``
    (the name: the file's stem after ``cert-``; stderr's lines joined by " | ")."""
    for cert in certs:
        r = cli(["key", "import", cert, "--keyring", ring])
        out = bytes.fromhex(str(r["out"])).decode().strip() if r["rc"] == 0 else ""
        err = " | ".join(str(r["err"]).splitlines())
        name = Path(cert).stem.removeprefix("cert-")
        print("import", name, r["rc"], out or err, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "import":
        import_certs(sys.argv[2], sys.argv[3:])
    else:
        main(*sys.argv[1:3])
