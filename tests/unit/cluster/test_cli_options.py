"""The --cluster options at the CLI edge (no cluster started) and the progress bar."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pyverity.cli import main
from pyverity.cli.progress import Bar
from tests.unit.keys.keyhelpers import ec_certificate, pkcs8_pem


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["verify", "-r", "X", "--insecure"], "only with --cluster"),
        (["verify", "-r", "X", "--recheck", "0.5"], "only with --cluster"),
        (["verify", "-r", "X", "--cluster", "local", "--recheck", "2"], "invalid --recheck"),
        (["verify", "-r", "X", "--cluster", "local:0"], "invalid --cluster"),
        (["verify", "-r", "X", "--cluster", "http://h:1"], "invalid --cluster"),
        (["verify", "-r", "X", "--tls-ca", "ca.pem"], "only with --cluster"),
        (
            ["verify", "-r", "X", "--cluster", "local", "--tls-ca", "a", "--tls-cert", "b"],
            "apply to a tls:// --cluster, not 'local'",
        ),
        (
            [
                "verify",
                "-r",
                "X",
                "--cluster",
                "tcp://127.0.0.1:1",
                "--tls-ca",
                "a",
                "--tls-cert",
                "b",
            ],
            "apply to a tls:// --cluster",
        ),
        (
            ["verify", "-r", "X", "--cluster", "tls://127.0.0.1:1", "--tls-cert", "b"],
            "--tls-ca and --tls-cert go together",
        ),
    ],
)
def test_usage_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert text in capsys.readouterr().err


def test_sign_on_a_cluster_needs_r(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert main(["sign", str(f), "--key", str(tmp_path / "nokey"), "--cluster", "local"]) == 2
    assert "--cluster runs sign -r" in capsys.readouterr().err


def test_bar_quiet_off_a_terminal_and_line_with_eta() -> None:
    out = io.StringIO()
    bar = Bar("sign", files=4, nbytes=4096, stream=out)
    bar.advance(1024)
    bar.close()
    assert out.getvalue() == ""
    line = bar.line()
    assert "1/4 files" in line
    assert "ETA" in line
    assert bar.summary()["bytes"] == 1024


def _pem_files(tmp: Path) -> dict[str, Path]:
    """A CA certificate, a client certificate and its key, another key, the key encrypted."""
    ca_key, ca = ec_certificate("test CA")
    key, cert = ec_certificate("client")
    other, _ = ec_certificate("other")
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": pkcs8_pem(key),
        "other": pkcs8_pem(other),
        "both": cert.public_bytes(serialization.Encoding.PEM) + pkcs8_pem(key),
        "encrypted": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "garbage": b"not a certificate\n",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp / f"{name}.pem"
        out[name].write_bytes(data)
    del ca_key
    return out


@pytest.mark.parametrize(
    ("ca", "cert", "key", "text"),
    [
        ("missing", "cert", "key", "can't read --tls-ca '{missing}': No such file or directory"),
        ("ca", "cert", "missing", "can't read --tls-key '{missing}': No such file or directory"),
        ("garbage", "cert", "key", "--tls-ca '{garbage}': no PEM CA certificate in it"),
        ("ca", "garbage", "key", "--tls-cert '{garbage}' and --tls-key '{key}': not a PEM"),
        ("ca", "cert", "other", "and its matching private key (key values mismatch)"),
        ("ca", "cert", None, "--tls-cert '{cert}': not a PEM certificate and its matching"),
        ("ca", "cert", "encrypted", "the TLS client key is encrypted"),
        ("fifo", "cert", "key", "--tls-ca '{fifo}' is a FIFO"),  # never opened to block
        ("ca", "zero", "key", "--tls-cert '{zero}' is a character device"),
        ("ca", "cert", "dir", "--tls-key '{dir}' is a directory"),
    ],
)
def test_tls_files_are_checked_before_anything_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ca: str,
    cert: str,
    *,
    key: str | None,
    text: str,
) -> None:
    files = {**_pem_files(tmp_path), "missing": tmp_path / "missing.pem"}
    files |= {"fifo": tmp_path / "fifo", "zero": Path("/dev/zero"), "dir": tmp_path}
    os.mkfifo(files["fifo"])
    argv = ["verify", "-r", str(tmp_path), "--cluster", "tls://127.0.0.1:1",
            "--tls-ca", str(files[ca]), "--tls-cert", str(files[cert])]  # fmt: skip
    if key is not None:
        argv += ["--tls-key", str(files[key])]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""  # refused before the walk: no file reported
    assert text.format(**{k: str(v) for k, v in files.items()}) in err
    assert len(err.strip().splitlines()) <= 2  # the line and perhaps its remedy


def test_good_tls_files_pass_the_check(tmp_path: Path) -> None:
    from pyverity.cluster.connect import Tls, check_tls, parse_target

    f = _pem_files(tmp_path)
    check_tls(Tls(str(f["ca"]), str(f["cert"]), str(f["key"])))
    check_tls(Tls(str(f["ca"]), str(f["both"])))  # the key in the certificate's file
    tls = Tls(str(f["ca"]), str(f["cert"]), str(f["key"]))
    assert parse_target("tls://127.0.0.1:8786", tls=tls).tls == tls
