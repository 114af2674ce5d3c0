"""Keylime ``excludes`` regexes evaluated without backtracking: parsed, compiled to an NFA, and
run as a Thompson/Pike simulation whose cost is linear in the input.

Keylime joins its exclude regexes as ``(r1)|(r2)|…`` and asks Python's :func:`re.match` (a match
that starts at the first character and may end anywhere). :func:`compile_excludes` gives a
:class:`Matcher` with exactly that meaning for the subset keylime policies use:

- literals and escapes (``\\.``, ``\\/``, ``\\n``, ``\\t``, ``\\xhh``, ``\\uhhhh``), ``.``
  (anything but a newline), classes ``[a-z_]``, ``[^/]`` and ``\\d \\w \\s \\D \\W \\S``
  (Unicode, as :mod:`re` has them for text);
- anchors ``^``/``\\A`` (the start) and ``$`` (the end, or before a final newline), ``\\Z``;
- ``*``, ``+``, ``?`` (lazy forms too: they change which match, not whether one exists),
  ``{m}``, ``{m,}``, ``{,n}``, ``{m,n}`` with bounds up to :data:`MAX_REPEAT`;
- alternation, groups ``(…)``, ``(?:…)`` and ``(?P<name>…)``.

Anything else is refused with :class:`~pyverity.errors.PolicyError` (one line naming the
construct): backreferences, lookaround, possessive quantifiers and atomic groups, inline flags,
conditionals, word boundaries, and programs larger than :data:`MAX_PROGRAM`. The simulation
keeps a set of NFA states per input position (a lazily built DFA, its cache bounded by
:data:`MAX_DFA_STATES`), so no input makes it take more than ``len(input) × program size``
steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyverity.errors import PolicyError

__all__ = ["MAX_DFA_STATES", "MAX_PROGRAM", "MAX_REPEAT", "Matcher", "compile_excludes"]

#: The largest ``{m,n}`` bound accepted (Python's own limit is far larger; policies use few).
MAX_REPEAT = 1000
#: NFA instructions a set of excludes may compile to.
MAX_PROGRAM = 100_000
#: DFA states kept; the cache is dropped and rebuilt beyond this (memory stays bounded).
MAX_DFA_STATES = 4096

# -- syntax tree --------------------------------------------------------------------------------

Pred = Callable[[str], bool]


@dataclass(frozen=True)
class _Set:
    """One character out of ranges and predicates, possibly negated."""

    ranges: tuple[tuple[int, int], ...]
    preds: tuple[Pred, ...] = ()
    negate: bool = False

    def test(self, ch: str) -> bool:
        c = ord(ch)
        hit = any(lo <= c <= hi for lo, hi in self.ranges) or any(p(ch) for p in self.preds)
        return hit != self.negate


@dataclass(frozen=True)
class _Anchor:
    kind: str  # "bol" | "eol" | "eos"


@dataclass(frozen=True)
class _Cat:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    options: tuple[_Node, ...]


@dataclass(frozen=True)
class _Repeat:
    node: _Node
    low: int
    high: int | None  # None: unbounded


_Node = _Set | _Anchor | _Cat | _Alt | _Repeat


def _is_digit(ch: str) -> bool:
    return ch.isdecimal()


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _is_space(ch: str) -> bool:
    return ch.isspace()


_CLASS_ESCAPES: dict[str, tuple[Pred, bool]] = {
    "d": (_is_digit, False),
    "D": (_is_digit, True),
    "w": (_is_word, False),
    "W": (_is_word, True),
    "s": (_is_space, False),
    "S": (_is_space, True),
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_DOT = _Set((), (lambda ch: ch == "\n",), negate=True)


class _Parser:
    def __init__(self, pattern: str, what: str) -> None:
        self.p, self.i, self.what = pattern, 0, what

    def refuse(self, why: str) -> PolicyError:
        return PolicyError(f"{self.what} {self.p!r}: {why} (pyverity evaluates regexes without"
                           " backtracking and refuses this construct)")  # fmt: skip

    def bad(self, why: str) -> PolicyError:
        return PolicyError(f"{self.what} {self.p!r} is not a valid regex: {why}")

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    def parse(self) -> _Node:
        node = self.alternation()
        if self.i < len(self.p):
            raise self.bad(f"unbalanced parenthesis at position {self.i}")
        return node

    def alternation(self) -> _Node:
        options = [self.concat()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.concat())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def concat(self) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else _Cat(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        bounds = self.quantifier()
        if bounds is None:
            return atom
        if isinstance(atom, _Anchor):
            raise self.bad("nothing to repeat")
        low, high = bounds
        if self.peek() == "?":
            self.i += 1  # lazy: the same language
        elif self.peek() == "+":
            raise self.refuse("possessive quantifier")
        if self.quantifier(probe=True) is not None:
            raise self.bad("multiple repeat")
        return _Repeat(atom, low, high)

    def quantifier(self, *, probe: bool = False) -> tuple[int, int | None] | None:
        c = self.peek()
        simple = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        if c in simple:
            if not probe:
                self.i += 1
            return simple[c]
        if c != "{":
            return None
        end = self.p.find("}", self.i)
        if end < 0:
            return None
        body = self.p[self.i + 1 : end]
        low_s, comma, high_s = body.partition(",")
        if not all(part.isascii() and (part.isdigit() or not part) for part in (low_s, high_s)):
            return None  # a literal '{', as in Python
        if not comma and not low_s:
            return None
        low = int(low_s) if low_s else 0
        high = int(high_s) if high_s else (None if comma else low)
        if probe:
            return low, high
        if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
            raise self.refuse(f"a repeat bound above {MAX_REPEAT}")
        if high is not None and high < low:
            raise self.bad("min repeat greater than max repeat")
        self.i = end + 1
        return low, high

    def atom(self) -> _Node:
        c = self.peek()
        self.i += 1
        if c == "(":
            return self.group()
        if c == ".":
            return _DOT
        if c == "^":
            return _Anchor("bol")
        if c == "$":
            return _Anchor("eol")
        if c == "[":
            return self.char_class()
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?":
            raise self.bad("nothing to repeat")
        if c == "{" and self.quantifier(probe=True) is not None:
            self.i -= 1
            raise self.bad("nothing to repeat")
        return _Set(((ord(c), ord(c)),))

    def group(self) -> _Node:
        if self.peek() == "?":
            nxt = self.peek(1)
            if nxt == ":":
                self.i += 2
            elif nxt == "P" and self.peek(2) == "<":
                end = self.p.find(">", self.i)
                name = self.p[self.i + 3 : end] if end > 0 else ""
                if not name.isidentifier():
                    raise self.bad("bad group name")
                self.i = end + 1
            elif nxt == "P" and self.peek(2) == "=":
                raise self.refuse("a backreference (?P=...)")
            elif nxt in ("=", "!") or (nxt == "<" and self.peek(2) in ("=", "!")):
                raise self.refuse("lookaround")
            elif nxt == ">":
                raise self.refuse("an atomic group")
            elif nxt == "(":
                raise self.refuse("a conditional group")
            elif nxt == "#":
                raise self.refuse("a comment group")
            else:
                raise self.refuse(f"the group extension (?{nxt}")
        node = self.alternation()
        if self.peek() != ")":
            raise self.bad("missing ), unterminated subpattern")
        self.i += 1
        return node

    def escape(self, *, in_class: bool) -> _Node:
        c = self.peek()
        if not c:
            raise self.bad("bad escape (end of pattern)")
        self.i += 1
        if c in _CLASS_ESCAPES:
            pred, negate = _CLASS_ESCAPES[c]
            return _Set((), (pred,), negate)
        if c in _CHAR_ESCAPES:
            return _lit(_CHAR_ESCAPES[c])
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i : self.i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.bad(f"incomplete escape \\{c}{digits}")
            self.i += width
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.bad(f"bad escape \\{c}{digits}")
            return _lit(chr(code))
        if not in_class and c == "A":
            return _Anchor("bol")
        if not in_class and c == "Z":
            return _Anchor("eos")
        if c.isdigit():
            raise self.refuse("a backreference or octal escape")
        if c in "bB":
            raise self.refuse("a word boundary")
        if c.isascii() and c.isalpha():
            raise self.bad(f"bad escape \\{c}")
        return _lit(c)

    def char_class(self) -> _Node:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        preds: list[Pred] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise self.bad("unterminated character set")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self.peek(1) in (":", "=", "."):
                raise self.refuse("a POSIX class or nested set")
            lo = self.class_item()
            if isinstance(lo, _Set):  # \d, \w, \s and their negations
                preds.append(_set_pred(lo))
                continue
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                hi = self.class_item()
                if isinstance(hi, _Set):
                    raise self.bad("bad character range")
                if ord(hi) < ord(lo):
                    raise self.bad(f"bad character range {lo}-{hi}")
                ranges.append((ord(lo), ord(hi)))
            else:
                ranges.append((ord(lo), ord(lo)))
        return _Set(tuple(ranges), tuple(preds), negate)

    def class_item(self) -> str | _Set:
        c = self.peek()
        self.i += 1
        if c != "\\":
            return c
        if self.peek() == "b":
            self.i += 1
            return "\b"
        node = self.escape(in_class=True)
        assert isinstance(node, _Set)  # noqa: S101 - escape() only returns sets in a class
        if node.preds:
            return node
        return chr(node.ranges[0][0])


def _lit(ch: str) -> _Set:
    return _Set(((ord(ch), ord(ch)),))


def _set_pred(s: _Set) -> Pred:
    return s.test


# -- compiled program ---------------------------------------------------------------------------

_CHAR, _SPLIT, _JMP, _MATCH, _ASSERT = range(5)


class _Compiler:
    def __init__(self, what: str) -> None:
        self.code: list[tuple[int, object, int]] = []
        self.what = what

    def emit(self, op: int, arg: object = None, arg2: int = 0) -> int:
        if len(self.code) >= MAX_PROGRAM:
            raise PolicyError(
                f"{self.what}: the regexes compile to more than {MAX_PROGRAM} states (refused)"
            )
        self.code.append((op, arg, arg2))
        return len(self.code) - 1

    def patch(self, at: int, arg: object, arg2: int = 0) -> None:
        op = self.code[at][0]
        self.code[at] = (op, arg, arg2)

    def node(self, n: _Node) -> None:
        if isinstance(n, _Set):
            self.emit(_CHAR, n)
        elif isinstance(n, _Anchor):
            self.emit(_ASSERT, n.kind)
        elif isinstance(n, _Cat):
            for item in n.items:
                self.node(item)
        elif isinstance(n, _Alt):
            self.alternatives(n.options)
        else:
            self.repeat(n)

    def alternatives(self, options: Sequence[_Node]) -> None:
        jumps = []
        for k, option in enumerate(options):
            if k == len(options) - 1:
                self.node(option)
                break
            split = self.emit(_SPLIT)
            self.node(option)
            jumps.append(self.emit(_JMP))
            self.patch(split, split + 1, len(self.code))
        for j in jumps:
            self.patch(j, len(self.code))

    def repeat(self, r: _Repeat) -> None:
        for _ in range(r.low):
            self.node(r.node)
        if r.high is None:
            split = self.emit(_SPLIT)
            self.node(r.node)
            self.emit(_JMP, split)
            self.patch(split, split + 1, len(self.code))
            return
        splits = []
        for _ in range(r.high - r.low):
            splits.append(self.emit(_SPLIT))
            self.node(r.node)
        for s in splits:
            self.patch(s, s + 1, len(self.code))


class Matcher:
    """``match(text)``: whether one of the regexes matches at the start of ``text``, as keylime's
    ``re.match`` of the joined excludes would answer. Linear in ``len(text)``."""

    def __init__(self, code: list[tuple[int, object, int]], count: int) -> None:
        self._code = code
        self.count = count
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._step: dict[tuple[int, str], int] = {}
        self._eol: dict[int, int] = {}
        self._accepts: list[bool] = []
        self._generation = 0
        self._start = self._intern(self._closure((0,), bol=True, eol=False))

    def _closure(self, pcs: Sequence[int], *, bol: bool, eol: bool, eos: bool = False) -> set[int]:
        """The CHAR/MATCH states reachable through splits, jumps and the assertions that hold;
        an ``eol``/``eos`` assertion that does not hold here is kept (it may hold later)."""
        code = self._code
        out: set[int] = set()
        seen: set[int] = set()
        stack = list(pcs)
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op, arg, arg2 = code[pc]
            if op == _SPLIT:
                assert isinstance(arg, int)  # noqa: S101
                stack += (arg2, arg)
            elif op == _JMP:
                assert isinstance(arg, int)  # noqa: S101
                stack.append(arg)
            elif op == _ASSERT:
                if (arg == "bol" and bol) or (arg == "eol" and eol) or (arg == "eos" and eos):
                    stack.append(pc + 1)
                elif arg != "bol":
                    out.add(pc)
            else:
                out.add(pc)
        return out

    def _intern(self, states: set[int]) -> int:
        key = frozenset(states)
        found = self._ids.get(key)
        if found is not None:
            return found
        if len(self._sets) >= MAX_DFA_STATES:  # bounded: start again from the start state
            start = self._sets[self._start]
            self._generation += 1
            self._ids, self._sets, self._step, self._eol, self._accepts = {}, [], {}, {}, []
            self._start = self._intern(set(start))
            found = self._ids.get(key)
            if found is not None:
                return found
        self._ids[key] = len(self._sets)
        self._sets.append(key)
        self._accepts.append(any(self._code[pc][0] == _MATCH for pc in key))
        return len(self._sets) - 1

    def _at_end(self, state: int, *, eos: bool, bol: bool) -> int:
        """The state with the ``$`` (and at the very end ``\\Z``) assertions passed."""
        cache_key = state * 4 + eos * 2 + bol
        found = self._eol.get(cache_key)
        if found is None:
            holds = ("eol", "eos") if eos else ("eol",)
            pending = [
                pc + 1
                for pc in self._sets[state]
                if self._code[pc][0] == _ASSERT and self._code[pc][1] in holds
            ]
            more = self._closure(pending, bol=bol, eol=True, eos=eos) if pending else set()
            generation = self._generation
            found = self._intern(set(self._sets[state]) | more)
            if generation == self._generation:
                self._eol[cache_key] = found
        return found

    def _next(self, state: int, ch: str) -> int:
        key = (state, ch)
        found = self._step.get(key)
        if found is None:
            targets = []
            for pc in self._sets[state]:
                op, arg, _ = self._code[pc]
                if op == _CHAR and isinstance(arg, _Set) and arg.test(ch):
                    targets.append(pc + 1)
            generation = self._generation
            found = self._intern(self._closure(targets, bol=False, eol=False))
            if generation == self._generation:  # a state id of before a reset is stale
                self._step[key] = found
        return found

    @property
    def matches_everything(self) -> bool:
        """Whether every name matches: one regex matches the empty prefix (``''``, ``.*``),
        which excludes every file from a keylime policy."""
        return bool(self.count) and self._accepts[self._start]

    def match(self, text: str) -> bool:
        if not self.count:
            return False
        state = self._start
        n = len(text)
        for i, ch in enumerate(text):
            if self._accepts[state]:
                return True
            if i == n - 1 and ch == "\n":  # '$' holds before a final newline
                state = self._at_end(state, eos=False, bol=i == 0)
                if self._accepts[state]:
                    return True
            state = self._next(state, ch)
            if not self._sets[state]:
                return False
        return self._accepts[state] or self._accepts[self._at_end(state, eos=True, bol=n == 0)]


def compile_excludes(patterns: Sequence[str], what: str = "exclude") -> Matcher:
    """One :class:`Matcher` for all ``patterns`` (keylime's ``(p1)|(p2)|…``); refuses what it
    will not evaluate safely with :class:`~pyverity.errors.PolicyError`."""
    trees = [_Parser(p, f"{what} {k + 1}").parse() for k, p in enumerate(patterns)]
    comp = _Compiler(what)
    if trees:
        comp.alternatives(trees)
    comp.emit(_MATCH)
    return Matcher(comp.code, len(trees))
