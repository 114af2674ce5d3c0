"""No traceback anywhere: every file argument of every subcommand, given a directory, a FIFO, an
unreadable file, /dev/zero or random bytes, ends in one ``ERROR:`` line and exit 1 or 2, fast.

Table-driven: each row is a command line with one slot, ``{X}``, for the hostile input; the
row's kinds say which inputs are hostile there (random bytes are a fine file to digest or sign,
so PATH slots leave them out). Runs are in-process (``pyverity.cli.main``) under a SIGALRM
watchdog, so a FIFO that blocks fails the test instead of hanging it; the unreadable case runs
in a child that drops CAP_DAC_OVERRIDE (as root with it, a mode 000 file is readable).
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from pyverity.cli import main

KINDS = ("dir", "fifo", "unreadable", "zero", "random")
NOT_RANDOM = ("dir", "fifo", "unreadable", "zero")
#: Directory slots (keyrings, trees): also a directory that cannot be read; an empty
#: directory is not hostile where it is a valid (empty) tree.
KEYRING = (*KINDS, "unreadable_dir")
TREE = ("fifo", "unreadable", "zero", "random", "unreadable_dir")
TIMEOUT = 10
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2

_SIGN = ["sign", "--xattr-user", "--key", "{key}", "--cert", "{cert}"]
_MOUNT = ["mount", "{src}", "{mnt}"]
_ZERO_DIGEST = "sha256:" + "00" * 32
_PASSPHRASE = "hostile-test"  # noqa: S105 - the test key's, not a secret


@dataclass(frozen=True)
class Case:
    """One file argument of one subcommand: ``argv`` with the slot ``{X}`` (or ``stdin``)."""

    name: str
    argv: list[str]
    kinds: tuple[str, ...] = KINDS
    stdin: str = ""
    #: A batch command: the failure is one report line on stdout naming the path, exit 1.
    report: bool = False
    #: Prints fsverity's exact error lines (``digest``), more than one ``ERROR:`` line.
    fsverity: bool = False


CASES = [
    Case("log-show", ["log", "show", "{X}"]),
    Case("log-show-json", ["log", "show", "--json", "{X}"]),
    Case("log-verify", ["log", "verify", "{X}"]),
    Case("log-pcrs", ["log", "pcrs", "{X}"]),
    Case("log-pcrs-replay", ["log", "pcrs", "--replay", "{X}"]),
    Case("log-verify-keyring", ["log", "verify", "--keyring", "{X}", "{list}"], KEYRING),
    Case("key-list", ["key", "list", "{X}"], KEYRING),
    Case(
        "key-generate-pass-file",
        ["key", "generate", "--out", "{out}", "--pass-file", "{X}"],
        ("dir", "unreadable", "zero"),  # a FIFO or random bytes are a passphrase
    ),
    Case("verify-keyring", ["verify", "--keyring", "{X}", "{file}"], KEYRING),
    Case("verify-path", ["verify", "{X}"], NOT_RANDOM, report=True),
    Case("policy-check", ["policy", "check", "{X}"]),
    Case("policy-check-path", ["policy", "check", "{policy}", "{X}"], NOT_RANDOM, report=True),
    Case("daemon-config", ["daemon", "--config", "{X}"]),
    Case("digest", ["digest", "{X}"], NOT_RANDOM, fsverity=True),
    Case("digest-out-tree", ["digest", "{file}", "--out-merkle-tree", "{X}"], ("dir",)),
    Case("measure", ["measure", "--xattr-user", "{X}"]),
    Case("dump-metadata", ["dump-metadata", "--xattr-user", "descriptor", "{X}"]),
    Case("enable", ["enable", "--xattr-user", "{X}"], NOT_RANDOM),
    Case("sign-key", ["sign", "--xattr-user", "--key", "{X}", "{file}"]),
    Case("sign-cert", ["sign", "--xattr-user", "--key", "{key}", "--cert", "{X}", "{file}"]),
    Case("sign-path", [*_SIGN, "{X}"], NOT_RANDOM),
    Case("sign-sigfile", [*_SIGN, "--sigfile", "{X}"], NOT_RANDOM),
    Case("sign-imasig", [*_SIGN, "--imasig", "{X}"], NOT_RANDOM),
    Case(
        "sign-pass-file",
        ["sign", "--xattr-user", "--key", "{enckey}", "--pass-file", "{X}", "{file}"],
    ),
    Case("sign-digest-key", ["sign-digest", "--key", "{X}"], stdin=f"{_ZERO_DIGEST} /x\n"),
    Case(
        "sign-digest-cert",
        ["sign-digest", "--key", "{key}", "--cert", "{X}"],
        stdin=f"{_ZERO_DIGEST} /x\n",
    ),
    Case(
        "apply-signatures-path",
        ["apply-signatures", "--xattr-user"],
        NOT_RANDOM,
        stdin=f"{_ZERO_DIGEST} {{X}} {{sig}}\n",
    ),
    Case(
        "apply-signatures-keyring",
        ["apply-signatures", "--xattr-user", "--keyring", "{X}"],
        stdin=f"{_ZERO_DIGEST} {{file}} {{sig}}\n",
    ),
    Case("mount-policy", [*_MOUNT, "--policy", "{X}"]),
    Case("mount-keyring", [*_MOUNT, "--keyring", "{X}"], KEYRING),
    # (root may mount a directory it cannot read: the mount applies the modes to every caller)
    Case("mount-source", ["mount", "{X}", "{mnt}"], ("fifo", "zero", "random")),
    Case("mount-log", [*_MOUNT, "--policy", "{policy}", "--log", "{X}"]),
    Case("manifest-verify", ["manifest", "verify", "--keyring", "{keyring}", "{X}"]),
    Case("manifest-verify-keyring", ["manifest", "verify", "--keyring", "{X}", "{file}"], KEYRING),
    Case(
        "manifest-create-dir",
        ["manifest", "create", "-o", "{out}/m2", "--key", "{key}", "{X}"],
        TREE,
    ),
    Case("manifest-create-key", ["manifest", "create", "-o", "{out}/m", "--key", "{X}", "{src}"]),
    Case("manifest-apply", ["manifest", "apply", "--keyring", "{keyring}", "{X}", "{src}"]),
]


def _stdin(text: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8")


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, str]]:
    """Valid inputs everywhere but the slot, in a directory ``nobody`` can traverse."""
    base = Path(tempfile.mkdtemp(prefix="pyverity-hostile-"))
    base.chmod(0o755)
    try:
        keys = base / "keys"
        assert main(["key", "generate", "--out", str(keys), "--name", "k"]) == 0
        os.environ["PYVERITY_TEST_PASS"] = _PASSPHRASE
        enc = base / "enc"
        assert main(["key", "generate", "--out", str(enc), "--pass-env", "PYVERITY_TEST_PASS"]) == 0
        keyring = base / "keyring"
        keyring.mkdir()
        certs = [p for p in keys.iterdir() if p.suffix in (".pem", ".der", ".crt")]
        cert = next(p for p in certs if "key" not in p.name)
        shutil.copy(cert, keyring / cert.name)
        key = next(p for p in keys.iterdir() if "key" in p.name)
        enckey = next(p for p in enc.iterdir() if "key" in p.name)
        src, mnt, out = base / "src", base / "mnt", base / "out"
        for d in (src, mnt, out):
            d.mkdir()
        (src / "f").write_bytes(b"hello\n")
        policy = base / "policy"
        policy.write_text("measure func=FILE_CHECK\n")
        lst = base / "list"
        lst.write_bytes(b"")
        file = base / "file"
        file.write_bytes(b"content\n")
        out_sig = _stdin("")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stdin", _stdin(f"{_ZERO_DIGEST} /x\n"))
            mp.setattr(sys, "stdout", out_sig)
            assert main(["sign-digest", "--key", str(key)]) == 0
        out_sig.flush()
        buffer = out_sig.buffer
        assert isinstance(buffer, io.BytesIO)
        sig = buffer.getvalue().decode().split()[-1]
        # the hostile inputs
        (base / "h-dir").mkdir()
        os.mkfifo(base / "h-fifo")
        (base / "h-random").write_bytes(os.urandom(1 << 16))
        unreadable = base / "h-unreadable"
        unreadable.write_bytes(os.urandom(4096))
        unreadable.chmod(0)
        unreadable_dir = base / "h-unreadable-dir"
        unreadable_dir.mkdir()
        (unreadable_dir / "c.pem").write_bytes(b"")
        for p in base.rglob("*"):
            if p != unreadable and not stat.S_ISFIFO(p.lstat().st_mode):
                p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else 0o644)
        unreadable_dir.chmod(0)
        yield {
            "base": str(base),
            "unreadable_dir": str(unreadable_dir),
            "key": str(key),
            "cert": str(cert),
            "enckey": str(enckey),
            "keyring": str(keyring),
            "src": str(src),
            "mnt": str(mnt),
            "out": str(out),
            "policy": str(policy),
            "list": str(lst),
            "file": str(file),
            "dir": str(base / "h-dir"),
            "fifo": str(base / "h-fifo"),
            "random": str(base / "h-random"),
            "unreadable": str(unreadable),
            "zero": "/dev/zero",
            "sig": sig,
        }
    finally:
        os.environ.pop("PYVERITY_TEST_PASS", None)
        if os.path.ismount(base / "mnt"):  # a case that mounted after all: fail, but clean up
            main(["umount", str(base / "mnt")])
        shutil.rmtree(base, ignore_errors=True)


def _fill(text: str, world: dict[str, str], kind: str) -> str:
    return text.format(**{**world, "X": world[kind]})


def _check(case: Case, argv: list[str], result: tuple[int, str, str], path: str) -> None:
    rc, out, err = result
    lines = err.splitlines()
    assert "Traceback" not in err + out, (argv, err)
    assert rc in (1, 2), (argv, rc, out, err)
    if case.report:
        assert rc == 1, (argv, rc)
        assert not err, (argv, err)
        failed = [
            ln
            for ln in out.splitlines()
            if ln.startswith(path) and ("ERROR" in ln or "FAILED" in ln)
        ]
        assert len(failed) == 1, (argv, out)
        return
    assert lines, (argv, "no error message")
    assert lines[0].startswith("ERROR: "), (argv, err)
    if case.fsverity or rc == 2:
        return  # fsverity's own error lines; a usage error adds the usage
    # one error line, and perhaps its remedy
    assert len(lines) <= 2, (argv, err)
    assert not any(ln.startswith(("ERROR", "WARNING")) for ln in lines[1:]), (argv, err)


class _Hung(BaseException):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hung


def _run_in_process(
    argv: list[str],
    stdin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _stdin(stdin))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        rc = main(argv)
    except _Hung:
        pytest.fail(f"hung for {TIMEOUT} s: pyverity {' '.join(argv)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _drop_dac_override() -> None:
    """Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in the bounding set: after the
    exec, file modes apply to it as to any user, so mode 000 is unreadable. (Dropping to
    ``nobody`` is not possible here: the interpreter lives under /root, 0700.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(argv: list[str], stdin: str, world: dict[str, str]) -> tuple[int, str, str]:
    env = {**os.environ, "PYVERITY_TEST_PASS": _PASSPHRASE}
    proc = subprocess.run(
        [sys.executable, "-m", "pyverity.cli", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=stdin,
        preexec_fn=_drop_dac_override,
        env=env,
        cwd=world["base"],
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


_PARAMS = [
    pytest.param(case, kind, id=f"{case.name}-{kind}") for case in CASES for kind in case.kinds
]


@pytest.mark.parametrize(("case", "kind"), _PARAMS)
def test_one_error_line(
    case: Case,
    kind: str,
    world: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [_fill(part, world, kind) for part in case.argv]
    stdin = _fill(case.stdin, world, kind)
    if kind.startswith("unreadable") and os.geteuid() == 0:
        rc, out, err = _run_unprivileged(argv, stdin, world)
    else:
        rc, out, err = _run_in_process(argv, stdin, capsys, monkeypatch)
    _check(case, argv, (rc, out, err), world[kind])


def test_every_subcommand_is_covered() -> None:
    from pyverity.cli import COMMANDS

    covered = {case.argv[0] for case in CASES}
    # status/rebuild/umount take paths the daemon or fusermount resolve, not files we read
    assert set(COMMANDS) - covered <= {"status", "rebuild", "umount"}


def test_pass_file_may_be_a_pipe(world: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"x")
    r, w = os.pipe()
    os.write(w, _PASSPHRASE.encode() + b"\n")
    os.close(w)
    try:
        argv = ["sign", "--xattr-user", "--key", world["enckey"], "--pass-file", f"/dev/fd/{r}"]
        proc = subprocess.run(
            [sys.executable, "-m", "pyverity.cli", *argv, str(target)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            pass_fds=(r,),
            check=False,
        )
    finally:
        os.close(r)
    assert proc.returncode == 0, proc.stderr
    assert "user.ima" in os.listxattr(target)
