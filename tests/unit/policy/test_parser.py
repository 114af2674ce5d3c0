"""The policy grammar: what the kernel accepts parses to the same meaning; the rest is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pyverity.errors import PolicyError
from pyverity.policy import MAY_EXEC, MAY_READ, Action, Flag, Func, IdCondition, Mode, Policy
from pyverity.policy.parser import MAX_RULES, parse_rules

# The kernel's built-in policies (spec/ima.md §3.6) written as policy text.
TCB = """
dont_measure fsmagic=0x9fa0
dont_measure fsmagic=0x62656572
dont_measure fsmagic=0x64626720
dont_measure fsmagic=0x01021994
dont_measure fsmagic=0x1cd1
dont_measure fsmagic=0x42494e4d
dont_measure fsmagic=0x73636673
dont_measure fsmagic=0xf97cff8c
dont_measure fsmagic=0x43415d53
dont_measure fsmagic=0x27e0eb
dont_measure fsmagic=0x63677270
dont_measure fsmagic=0x6e736673
dont_measure fsmagic=0xde5e81e4
measure func=MMAP_CHECK mask=MAY_EXEC
measure func=BPRM_CHECK mask=MAY_EXEC
measure func=FILE_CHECK mask=^MAY_READ euid=0
measure func=FILE_CHECK mask=^MAY_READ uid=0
measure func=MODULE_CHECK
measure func=FIRMWARE_CHECK
measure func=POLICY_CHECK
"""

SECURE_BOOT = """
appraise func=MODULE_CHECK appraise_type=imasig
appraise func=FIRMWARE_CHECK appraise_type=imasig
appraise func=KEXEC_KERNEL_CHECK appraise_type=imasig
appraise func=POLICY_CHECK appraise_type=imasig
"""

KERNEL_VECTOR_POLICY = """
appraise func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity appraise_type=sigv3
measure func=FILE_CHECK mask=MAY_READ fowner=1000 digest_type=verity template=ima-sigv2
measure func=FILE_CHECK mask=MAY_READ fowner=1001 digest_type=verity template=ima-ngv2
measure func=FILE_CHECK mask=MAY_READ fowner=1002 template=ima-sig
"""


def test_builtin_policies_parse() -> None:
    tcb = parse_rules(TCB)
    assert len(tcb) == 20
    assert tcb[0].action is Action.DONT_MEASURE
    assert tcb[0].fsmagic == 0x9FA0
    assert tcb[15].flags & Flag.INMASK
    assert tcb[15].mask == MAY_READ
    assert tcb[15].flags & Flag.EUID
    assert tcb[15].uid == IdCondition("=", 0)
    assert tcb[16].flags & Flag.UID
    assert tcb[13].func is Func.MMAP_CHECK
    assert tcb[13].flags & Flag.MASK
    assert tcb[13].mask == MAY_EXEC
    sb = parse_rules(SECURE_BOOT)
    assert [r.appraise_type for r in sb] == ["imasig"] * 4


def test_canonical_verity_rules() -> None:
    rules = parse_rules(KERNEL_VECTOR_POLICY)
    appraise, measure = rules[0], rules[1]
    assert appraise.appraise_type == "sigv3"
    assert appraise.flags & Flag.VERITY_REQUIRED
    assert appraise.flags & Flag.DIGSIG_REQUIRED
    assert appraise.fowner == IdCondition("=", 1000)
    assert measure.template == "ima-sigv2"
    assert rules[3].template == "ima-sig"
    assert not rules[3].flags & Flag.VERITY_REQUIRED


def test_comments_blank_lines_tabs_and_aliases() -> None:
    rules = parse_rules(
        "# comment\n\n   # indented comment\n\tmeasure\tfunc=PATH_CHECK \n"
        "measure func=FILE_MMAP\r\n"
    )
    assert [r.func for r in rules] == [Func.FILE_CHECK, Func.MMAP_CHECK]
    assert [r.line for r in rules] == [4, 5]


def test_conditions() -> None:
    (r,) = parse_rules(
        "measure uid>999 fgroup<100 fowner=+5 gid=7 fsuuid=0A1B2C3D-0000-4000-8000-00000000000F "
        "fsname=ext4 fsname=xfs fsmagic=EF53 pcr=11 pcr=12"
    )
    assert r.uid == IdCondition(">", 999)
    assert r.fgroup == IdCondition("<", 100)
    assert r.fowner == IdCondition("=", 5)
    assert r.gid == IdCondition("=", 7)
    assert r.fsuuid == uuid.UUID("0a1b2c3d-0000-4000-8000-00000000000f")
    assert r.fsname == "xfs"  # the kernel keeps the last fsname= and pcr=
    assert r.pcr == 12
    assert r.fsmagic == 0xEF53


def test_extensions() -> None:
    (r,) = parse_rules(
        "appraise path=/srv/** keyring=/etc/pyverity/keys digest_type=verity appraise_type=sigv3"
    )
    assert r.path == "/srv/**"
    assert r.keyring == "/etc/pyverity/keys"


def test_kernel_only_rules_are_accepted_and_never_match_files() -> None:
    rules = parse_rules(
        "measure func=KEY_CHECK keyrings=.ima|.builtin_trusted_keys template=ima-buf\n"
        "measure func=CRITICAL_DATA label=selinux\n"
        "measure func=KEXEC_CMDLINE\n"
        "appraise func=SETXATTR_CHECK appraise_algos=sha256,sha384\n"
        "appraise func=MODULE_CHECK appraise_type=imasig|modsig\n"
        "audit func=BPRM_CHECK\nhash func=FILE_CHECK\ndont_hash fsmagic=0x9fa0\n"
        "appraise fowner=0 appraise_flag=check_blacklist appraise_type=imasig permit_directio\n"
    )
    assert rules[0].keyrings == (".ima", ".builtin_trusted_keys")
    assert rules[3].appraise_algos == ("sha256", "sha384")
    assert rules[4].appraise_type == "imasig|modsig"
    assert rules[5].action is Action.AUDIT


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("appraise appraise_type=sigv3 digest_type=verity", "1:10", "needs digest_type=verity"),
        ("appraise appraise_type=imasig digest_type=verity", "1:31", "must come before"),
        ("appraise digest_type=verity", "1:1", "needs appraise_type=sigv3"),
        ("appraise digest_type=verity appraise_type=imasig", "1:29", "cannot be used"),
        ("template=ima-sigv2 measure", "1:1", "must follow the 'measure' action"),
        ("measure template=ima-sig template=ima-sig", "1:26", "template given twice"),
        ("measure template=ima-nope", "1:9", "unknown template"),
        ("measure template=ima", "1:1", "cannot record file accesses"),
        ("appraise template=ima-ng", "1:10", "must follow the 'measure'"),
        ("measure func=FILE_CHECK func=FILE_CHECK", "1:25", "func given twice"),
        ("measure uid=0 euid=0", "1:15", "one of uid=/euid="),
        ("measure uid=4294967295", "1:9", "not a valid id"),
        ("measure uid=-1", "1:9", "not a decimal number"),
        ("measure mask=MAY_READ mask=MAY_EXEC", "1:23", "mask given twice"),
        ("measure mask=READ", "1:9", "unknown mask"),
        ("measure fsmagic=xyz", "1:9", "not a hexadecimal number"),
        ("measure fsuuid=1234", "1:9", "not a UUID"),
        ("measure pcr=64", "1:9", "not a PCR index"),
        ("appraise pcr=11", "1:1", "pcr= is only for measure"),
        ("measure appraise_type=imasig", "1:1", "only for appraise rules"),
        ("measure keyring=/k", "1:1", "only for appraise rules"),
        ("measure measure", "1:9", "one action"),
        ("func=FILE_CHECK", "1:1", "has no action"),
        ("measure func=NOPE", "1:9", "unknown func"),
        ("measure obj_type=foo_t", "1:9", "LSM labels"),
        ("measure frobnicate", "1:9", "unknown keyword 'frobnicate'"),
        ("measure frob=1", "1:9", "unknown keyword 'frob'"),
        ("measure keyrings=.ima", "1:1", "keyrings not allowed"),
        ("measure func=KEY_CHECK fowner=0", "1:1", "fowner not allowed in func=KEY_CHECK"),
        ("appraise func=KEY_CHECK", "1:1", "can only measure"),
        ("measure func=KEXEC_CMDLINE mask=MAY_READ", "1:1", "mask not allowed in func=KEXEC"),
        ("appraise func=KEXEC_CMDLINE", "1:1", "can only measure"),
        ("appraise func=SETXATTR_CHECK", "1:1", "needs 'appraise' and appraise_algos="),
        ("appraise appraise_algos=sha999", "1:10", "unknown hash algorithm"),
        ("appraise appraise_type=imasig|modsig", "1:1", "modsig_allowed not allowed"),
        (
            "appraise func=MODULE_CHECK digest_type=verity appraise_type=sigv3",
            "1:1",
            "verity_required not allowed in func=MODULE_CHECK",
        ),
        ("measure digest_type=hash", "1:9", "unknown digest_type"),
        ("appraise appraise_type=sigv2", "1:10", "unknown appraise_type"),
        ("appraise appraise_flag=foo", "1:10", "unknown appraise_flag"),
        ("measure path=", "1:9", "path= needs a value"),
        ("measure fsname=", "1:9", "fsname= needs a value"),
    ],
)
def test_refused_with_line_and_column(text: str, where: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_rules("# header\n  " + text, source="pol")
    line, col = where.split(":")
    assert str(info.value).startswith(f"pol:{int(line) + 1}:{int(col) + 2}: ")
    assert message in str(info.value)


def test_bounds() -> None:
    with pytest.raises(PolicyError, match="larger than"):
        parse_rules("#" * (1 << 20 + 1))
    with pytest.raises(PolicyError, match=f"more than {MAX_RULES} rules"):
        parse_rules("measure\n" * (MAX_RULES + 1))
    with pytest.raises(PolicyError, match="longer than"):
        parse_rules("measure " + "x" * 9000)
    with pytest.raises(PolicyError, match="NUL"):
        parse_rules("measure\0")


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    path.write_text(
        "appraise keyring=keys digest_type=verity appraise_type=sigv3\n"
        "appraise keyring=/abs digest_type=verity appraise_type=sigv3\n"
    )
    policy = Policy.load(path, mode="log")
    assert policy.mode is Mode.LOG
    assert policy.rules[0].keyring == str(tmp_path.resolve() / "keys")
    assert policy.rules[1].keyring == "/abs"
    assert policy.rules[0].source == str(path)
    path.write_bytes(b"measure \xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.load(path)
    with pytest.raises(PolicyError, match=r"can't read policy .*No such file"):
        Policy.load(tmp_path / "missing")
    path.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(PolicyError, match="larger than"):
        Policy.load(path)


def test_mode_parsing() -> None:
    assert Policy.parse("", mode="FIX").mode is Mode.FIX
    from pyverity.errors import UsageError

    with pytest.raises(UsageError, match="unknown appraise mode"):
        Policy.parse("", mode="strict")
