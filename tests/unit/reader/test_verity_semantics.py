"""fs-verity holds whatever the policy says: files with a descriptor or a v3 signature are
verified on every read under a measure-only policy, in log and off modes, and a descriptor
that does not match (tree built at open) or does not parse fails the open."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

import pyverity
from pyverity.errors import FormatError, Reason, SignatureError
from pyverity.format.ima import ImaHash
from pyverity.fs.xattr import attr_name, set_attr
from pyverity.keys import Keyring, load_signer
from pyverity.measure.log import MeasurementLog
from pyverity.policy.engine import Policy
from pyverity.protect import sign_file
from pyverity.protect.gate import ContentMismatchError
from pyverity.reader import Access, ReaderOptions, StaleError, VerifiedRawIO, VerityOpenError
from pyverity.reader.api import open_fd
from tests.unit.keys.keyhelpers import keyring_dir, make_key
from tests.unit.reader.helpers import NS, OPTIONS, flip, protect
from tests.unit.reader.test_open import DictStore

MEASURE_ONLY = Policy.parse("measure func=FILE_CHECK template=ima-ng\n")
OFF = Policy.parse("appraise func=FILE_CHECK\n", mode="off")
LOG = Policy.parse("appraise func=FILE_CHECK\n", mode="log")
DATA = os.urandom(4096 * 12 + 5)


def _tampered(tmp_path: Path, name: str = "f") -> Path:
    """A file whose content no longer matches its descriptor (one byte of block 7)."""
    protect(tmp_path / name, DATA)
    flip(tmp_path / name, 7 * 4096 + 3)
    return tmp_path / name


@pytest.mark.parametrize("policy", [MEASURE_ONLY, OFF, LOG], ids=["measure-only", "off", "log"])
def test_mismatch_fails_the_open_whatever_the_policy(tmp_path: Path, policy: Policy) -> None:
    f = _tampered(tmp_path)
    with pytest.raises(VerityOpenError, match=r"fs-verity: .*content does not match") as e:
        pyverity.open(f, policy=policy, options=OPTIONS)
    assert e.value.reason is Reason.CONTENT_MISMATCH
    # without any policy, not enforced (the mount's --mode log): the same
    with pytest.raises(VerityOpenError):
        pyverity.open(f, options=replace(OPTIONS, enforce=False))


def test_enforced_appraisal_fails_first(tmp_path: Path) -> None:
    f = _tampered(tmp_path)
    with pytest.raises(ContentMismatchError) as e:  # EACCES on the mount, not EIO
        pyverity.open(f, options=OPTIONS)
    assert not isinstance(e.value, VerityOpenError)


def test_cached_tree_gives_eio_on_the_blocks_that_differ(tmp_path: Path) -> None:
    protect(tmp_path / "f", DATA)
    options = replace(OPTIONS, store=DictStore())  # type: ignore[arg-type]
    with pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=options) as f:
        assert f.read() == DATA  # built once, checked against the root, cached
    flip(tmp_path / "f", 7 * 4096 + 3)
    with pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=options) as f:
        assert isinstance(f.raw, VerifiedRawIO)
        assert f.raw.pread(4096, 6 * 4096) == DATA[6 * 4096 : 7 * 4096]
        with pytest.raises(OSError, match="data block 7"):
            f.raw.pread(4096, 7 * 4096)
        assert f.raw.pread(4096, 8 * 4096) == DATA[8 * 4096 : 9 * 4096]


def test_malformed_descriptor_fails_the_open(tmp_path: Path) -> None:
    protect(tmp_path / "f", DATA)
    set_attr(tmp_path / "f", attr_name(NS, "verity"), b"\x01" * 256)
    with pytest.raises(VerityOpenError) as e:
        pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=OPTIONS)
    assert e.value.reason is Reason.MALFORMED
    with pytest.raises(FormatError, match="sig_size"):  # appraised and enforced: appraisal's
        pyverity.open(tmp_path / "f", options=OPTIONS)


def test_valid_descriptor_beside_a_bad_ima_value_is_still_verified(tmp_path: Path) -> None:
    protect(tmp_path / "f", DATA)
    set_attr(tmp_path / "f", attr_name(NS, "ima"), b"\x04\x04" + bytes(5))  # malformed
    with pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=OPTIONS) as f:
        assert isinstance(f.raw, VerifiedRawIO)
        assert f.read() == DATA
    flip(tmp_path / "f", 100)
    with pytest.raises(VerityOpenError):
        pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=OPTIONS)


def test_signature_only_is_verified_against_the_content_as_opened(tmp_path: Path) -> None:
    key = make_key("ecdsa", "P-256")
    f = tmp_path / "f"
    f.write_bytes(DATA)
    done = sign_file(f, load_signer(str(key.key_path), cert=key.cert_path), namespace=NS)
    os.removexattr(f, f"{NS}.verity")
    assert done.descriptor is not None
    with pyverity.open(f, policy=MEASURE_ONLY, options=OPTIONS) as r:
        assert isinstance(r.raw, VerifiedRawIO)
        assert r.raw.fs_verity
        assert r.raw.digest.digest == done.descriptor.digest()  # what MEASURE_VERITY answers
        flip(f, 4096 * 3)
        with pytest.raises(OSError, match="data block 3"):
            r.raw.pread(10, 4096 * 3)
    # appraised with the keyring: the changed content no longer matches the signature
    ring = Keyring.from_directory(keyring_dir(key))
    with pytest.raises(SignatureError, match="does not verify"):
        pyverity.open(f, keyring=ring, options=OPTIONS)


def test_plain_and_classic_files_are_not_fs_verity(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"plain")
    with pyverity.open(tmp_path / "plain", policy=MEASURE_ONLY, options=OPTIONS) as f:
        assert not isinstance(f.raw, VerifiedRawIO)
    classic = tmp_path / "classic"
    classic.write_bytes(DATA)
    value = ImaHash.for_digest(4, hashlib.sha256(DATA).digest()).to_bytes()
    set_attr(classic, attr_name(NS, "ima"), value)
    with pyverity.open(classic, policy=MEASURE_ONLY, options=OPTIONS) as f:
        assert not isinstance(f.raw, VerifiedRawIO)  # IMA without appraisal: no fs-verity
    with pyverity.open(classic, options=OPTIONS) as f:  # appraised: checked block by block
        assert isinstance(f.raw, VerifiedRawIO)
        assert not f.raw.fs_verity


def test_measure_only_records_the_whole_file_hash(tmp_path: Path) -> None:
    protect(tmp_path / "f", DATA)
    log = MeasurementLog.open(tmp_path / "list")
    options = replace(OPTIONS, measurements=log)
    with pyverity.open(tmp_path / "f", policy=MEASURE_ONLY, options=options) as f:
        f.read()
    digest = log.records[1].digest
    assert digest is not None  # ima-ng without digest_type=verity: the kernel's file hash
    assert (digest.algo, digest.digest) == ("sha256", hashlib.sha256(DATA).digest())
    log.close()


def test_stale_is_an_appraisal_failure_only(tmp_path: Path) -> None:
    protect(tmp_path / "f", DATA)
    stale = Access(str(tmp_path / "f"), stale=True)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    with pytest.raises(StaleError, match="STALE") as e:
        open_fd(fd, stale, OPTIONS)
    assert e.value.reason is Reason.STALE
    lax = ReaderOptions(xattr_ns=NS, enforce=False)
    raw = open_fd(os.open(tmp_path / "f", os.O_RDONLY), stale, lax)
    assert raw is not None  # logged only; the content still matches its descriptor
    assert raw.pread(len(DATA), 0) == DATA
    raw.close()
    flip(tmp_path / "f", 5)
    with pytest.raises(VerityOpenError):
        open_fd(os.open(tmp_path / "f", os.O_RDONLY), stale, lax)
