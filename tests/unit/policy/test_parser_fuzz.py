"""Hostile policy text: only PolicyError ever comes out, and accepted rules keep their order."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.errors import PolicyError
from pyverity.policy import AccessContext, Policy

TOKENS = [
    "measure",
    "dont_measure",
    "appraise",
    "dont_appraise",
    "audit",
    "hash",
    "func=FILE_CHECK",
    "func=MMAP_CHECK",
    "func=KEY_CHECK",
    "func=MODULE_CHECK",
    "mask=MAY_READ",
    "mask=^MAY_EXEC",
    "uid=0",
    "euid>5",
    "gid<3",
    "fowner=1000",
    "fgroup>1",
    "fsmagic=ef53",
    "fsname=ext4",
    "fsuuid=0a1b2c3d-0000-4000-8000-00000000000f",
    "digest_type=verity",
    "appraise_type=sigv3",
    "appraise_type=imasig",
    "template=ima-sigv2",
    "template=ima-ng",
    "pcr=11",
    "keyrings=.ima",
    "path=/srv/**",
    "keyring=/k",
    "permit_directio",
    "appraise_algos=sha256",
    "#",
    "obj_type=x",
    "=",
    "uid=",
    "mask=",
    "\t",
]


@given(st.lists(st.lists(st.sampled_from(TOKENS), max_size=7), max_size=6))
@settings(max_examples=400, deadline=None)
def test_only_policy_errors(lines: list[list[str]]) -> None:
    text = "\n".join(" ".join(tokens) for tokens in lines)
    try:
        policy = Policy.parse(text)
    except PolicyError as exc:
        message = str(exc)
        policy = None
    if policy is None:
        assert message.startswith("<policy>:")
        return
    assert [r.line for r in policy.rules] == sorted(r.line for r in policy.rules)
    d = policy.decide(AccessContext(uid=0, fowner=1000, fgroup=0, path="/srv/x"))
    assert d.measure_rule is None or d.measure_rule in policy.rules


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text(text: str) -> None:
    with contextlib.suppress(PolicyError):
        policy = Policy.parse(text)
        lines = text.split("\n")
        assert all(0 < r.line <= len(lines) for r in policy.rules)
