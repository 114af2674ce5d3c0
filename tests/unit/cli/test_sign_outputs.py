"""``sign --out-merkle-tree/--out-descriptor``, ``--builtin-sig`` with the certificate inside the
PEM key file, and ``enable --kernel --signature`` (the signature reaches FS_IOC_ENABLE_VERITY;
the real kernel's check is in the kernel suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyverity.cli import main
from tests.unit.keys.keyhelpers import make_key


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(123_457))
    return f


@pytest.mark.parametrize("mode", [[], ["--sigfile"], ["--builtin-sig", "{out}/p7"]])
def test_out_tree_and_descriptor_equal_digest_outputs(tmp_path: Path, mode: list[str]) -> None:
    k = make_key("rsa", "2048")
    f = _file(tmp_path)
    ref_tree, ref_desc = tmp_path / "ref.tree", tmp_path / "ref.desc"
    tree_args = ["--block-size=2048", "--salt=0102"]
    assert main(["digest", str(f), *tree_args, f"--out-merkle-tree={ref_tree}",
                 f"--out-descriptor={ref_desc}"]) == 0  # fmt: skip
    tree, desc = tmp_path / "tree", tmp_path / "desc"
    extra = [m.format(out=tmp_path) for m in mode]
    argv = ["sign", "--xattr-user", "--key", str(k.key_path), "--cert", str(k.cert_path),
            "--block-size", "2048", "--salt", "0102", "--out-merkle-tree", str(tree),
            "--out-descriptor", str(desc), *extra, str(f)]  # fmt: skip
    assert main(argv) == 0
    assert tree.read_bytes() == ref_tree.read_bytes()
    assert desc.read_bytes() == ref_desc.read_bytes()
    if not mode:
        assert os.getxattr(f, "user.verity") == desc.read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--imasig"], "do not apply to --imasig"),
        (["-r"], "exactly one FILE"),
        (["{f2}"], "exactly one FILE"),
    ],
)
def test_out_options_need_one_verity_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    k = make_key("rsa", "2048")
    f = _file(tmp_path)
    f2 = tmp_path / "g"
    f2.write_bytes(b"g")
    args = [e.format(f2=f2) for e in extra]
    rc = main(["sign", "--xattr-user", "--key", str(k.key_path), "--cert", str(k.cert_path),
               "--out-descriptor", str(tmp_path / "d"), *args, str(f)])  # fmt: skip
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_builtin_sig_takes_the_certificate_from_the_key_file(tmp_path: Path) -> None:
    k = make_key("rsa", "2048")
    combined = tmp_path / "key+cert.pem"
    combined.write_bytes(k.key_path.read_bytes() + k.cert_path.read_bytes())
    f = _file(tmp_path)
    with_cert, without = tmp_path / "a.p7", tmp_path / "b.p7"
    assert main(["sign", "--key", str(k.key_path), "--cert", str(k.cert_path),
                 "--builtin-sig", str(with_cert), str(f)]) == 0  # fmt: skip
    assert main(["sign", "--key", str(combined), "--builtin-sig", str(without), str(f)]) == 0
    assert without.read_bytes() == with_cert.read_bytes()


def test_builtin_sig_without_any_certificate_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    k = make_key("rsa", "2048")
    f = _file(tmp_path)
    rc = main(["sign", "--key", str(k.key_path), "--builtin-sig", str(tmp_path / "o"), str(f)])
    assert rc == 2
    assert "needs the key's certificate" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_enable_kernel_signature_is_handed_to_the_ioctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyverity.format.descriptor import Descriptor
    from pyverity.format.digest import FileDigest
    from pyverity.fs import ioctl
    from pyverity.store import kernel

    k = make_key("rsa", "2048")
    f = _file(tmp_path)
    sig = tmp_path / "f.p7"
    assert main(["sign", "--key", str(k.key_path), "--cert", str(k.cert_path),
                 "--builtin-sig", str(sig), str(f)]) == 0  # fmt: skip
    seen: dict[str, object] = {}

    def fake_enable(fd: int, **kw: object) -> None:
        seen.update(kw)

    def fake_digest(fd: object) -> kernel.KernelVerity | None:
        if not seen:  # before the enable: not verity yet
            return None
        d = Descriptor.from_bytes(os.getxattr(f, "user.verity"))
        return kernel.KernelVerity(FileDigest(d.hash_alg.name, d.digest(), d.hash_algorithm))

    monkeypatch.setattr(ioctl, "enable_verity", fake_enable)
    monkeypatch.setattr(kernel, "kernel_digest", fake_digest)
    argv = ["enable", "--xattr-user", "--kernel", "--signature", str(sig), str(f)]
    assert main(argv) == 0
    assert seen["signature"] == sig.read_bytes()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--signature", "{sig}", "{f}"], 2, "--signature needs --kernel"),
        (["--kernel", "--signature", "{sig}", "{f}", "{f}"], 2, "exactly one FILE"),
        (["--kernel", "--signature", "{junk}", "{f}"], 1, "PKCS#7"),
        (["--kernel", "--signature", "{tmp}", "{f}"], 1, "signature file"),
    ],
)
def test_enable_signature_bad_input(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    f = _file(tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x30\x03\x02\x01\x01")
    argv = [a.format(f=f, sig=junk, junk=junk, tmp=tmp_path) for a in args]
    rc = main(["enable", "--xattr-user", *argv])
    err = capsys.readouterr().err
    assert rc == code
    assert err.startswith("ERROR: ")
    assert message in err.splitlines()[0]
    assert "user.verity" not in os.listxattr(f)
