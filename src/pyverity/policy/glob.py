"""``path=`` globs, matched without backtracking.

The syntax (docs/policy.md): ``*`` matches any run of characters other than ``/``, ``**`` any
run including ``/``, ``?`` one character other than ``/``, ``[...]`` one character other than
``/`` in (or, with a leading ``!`` or ``^``, not in) a set of characters and ``a-z`` ranges;
a ``]`` right after the opening ``[`` (or its ``!``/``^``) belongs to the set, and a ``[``
without a closing ``]`` is an ordinary character. Every other character matches itself. The
whole path must match.

The matcher is a bit-parallel NFA (shift-and): one bit per pattern position, one pass over the
name. Each character costs a few operations on an ``m``-bit integer, so a match is
O(n · ⌈m/64⌉) word operations for a name of ``n`` characters and a pattern of ``m`` tokens,
whatever the stars: there is no backtracking and no exponential case. Memory is O(m) plus one
cached pair of masks per distinct character of the name.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

__all__ = ["Glob", "compile_glob"]


@dataclass(frozen=True)
class _Set:
    negated: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def accepts(self, c: str) -> bool:
        if c == "/":
            return False
        inside = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)
        return inside != self.negated


def _parse_set(pattern: str, i: int) -> tuple[_Set, int] | None:
    """The set opening at ``pattern[i] == '['`` and the index after it, or ``None``."""
    j = i + 1
    negated = j < len(pattern) and pattern[j] in "!^"
    if negated:
        j += 1
    start = j
    end = pattern.find("]", start + 1)
    if end == -1:
        return None
    body = pattern[start:end]
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo > hi:
                raise ValueError(f"bad range {lo}-{hi} in {pattern[i : end + 1]}")
            ranges.append((lo, hi))
            k += 3
        else:
            chars.add(body[k])
            k += 1
    return _Set(negated, frozenset(chars), tuple(ranges)), end + 1


@dataclass(frozen=True)
class Glob:
    """A compiled glob: :meth:`matches` tests a whole path."""

    pattern: str
    #: The literal characters the pattern starts and ends with (a cheap filter).
    prefix: str = field(repr=False)
    suffix: str = field(repr=False)
    _final: int = field(repr=False)
    _stars: int = field(repr=False)  # bits of * and ** positions
    _dstars: int = field(repr=False)  # bits of ** positions
    _one: int = field(repr=False)  # bits of ? positions
    _literals: dict[str, int] = field(repr=False, compare=False)
    _sets: tuple[tuple[int, _Set], ...] = field(repr=False, compare=False)

    def _closure(self, d: int) -> int:
        # a star may match nothing; stars never follow each other, so one step suffices
        return d | ((d & self._stars) << 1)

    def matches(self, name: str) -> bool:
        prefix, suffix = self.prefix, self.suffix
        if (
            not name.startswith(prefix)
            or not name.endswith(suffix)
            or len(name) < len(prefix) + len(suffix)
        ):
            return False
        stars, dstars = self._stars, self._dstars
        masks: dict[str, tuple[int, int]] = {}
        # the leading literals are matched: start after them
        d = self._closure(1 << len(prefix))
        for c in itertools.islice(name, len(prefix), None):
            m = masks.get(c)
            if m is None:
                accept = self._literals.get(c, 0)
                if c != "/":
                    accept |= self._one
                for bit, s in self._sets:
                    if s.accepts(c):
                        accept |= bit
                m = masks[c] = (accept, dstars if c == "/" else stars)
            # a token that takes c moves on; a star that takes c stays
            d = (d & m[0]) << 1 | (d & m[1])
            if not d:
                return False
            d |= (d & stars) << 1
        return bool(d & self._final)


def compile_glob(pattern: str) -> Glob:
    """Compile ``pattern``; :class:`ValueError` for a set with a reversed range."""
    stars = dstars = one = 0
    literals: dict[str, int] = {}
    sets: list[tuple[int, _Set]] = []
    pos = 0  # the bit of the next token
    i = 0
    prefix: list[str] = []  # leading literal tokens
    suffix: list[str] = []  # literal tokens since the last other token
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            double = pattern.startswith("**", i)
            i += 2 if double else 1
            prev = 1 << (pos - 1) if pos else 0
            if stars & prev:
                # ``*`` next to ``**`` is ``**``; ``*`` next to ``*`` is ``*``
                dstars |= prev if double else 0
                continue
            bit = 1 << pos
            stars |= bit
            dstars |= bit if double else 0
            suffix.clear()
        elif c == "[" and (parsed := _parse_set(pattern, i)) is not None:
            sets.append((1 << pos, parsed[0]))
            i = parsed[1]
            suffix.clear()
        elif c == "?":
            one |= 1 << pos
            i += 1
            suffix.clear()
        else:
            literals[c] = literals.get(c, 0) | 1 << pos
            if len(prefix) == pos:
                prefix.append(c)
            suffix.append(c)
            i += 1
        pos += 1
    head = "".join(prefix)
    tail = "" if len(prefix) == pos else "".join(suffix)
    return Glob(pattern, head, tail, 1 << pos, stars, dstars, one, literals, tuple(sets))
