"""The mount's measurement entries hold what the kernel's would (spec/ima.md §1.4, §3.2):
the whole-file hash under a rule without ``digest_type=verity`` (in the algorithm the file's
``security.ima`` names, sha256 by default), the fs-verity digest only under a verity rule, and
the ``sig`` field the whole value of a v2 or v3 signature; the whole-file hash is of verified
content and taken once per content."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import pyverity
from pyverity.format.ima import ImaHash, algo_by_name
from pyverity.format.measurelist import DigestField
from pyverity.fs.xattr import attr_name, get_attr, set_attr
from pyverity.keys import Keyring, load_signer
from pyverity.measure.log import MeasurementLog
from pyverity.policy.engine import Policy
from pyverity.protect import sign_file
from pyverity.protect.sign import imasign_file
from pyverity.reader import VerityOpenError
from pyverity.reader.measuring import FILE_HASHES, file_hash_algo, signature_field
from tests.unit.keys.keyhelpers import keyring_dir, make_key
from tests.unit.reader.helpers import NS, OPTIONS, flip, protect
from tests.unit.reader.test_open import DictStore

DATA = os.urandom(4096 * 9 + 100)
SHA256 = hashlib.sha256(DATA).digest()


def _rule(template: str, *, verity: bool = False) -> Policy:
    digest_type = " digest_type=verity" if verity else ""
    return Policy.parse(f"measure func=FILE_CHECK{digest_type} template={template}\n")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[MeasurementLog]:
    FILE_HASHES.clear()
    with MeasurementLog.open(tmp_path / "list") as opened:
        yield opened


def _open(path: Path, policy: Policy, log: MeasurementLog, **kw: object) -> bytes:
    options = replace(OPTIONS, measurements=log, **kw)  # type: ignore[arg-type]
    with pyverity.open(path, policy=policy, options=options) as f:
        return f.read()


def _entry(log: MeasurementLog, index: int = 1) -> tuple[str, str | None, bytes, bytes]:
    """(template, digest type, digest, sig field) of one entry (0 is boot_aggregate)."""
    record = log.records[index]
    digest = record.digest
    assert digest is not None
    sig = record.field("sig") or b""
    return record.template_name, digest.kind, digest.to_bytes()[-len(digest.digest) :], sig


@pytest.mark.parametrize("template", ["ima-ng", "ima-sig", "ima-ngv2", "ima-sigv2"])
def test_plain_rule_records_the_whole_file_hash(
    tmp_path: Path, log: MeasurementLog, template: str
) -> None:
    tree = protect(tmp_path / "f", DATA)
    assert _open(tmp_path / "f", _rule(template), log) == DATA
    record = log.records[1]
    assert record.digest is not None
    assert record.digest.algo == "sha256"
    assert record.digest.digest == SHA256 != tree.file_digest().digest
    if template.endswith("v2"):
        assert record.digest.kind == "ima"
        assert record.digest.to_bytes().startswith(b"ima:sha256:\0")
    else:
        assert record.digest.to_bytes().startswith(b"sha256:\0")
    # The inline build took the hash in its own pass: nothing was read a second time.
    assert FILE_HASHES.computed == 0


@pytest.mark.parametrize("template", ["ima-ngv2", "ima-sigv2"])
def test_verity_rule_records_the_fs_verity_digest(
    tmp_path: Path, log: MeasurementLog, template: str
) -> None:
    tree = protect(tmp_path / "f", DATA)
    _open(tmp_path / "f", _rule(template, verity=True), log)
    digest = log.records[1].digest
    assert digest is not None
    assert digest.kind == "verity"
    assert digest.to_bytes() == b"verity:sha256:\0" + tree.file_digest().digest
    assert FILE_HASHES.computed == 0  # the contents are not hashed (spec/ima.md §3.2)


def test_cached_tree_hash_is_taken_once_per_content(tmp_path: Path, log: MeasurementLog) -> None:
    store = DictStore()
    tree = protect(tmp_path / "a", DATA)
    store.put(tree)
    protect(tmp_path / "b", DATA)  # the same content under another name
    for name in ("a", "a", "b"):
        _open(tmp_path / name, _rule("ima-ng"), log, store=store)
    assert [r.file_name for r in log.records[1:]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert all(r.digest is not None and r.digest.digest == SHA256 for r in log.records[1:])
    assert FILE_HASHES.computed == 1  # one verified read, then by fs-verity digest


def test_content_that_fails_its_cached_tree_is_not_measured(
    tmp_path: Path, log: MeasurementLog
) -> None:
    store = DictStore()
    store.put(protect(tmp_path / "f", DATA))
    flip(tmp_path / "f", 4096 * 5 + 1)
    options = replace(OPTIONS, measurements=log, store=store)  # type: ignore[arg-type]
    with (
        pyverity.open(tmp_path / "f", policy=_rule("ima-ng"), options=options) as f,
        pytest.raises(OSError, match="does not match"),
    ):
        f.read()
    # As the kernel, whose hash of such a file ends in EIO: no entry, and no hash kept.
    assert len(log.records) == 1
    assert FILE_HASHES.computed == 0


def test_plain_file_is_hashed_once_per_identity(tmp_path: Path, log: MeasurementLog) -> None:
    (tmp_path / "p").write_bytes(DATA)
    for _ in range(3):
        _open(tmp_path / "p", _rule("ima-ng"), log)
    assert _entry(log)[2] == SHA256
    assert FILE_HASHES.computed == 1
    (tmp_path / "p").write_bytes(DATA[::-1])  # a new content, size and mtime
    os.utime(tmp_path / "p", ns=(1, 1))
    _open(tmp_path / "p", _rule("ima-ng"), log)
    assert _entry(log, 2)[2] == hashlib.sha256(DATA[::-1]).digest()
    assert FILE_HASHES.computed == 2


def test_ima_sig_carries_a_v2_signature_and_its_hash_algorithm(
    tmp_path: Path, log: MeasurementLog
) -> None:
    key = make_key()
    (tmp_path / "c").write_bytes(DATA)
    signer = load_signer(str(key.key_path), cert=key.cert_path)
    imasign_file(tmp_path / "c", signer, algo_by_name("sha512"), namespace=NS)
    raw = get_attr(tmp_path / "c", attr_name(NS, "ima"))
    assert raw is not None
    keyring = Keyring.from_directory(keyring_dir(key))
    policy = Policy.parse("measure func=FILE_CHECK template=ima-sig\nappraise func=FILE_CHECK\n")
    _open(tmp_path / "c", policy, log, keyring=keyring)
    record = log.records[1]
    assert record.digest is not None
    # The kernel hashes with the signature's algorithm (ima_get_hash_algo).
    assert record.digest.to_bytes() == b"sha512:\0" + hashlib.sha512(DATA).digest()
    assert record.field("sig") == raw


def test_ima_sig_carries_a_v3_signature_beside_the_file_hash(
    tmp_path: Path, log: MeasurementLog
) -> None:
    key = make_key()
    (tmp_path / "s").write_bytes(DATA)
    sign_file(tmp_path / "s", load_signer(str(key.key_path), cert=key.cert_path), namespace=NS)
    raw = get_attr(tmp_path / "s", attr_name(NS, "ima"))
    assert raw is not None
    assert raw[0] == 0x06
    _open(tmp_path / "s", _rule("ima-sig"), log)
    assert _entry(log) == ("ima-sig", None, SHA256, raw)


def test_ima_sig_is_empty_for_a_hash_value(tmp_path: Path, log: MeasurementLog) -> None:
    (tmp_path / "h").write_bytes(DATA)
    value = ImaHash.for_digest(5, hashlib.sha384(DATA).digest()).to_bytes()
    set_attr(tmp_path / "h", attr_name(NS, "ima"), value)
    _open(tmp_path / "h", _rule("ima-sig"), log)
    record = log.records[1]
    assert record.digest is not None
    assert record.digest.to_bytes() == b"sha384:\0" + hashlib.sha384(DATA).digest()
    assert record.field("sig") == b""


def test_a_failed_open_records_the_content_as_it_is(tmp_path: Path, log: MeasurementLog) -> None:
    protect(tmp_path / "t", DATA)
    flip(tmp_path / "t", 3)
    with pytest.raises(VerityOpenError):
        _open(tmp_path / "t", _rule("ima-ng"), log)
    tampered = bytearray(DATA)
    tampered[3] ^= 0xFF
    assert _entry(log)[2] == hashlib.sha256(tampered).digest()


@pytest.mark.parametrize(
    ("value", "algo"),
    [
        (None, "sha256"),
        (b"\x04", "sha256"),
        (b"\x04\x06" + bytes(64), "sha512"),
        (b"\x04\x63" + bytes(32), "sha256"),  # an id past HASH_ALGO__LAST: the default
        (b"\x01" + b"\x11" * 20, "sha1"),
        (b"\x01" + b"\x11" * 16 + bytes(4), "md5"),
        (b"\x01" + b"\x11" * 16, "md5"),
        (b"\x01" + b"\x11" * 32, "sha256"),
        (b"\x03\x02\x05" + bytes(7), "sha384"),
        (b"\x03\x03\x05" + bytes(7), "sha256"),  # a v3 header in a 0x03 value
        (b"\x03\x02\x05" + bytes(6), "sha256"),  # too short
        (b"\x06\x03\x06" + bytes(7), "sha512"),
        (b"\x06\x02\x06" + bytes(7), "sha256"),
        (b"\x05\x02\x06" + bytes(7), "sha256"),
    ],
)
def test_file_hash_algo_as_ima_get_hash_algo(value: bytes | None, algo: str) -> None:
    assert file_hash_algo(value).name == algo


def test_signature_field_only_for_signatures() -> None:
    assert signature_field(b"\x03\x02\x04rest") == b"\x03\x02\x04rest"
    assert signature_field(b"\x06\x03\x04rest") == b"\x06\x03\x04rest"
    assert signature_field(b"\x04\x04" + bytes(32)) == b""
    assert signature_field(None) == b""


def test_ima_hash_is_the_default_algorithm_only(tmp_path: Path) -> None:
    """``ima_hash=``: files whose security.ima names no algorithm are hashed with it (and a
    new list's boot_aggregate has its zeros); a v2 signature's algorithm still wins."""
    FILE_HASHES.clear()
    key = make_key()
    protect(tmp_path / "v", DATA)  # a descriptor only: no algorithm named
    (tmp_path / "p").write_bytes(DATA)
    (tmp_path / "c").write_bytes(DATA)
    signer = load_signer(str(key.key_path), cert=key.cert_path)
    imasign_file(tmp_path / "c", signer, algo_by_name("sha256"), namespace=NS)
    with MeasurementLog.open(tmp_path / "list", ima_hash="sha512") as log:
        for name in ("v", "p", "c"):
            _open(tmp_path / name, _rule("ima-ng"), log, ima_hash="sha512")
        got = [(r.file_name.rsplit("/", 1)[-1], r.digest) for r in log.records]
    assert got[0] == ("boot_aggregate", DigestField("sha512", bytes(64)))
    sha512 = DigestField("sha512", hashlib.sha512(DATA).digest())
    assert got[1:] == [("v", sha512), ("p", sha512), ("c", DigestField("sha256", SHA256))]
