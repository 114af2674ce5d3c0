"""The exclude-regex engine answers as keylime's ``re.match`` of the joined excludes, in time
linear in the input, and refuses what it will not evaluate without backtracking."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyverity.attest.regex import compile_excludes
from pyverity.errors import PolicyError

PATTERNS = [
    r"/tmp/.*", r"^/var/log/", r"/usr/lib/.*\.pyc$", r"a{2,3}b", r"(ab|cd)+e?", r"[^/]*x",
    r"\d+", r"$", r"^$", r"a$\n", r"(a*)*b", r"[]a]", r"x{", r"\/proc", r"(?:a|b){,2}c",
    r"[a-c\d_]+\Z", r"\w+\s\S", r"(?P<n>ab)?c", r".*\.(so|ko)(\.\d+)*$",
]  # fmt: skip
#: Short enough that re's backtracking on (a*)*b ends quickly (30 a's took 76 s);
#: test_linear_on_pathological_input gives our engine 50,000.
TEXTS = ["/tmp/x", "/var/log/a", "/usr/lib/a.pyc", "aab", "aaab", "ababe", "qqx", "123", "",
         "a\n", "a" * 12 + "c", "]", "x{", "/proc", "bac", "ab1_", "ab c", "c",
         "/lib/x.so.1"]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS)
def test_agrees_with_re_match(pattern: str) -> None:
    m = compile_excludes([pattern])
    for text in TEXTS:
        assert m.match(text) == (re.match(pattern, text) is not None), (pattern, text)


def test_joined_like_keylime() -> None:
    m = compile_excludes(["^/tmp/", r".*\.log$"])
    joined = "(" + ")|(".join(["^/tmp/", r".*\.log$"]) + ")"
    for text in ["/tmp/a", "/x/y.log", "/x/y.logs", "/tm"]:
        assert m.match(text) == (re.match(joined, text) is not None)
    assert not compile_excludes([]).match("/anything")


_ATOMS = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", r"\d", "(a|b)", "(ab)", "^", "$", "1"])
_QUANT = st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,2}", "{,1}"])


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(_ATOMS, _QUANT), min_size=1, max_size=5))
    text = "".join(a + (q if a not in "^$" else "") for a, q in parts)
    if draw(st.booleans()):
        text += "|" + draw(_ATOMS)
    return text


@settings(max_examples=300, deadline=None)
@given(_patterns(), st.text(alphabet="ab1\n", max_size=8))
def test_random_patterns_agree_with_re(pattern: str, text: str) -> None:
    assert compile_excludes([pattern]).match(text) == (re.match(pattern, text) is not None)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(?=a)", "lookaround"),
        (r"(?<!a)b", "lookaround"),
        (r"(?i)a", "group extension"),
        (r"a++", "possessive"),
        (r"(?>a)", "atomic"),
        (r"\bword", "word boundary"),
        (r"a{5000}", "repeat bound"),
        (r"(a", "not a valid regex"),
        (r"*a", "nothing to repeat"),
        (r"\q", "bad escape"),
    ],
)
def test_refusals_are_one_line(pattern: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why) as info:
        compile_excludes([pattern])
    assert "\n" not in str(info.value)


def test_linear_on_pathological_input() -> None:
    m = compile_excludes([r"(a*)*b", r"(a|aa)+$x"])
    start = time.process_time()
    assert not m.match("a" * 50_000)
    assert time.process_time() - start < 5  # re.match would not finish


#: Exclude lines from keylime itself (7.14 era): its test suite's exclude lists
#: (test/test_create_runtime_policy.py, test/test_validators.py) and its user guide
#: (docs/user_guide/runtime_ima.rst: "/tmp/.*"). Keylime accepts the empty line too, and then
#: excludes every name (``re.match("()|…")``).
KEYLIME_EXCLUDES = ["boot_aggregate", "/usr/sbin/bar", "/dev/foo bar", "boot.aggreg*$",
                    "foobar.so(.*)?", "a.*", "b.*", "/tmp/.*", ""]  # fmt: skip
KEYLIME_NAMES = ["boot_aggregate", "boot_aggregat", "boot-aggregatee", "/usr/sbin/bar",
                 "/usr/sbin/barx", "/usr/sbin/ba", "/dev/foo bar", "/dev/foo_bar", "/tmp/x",
                 "/tmp", "foobar.so", "foobar.so.1", "/lib/foobar.so", "abc", "b", "",
                 "c"]  # fmt: skip


@pytest.mark.parametrize("count", range(1, len(KEYLIME_EXCLUDES) + 1))
def test_keylime_patterns_as_keylime_joins_them(count: int) -> None:
    patterns = KEYLIME_EXCLUDES[:count]
    joined = re.compile("(" + ")|(".join(patterns) + ")")  # keylime's valid_exclude_list
    m = compile_excludes(patterns)
    for name in KEYLIME_NAMES:
        assert m.match(name) == (joined.match(name) is not None), (patterns, name)


def test_keylime_refusals_refused_too() -> None:
    for pattern in ("*", "a["):  # refused by keylime's validators (re.error) as by pyverity
        with pytest.raises(re.error):
            re.compile(pattern)
        with pytest.raises(PolicyError, match="not a valid regex"):
            compile_excludes([pattern])


@pytest.mark.parametrize(
    ("patterns", "everything"),
    [([""], True), ([".*"], True), (["^/tmp/", "x*"], True), (["(a|)"], True), ([], False),
     (["^/tmp/"], False), ([".+"], False), (["$"], False)],
)  # fmt: skip
def test_matches_everything(patterns: list[str], everything: bool) -> None:
    m = compile_excludes(patterns)
    assert m.matches_everything is everything
    if everything:
        assert m.match("/any/name")
