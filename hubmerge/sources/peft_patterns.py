"""PEFT's ``rank_pattern`` / ``alpha_pattern`` key matching, without backtracking.

PEFT (``peft.utils.other.get_pattern_key``) picks, for a module name, the first key ``k`` of the pattern dict
for which ``re.match(rf"(.*\\.)?({k})$", name)`` succeeds, and falls back to the name itself. The keys come
from an ``adapter_config.json`` anyone can publish, and Python's backtracking ``re`` takes exponential time on
keys like ``([a-z_.0-9]+)+X``. Here the same test is answered by a Thompson/Pike simulation of the key's
parse tree (Python's own parser, so the syntax is exactly ``re``'s): every state set is visited once per
character, so a match costs at most ``len(name) * len(program)`` steps, and a budget bounds the steps one
adapter may spend in all.

Supported: literals, ``.``, classes and categories (``\\d \\w \\s``, Unicode as ``re`` has them), groups,
alternation, greedy and lazy repeats (laziness does not change *whether* there is a match), ``^ $ \\A \\Z \\b
\\B``, the ``s``, ``m`` and ``x`` flags. Refused with a one-line error, as features whose semantics a
backtracking-free matcher cannot give: backreferences, lookaround, conditionals, atomic groups and
possessive repeats, and the ``i``/``a``/``L`` flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

try:  # Python 3.11+
    import re._constants as _c
    import re._parser as _parser
except ImportError:  # pragma: no cover - 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

MAX_PATTERN_CHARS = 1000  # one key
MAX_PROGRAM = 4096  # instructions of one compiled key (counted repeats expand)
MAX_STEPS = 20_000_000  # simulation steps one adapter config may spend matching its patterns


class PatternError(ValueError):
    """A key this matcher refuses (the caller turns it into a one-line error naming the key)."""


# Instructions: (CHAR, predicate) | (SPLIT, a, b) | (JMP, a) | (ASSERT, kind) | (MATCH,)
CHAR, SPLIT, JMP, ASSERT, MATCH = range(5)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


_CATEGORIES: dict[object, Callable[[str], bool]] = {
    _c.CATEGORY_DIGIT: str.isdecimal,
    _c.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    _c.CATEGORY_SPACE: str.isspace,
    _c.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
    _c.CATEGORY_WORD: _is_word,
    _c.CATEGORY_NOT_WORD: lambda ch: not _is_word(ch),
}


def _char_set(items) -> Callable[[str], bool]:
    negate = bool(items) and items[0][0] is _c.NEGATE
    chars: set[str] = set()
    ranges: list[tuple[int, int]] = []
    cats: list[Callable[[str], bool]] = []
    for op, av in items[1:] if negate else items:
        if op is _c.LITERAL:
            chars.add(chr(av))
        elif op is _c.RANGE:
            ranges.append(av)
        elif op is _c.CATEGORY and av in _CATEGORIES:
            cats.append(_CATEGORIES[av])
        else:
            raise PatternError(f"the character class item {op} is not supported")

    def test(ch: str) -> bool:
        hit = ch in chars or any(lo <= ord(ch) <= hi for lo, hi in ranges) or any(f(ch) for f in cats)
        return hit != negate

    return test


class _Compiler:
    def __init__(self) -> None:
        self.prog: list[tuple] = []

    def emit(self, *instr) -> int:
        if len(self.prog) >= MAX_PROGRAM:
            raise PatternError(f"it is too complex (more than {MAX_PROGRAM} steps once repeats are expanded)")
        self.prog.append(instr)
        return len(self.prog) - 1

    def patch(self, at: int, *instr) -> None:
        self.prog[at] = instr

    def seq(self, items, flags: int) -> None:
        for op, av in items:
            self.node(op, av, flags)

    def node(self, op, av, flags: int) -> None:
        if op is _c.LITERAL:
            ch = chr(av)
            self.emit(CHAR, ch.__eq__)
        elif op is _c.NOT_LITERAL:
            ch = chr(av)
            self.emit(CHAR, ch.__ne__)
        elif op is _c.ANY:
            self.emit(CHAR, (lambda ch: True) if flags & _c.SRE_FLAG_DOTALL else "\n".__ne__)
        elif op is _c.IN:
            self.emit(CHAR, _char_set(av))
        elif op is _c.SUBPATTERN:
            _group, add, remove, sub = av
            self.seq(sub, _flags((flags | add) & ~remove))
        elif op is _c.BRANCH:
            jumps = []
            alternatives = av[1]
            for i, alt in enumerate(alternatives):
                if i < len(alternatives) - 1:
                    split = self.emit(SPLIT, None, None)
                    self.seq(alt, flags)
                    jumps.append(self.emit(JMP, None))
                    self.patch(split, SPLIT, split + 1, len(self.prog))
                else:
                    self.seq(alt, flags)
            for j in jumps:
                self.patch(j, JMP, len(self.prog))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, high, item = av
            for _ in range(low):
                self.seq(item, flags)
            if high is _c.MAXREPEAT:
                split = self.emit(SPLIT, None, None)
                self.seq(item, flags)
                self.emit(JMP, split)
                self.patch(split, SPLIT, split + 1, len(self.prog))
            else:
                splits = []
                for _ in range(high - low):
                    splits.append(self.emit(SPLIT, None, None))
                    self.seq(item, flags)
                for s in splits:
                    self.patch(s, SPLIT, s + 1, len(self.prog))
        elif op is _c.AT:
            kind = av
            if flags & _c.SRE_FLAG_MULTILINE:
                kind = {_c.AT_BEGINNING: _c.AT_BEGINNING_LINE, _c.AT_END: _c.AT_END_LINE}.get(kind, kind)
            if kind not in _AT:
                raise PatternError(f"the anchor {kind} is not supported")
            self.emit(ASSERT, kind)
        else:
            what = {_c.GROUPREF: "backreferences", _c.GROUPREF_EXISTS: "conditional groups",
                    _c.ASSERT: "lookahead/lookbehind", _c.ASSERT_NOT: "lookahead/lookbehind",
                    _c.POSSESSIVE_REPEAT: "possessive repeats", _c.ATOMIC_GROUP: "atomic groups"}.get(op, str(op))
            raise PatternError(f"it uses {what}, which hubmerge does not evaluate")


def _at(kind, s: str, i: int) -> bool:
    n = len(s)
    if kind is _c.AT_BEGINNING or kind is _c.AT_BEGINNING_STRING:
        return i == 0
    if kind is _c.AT_BEGINNING_LINE:
        return i == 0 or s[i - 1] == "\n"
    if kind is _c.AT_END:
        return i == n or (i == n - 1 and s[i] == "\n")
    if kind is _c.AT_END_LINE:
        return i == n or s[i] == "\n"
    if kind is _c.AT_END_STRING:
        return i == n
    if n == 0:  # sre: neither \b nor \B holds in an empty string
        return False
    before = i > 0 and _is_word(s[i - 1])
    after = i < n and _is_word(s[i])
    return (before != after) == (kind is _c.AT_BOUNDARY)


_AT = {_c.AT_BEGINNING, _c.AT_BEGINNING_STRING, _c.AT_BEGINNING_LINE, _c.AT_END, _c.AT_END_LINE,
       _c.AT_END_STRING, _c.AT_BOUNDARY, _c.AT_NON_BOUNDARY}


def _flags(flags: int) -> int:
    if flags & (_c.SRE_FLAG_IGNORECASE | _c.SRE_FLAG_ASCII | _c.SRE_FLAG_LOCALE):
        raise PatternError("it uses the i, a or L flag, which hubmerge does not evaluate")
    return flags


@dataclass(frozen=True)
class Pattern:
    key: str
    prog: tuple
    fixed: tuple | None  # predicates of a key that is a fixed-length run of single characters, else None

    def matches(self, name: str, budget: list[int]) -> bool:
        """``re.match(rf"(.*\\.)?({key})$", name)`` is not None; spends steps from ``budget[0]``."""
        if self.fixed is not None:
            return self._matches_fixed(name)
        return _run(self.prog, name, budget)

    def _matches_fixed(self, name: str) -> bool:
        n, width = len(name), len(self.fixed)
        for end in (n, n - 1) if name.endswith("\n") else (n,):
            start = end - width
            if start < 0:
                continue
            prefix_ok = start == 0 or (name[start - 1] == "." and "\n" not in name[:start])
            if prefix_ok and all(test(ch) for test, ch in zip(self.fixed, name[start:end])):
                return True
        return False


@lru_cache(maxsize=4096)
def compile_key(key: str) -> Pattern:
    """The matcher for one pattern key; ``PatternError`` says why a key is refused."""
    if len(key) > MAX_PATTERN_CHARS:
        raise PatternError(f"it is longer than {MAX_PATTERN_CHARS} characters")
    try:  # exactly the expression PEFT hands to re.match (so a key with a stray ")" means what it means there)
        tree = _parser.parse(rf"(.*\.)?({key})$")
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise PatternError(f"it is not a valid regular expression ({getattr(exc, 'msg', str(exc))[:120]})") from None
    comp = _Compiler()
    comp.seq(list(tree), _flags(tree.state.flags))
    comp.emit(MATCH)
    return Pattern(key, tuple(comp.prog), _fixed_body(list(tree)))


def _fixed_body(tree: list) -> tuple | None:
    r"""For ``(.*\.)?(<key>)$`` where the key is a run of single characters: their predicates."""
    if len(tree) != 3 or tree[1][0] is not _c.SUBPATTERN or tree[2] != (_c.AT, _c.AT_END):
        return None
    _group, add, remove, body = tree[1][1]
    if add or remove or not all(op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN) for op, _ in body):
        return None
    comp = _Compiler()
    comp.seq(list(body), _c.SRE_FLAG_UNICODE)
    return tuple(instr[1] for instr in comp.prog)


def _run(prog: tuple, s: str, budget: list[int]) -> bool:
    def closure(pcs, i):
        out, stack, seen = [], list(pcs), set()
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            instr = prog[pc]
            op = instr[0]
            if op == SPLIT:
                stack.extend((instr[2], instr[1]))
            elif op == JMP:
                stack.append(instr[1])
            elif op == ASSERT:
                if _at(instr[1], s, i):
                    stack.append(pc + 1)
            else:
                out.append(pc)
        budget[0] -= len(seen)
        return out

    threads = closure([0], 0)
    for i, ch in enumerate(s):
        if budget[0] < 0:
            raise PatternError("matching it against the module names takes too long")
        if any(prog[pc][0] == MATCH for pc in threads):
            return True
        threads = closure([pc + 1 for pc in threads if prog[pc][0] == CHAR and prog[pc][1](ch)], i + 1)
        if not threads:
            return False
    return any(prog[pc][0] == MATCH for pc in threads)


def new_budget() -> list[int]:
    return [MAX_STEPS]


def pattern_key(patterns: dict, name: str, budget: list[int] | None = None) -> str:
    """PEFT's ``get_pattern_key``: the first key of ``patterns`` matching the end of ``name``, else ``name``."""
    budget = budget if budget is not None else new_budget()
    for key in patterns:
        if compile_key(key).matches(name, budget):
            return key
    return name
