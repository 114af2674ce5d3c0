"""Policy decisions: first matching rule per family, the kernel's matching, modes."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from pyverity.policy import (
    MAY_EXEC,
    MAY_READ,
    MAY_WRITE,
    AccessContext,
    Func,
    Mode,
    Policy,
    context_for_fd,
)

VECTOR_POLICY = """\
appraise func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity appraise_type=sigv3
measure func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity template=ima-sigv2
measure func=FILE_CHECK mask=MAY_READ fowner=1001 digest_type=verity template=ima-ngv2
measure func=FILE_CHECK mask=MAY_READ fowner=1002 template=ima-sig
"""


def ctx(**kw: object) -> AccessContext:
    base: dict[str, object] = {"uid": 0, "fowner": 0, "fgroup": 0}
    base.update(kw)
    return AccessContext(**base)  # type: ignore[arg-type]


def test_kernel_vector_policy_decisions() -> None:
    # What the kernel did in tests/vectors/kernel-6.1-ima (README): hello/big/denied are
    # appraised (sigv3) and measured with ima-sigv2, ngv2 measured with ima-ngv2, classic with
    # ima-sig and not appraised.
    p = Policy.parse(VECTOR_POLICY)
    hello = p.decide(ctx(fowner=1000))
    assert hello.appraise
    assert hello.enforce
    assert hello.sigv3_required
    assert hello.measure
    assert hello.template == "ima-sigv2"
    assert hello.appraise_rule is p.rules[0]
    assert hello.measure_rule is p.rules[1]
    ngv2 = p.decide(ctx(fowner=1001))
    assert (ngv2.measure, ngv2.template, ngv2.appraise, ngv2.verity) == (
        True,
        "ima-ngv2",
        False,
        True,
    )
    classic = p.decide(ctx(fowner=1002))
    assert (classic.measure, classic.template, classic.verity) == (True, "ima-sig", False)
    assert not p.decide(ctx(fowner=5)).measure


def test_first_match_per_family() -> None:
    p = Policy.parse(
        "dont_measure fowner=1\n"
        "measure\n"
        "dont_appraise fowner=2\n"
        "appraise appraise_type=imasig\n"
        "measure template=ima-sig\n"
    )
    one = p.decide(ctx(fowner=1))
    assert not one.measure
    assert one.measure_rule is p.rules[0]
    assert one.appraise  # a dont_measure rule does not hide the appraise rule
    assert one.appraise_rule is p.rules[3]
    two = p.decide(ctx(fowner=2))
    assert two.measure
    assert two.template == "ima-ng"  # rule 2 decided measure; rule 5 is never reached
    assert not two.appraise
    assert two.appraise_rule is p.rules[2]


def test_flags_are_ored_from_deciding_rules() -> None:
    p = Policy.parse("measure digest_type=verity template=ima-ngv2\nappraise appraise_type=imasig")
    d = p.decide(ctx())
    assert d.verity  # from the measure rule, as the kernel ORs the flags
    assert d.signature_required


def test_mask_exact_and_any() -> None:
    p = Policy.parse("measure mask=MAY_READ\nappraise mask=^MAY_WRITE appraise_type=imasig")
    assert p.decide(ctx(mask=MAY_READ)).measure
    assert not p.decide(ctx(mask=MAY_READ | MAY_WRITE)).measure
    assert p.decide(ctx(mask=MAY_READ | MAY_WRITE)).appraise
    assert not p.decide(ctx(mask=MAY_EXEC)).appraise


def test_func_and_post_setattr() -> None:
    p = Policy.parse("measure func=MMAP_CHECK mask=MAY_EXEC")
    assert not p.decide(ctx(func=Func.FILE_CHECK, mask=MAY_EXEC)).measure
    assert p.decide(ctx(func=Func.MMAP_CHECK, mask=MAY_EXEC)).measure
    assert p.decide(ctx(func=Func.POST_SETATTR, mask=0)).measure  # matches every func/mask


@pytest.mark.parametrize(
    ("rule", "yes", "no"),
    [
        ("uid>999", {"uid": 1000}, {"uid": 999}),
        ("uid<1000", {"uid": 999}, {"uid": 1000}),
        ("euid=0", {"uid": 5, "euid": 0}, {"uid": 0, "euid": 5}),
        ("gid=7", {"gid": 7}, {"gid": 8}),
        ("egid>7", {"gid": 0, "egid": 8}, {"gid": 8, "egid": 7}),
        ("fowner>10", {"fowner": 11}, {"fowner": 10}),
        ("fgroup=3", {"fgroup": 3}, {"fgroup": 4}),
        ("fsmagic=ef53", {"fsmagic": 0xEF53}, {"fsmagic": 0x9FA0}),
        ("fsname=ext4", {"fsname": "ext4"}, {"fsname": None}),
        (
            "fsuuid=0a1b2c3d-0000-4000-8000-00000000000f",
            {"fsuuid": uuid.UUID("0a1b2c3d-0000-4000-8000-00000000000f")},
            {"fsuuid": None},
        ),
        ("path=/srv/*.bin", {"path": "/srv/a.bin"}, {"path": "/srv/x/a.bin"}),
        ("path=/srv/**", {"path": "/srv/x/y/z"}, {"path": "/srv2/x"}),
        ("path=/srv/file?", {"path": "/srv/file1"}, {"path": None}),
        ("path=/srv/[ab]*", {"path": "/srv/b"}, {"path": "/srv/c"}),
        ("path=/srv/[!ab]*", {"path": "/srv/c"}, {"path": "/srv/a"}),
        ("func=KEY_CHECK keyrings=.ima", {"func": Func.KEY_CHECK}, {}),
    ],
)
def test_conditions(rule: str, yes: dict[str, object], no: dict[str, object]) -> None:
    p = Policy.parse(f"measure {rule}")
    if rule.startswith("func=KEY_CHECK"):
        assert not p.decide(ctx(**yes)).measure  # buffer rules never match a file access
        return
    assert p.decide(ctx(**yes)).measure
    assert not p.decide(ctx(**no)).measure


def test_modes() -> None:
    text = "appraise digest_type=verity appraise_type=sigv3 keyring=/k"
    for mode, appraise, enforce in (
        (Mode.ENFORCE, True, True),
        (Mode.LOG, True, False),
        (Mode.FIX, True, False),
        (Mode.OFF, False, False),
    ):
        d = Policy.parse(text, mode=mode).decide(ctx())
        assert (d.appraise, d.enforce) == (appraise, enforce)
    d = Policy.parse(text).decide(ctx())
    assert d.keyring == "/k"
    assert d.as_dict()["appraise_type"] == "sigv3"
    assert (
        Policy.parse("appraise appraise_type=imasig", default_keyring="/d").decide(ctx()).keyring
        == "/d"
    )


def test_pcr_and_defaults() -> None:
    p = Policy.parse("measure pcr=11", default_template="ima-ngv2")
    d = p.decide(ctx())
    assert (d.pcr, d.template) == (11, "ima-ngv2")
    assert Policy.parse("").decide(ctx()).pcr == 10


def test_needs_fs_identity() -> None:
    assert not Policy.parse("measure fowner=0").needs_fs_identity
    assert Policy.parse("dont_measure fsmagic=0x9fa0").needs_fs_identity


def test_context_for_fd(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.chown(f, 1234, 567)
    fd = os.open(f, os.O_RDONLY)
    try:
        c = context_for_fd(fd, path=str(f), uid=42, mask=MAY_READ)
        magic = c.fsmagic
    finally:
        os.close(fd)
    assert (c.uid, c.fowner, c.fgroup, c.path) == (42, 1234, 567, str(f))
    out = subprocess.run(
        ["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert magic == int(out.stdout.strip(), 16)
    assert c.fsname is not None


def test_builtin_policies() -> None:
    from pyverity.errors import PolicyError

    tcb = Policy.builtin("tcb")
    assert len(tcb.rules) == 20
    assert not tcb.decide(ctx(fsmagic=0x9FA0, mask=MAY_READ)).measure  # proc
    assert tcb.decide(ctx(fsmagic=0xEF53, mask=MAY_READ)).measure  # root reads are measured
    assert not tcb.decide(ctx(uid=1000, euid=1000, fsmagic=0xEF53, mask=MAY_READ)).measure
    both = Policy.builtin("tcb|appraise_tcb", mode="log")
    d = both.decide(ctx(fsmagic=0xEF53))
    assert (d.measure, d.appraise, d.enforce) == (True, True, False)
    assert not both.decide(ctx(fsmagic=0x858458F6)).appraise  # ramfs
    assert len(Policy.builtin("secure_boot critical_data").rules) == 5
    assert Policy.builtin("appraise_tcb", mode="fix").decide(ctx()).fix
    with pytest.raises(PolicyError, match="unknown built-in policy"):
        Policy.builtin("tcb|nope")
