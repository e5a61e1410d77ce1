"""Refuse targeting regexes whose matching time can explode: Python's `re` backtracks and cannot be stopped.

A `$regex` condition runs on the request path (the ranker's event loop) against an attribute the caller
chooses, and `re` holds the GIL until it returns: `(a+)+$` took 18 s on "a" * 28 + "b" and doubles with every
"a"; `.*.*=` took 0.9 s on a 1 KiB value (the servers' limit per attribute). Neither a thread nor a signal
can interrupt it, so the pattern is checked once, when the config loads, and refused when its worst case is
worse than quadratic in the attribute's length:

* exponential: some part that repeats can match the same text in two ways (a quantifier under a quantifier
  over the same characters, `(a+)+`, `(\\w+\\s?)+`; overlapping alternatives under a quantifier, `(a|b|ab)*`);
* cubic or more: three quantifiers in a row that can all take the same characters, counting the search's own
  implicit `.*?` in front of an unanchored pattern (`.*.*=`, `\\d+\\d+x`, `.*foo.*bar`, `foo.*bar.*baz`).

What stays allowed is at most quadratic (`foo.*bar`, `^(\\d+\\.)+\\d+$`, e-mail patterns whose repeated parts
are separated by characters they do not take): on 1 KiB, about a millisecond for such patterns, and 0.15 s for
the slowest of 558 random accepted patterns tried on adversarial values (none is worse than quadratic, but
constant factors remain: a group under a quantifier is slower per step than a class).

The check is the ambiguity analysis of Weideman et al., "Analyzing Matching Time Behavior of Backtracking
Regular Expression Matchers by Using Ambiguity of NFA" (CIAA 2016), run on what `re` executes (the
translated pattern as `re`'s own parser reads it): an NFA with one state per character position, counting the
distinct empty paths `re` tries between positions (`(a|a)*` is parsed as `(a(?:|))*`: two ways per "a");
exponential when two distinct same-text paths lead from a state back to itself, degree d when d nested loops
can each take a same text in two ways (time grows as n**(d + 1)). Lookarounds whose body can repeat are
counted as a `[\\s\\S]*` where they stand (they scan ahead at each try) and checked on their own; bounded
ones as empty. A count above one is read as `+` (`*` from 0), except `c{n}` of one class: this can only
overestimate, and bounded repetitions multiply constant factors that took a "quadratic" pattern to a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any, TypeVar

Charset = tuple[tuple[int, int], ...]
"""Sorted, disjoint, inclusive ranges of code points."""

_TOP = 0x10FFFF
_ANY: Charset = ((0, _TOP),)
_MANY = 2  # path counts are capped: 2 means "more than one"
_EXPAND = 64  # the longest c{n} of one character class kept exact (longer: c+)
BUDGET = 300_000
"""Product-automaton steps one pattern may take to check; a pattern needing more is refused as too complex."""


class TooComplex(Exception):
    """The check ran out of budget."""


def _normalise(ranges: Iterable[tuple[int, int]]) -> Charset:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ranges: Charset) -> Charset:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _TOP:
        out.append((start, _TOP))
    return tuple(out)


def _intersect(a: Charset, b: Charset) -> Charset:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _charset(op: Any, av: Any) -> Charset | None:
    """The characters one single-character item takes; None for anything else."""
    if op is sre.LITERAL:
        return ((av, av),)
    if op is sre.NOT_LITERAL:
        return _complement(((av, av),))
    if op is sre.ANY:
        return _ANY  # with or without DOTALL: more characters can only overestimate
    if op is sre.IN:
        negate, ranges = False, []
        for item_op, item_av in av:
            if item_op is sre.NEGATE:
                negate = True
            elif item_op is sre.LITERAL:
                ranges.append((item_av, item_av))
            elif item_op is sre.RANGE:
                ranges.append(item_av)
            else:  # a category (\d, \s, ...): the translation spells them out; any is an overestimate
                ranges.append((0, _TOP))
        normal = _normalise(ranges)
        return _complement(normal) if negate else normal
    return None


def _add(into: dict[int, int], counts: dict[int, int], times: int = 1) -> None:
    if times:
        for key, n in counts.items():
            into[key] = min(_MANY, into.get(key, 0) + n * times)


@dataclass
class _Fragment:
    """A sub-pattern's Glushkov sets, each position with the number of distinct empty paths to it."""

    empty: int  # empty paths through it (0: it takes a character, 2: several ways to take none)
    first: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)


class _Automaton:
    """Positions (one per character a match takes) and the counted paths between them."""

    def __init__(self) -> None:
        self.sets: list[Charset] = []
        self.follow: list[dict[int, int]] = []
        self.inner: list[list[Any]] = []  # lookaround bodies that can repeat, checked on their own

    def position(self, chars: Charset) -> _Fragment:
        self.sets.append(chars)
        self.follow.append({})
        p = len(self.sets) - 1
        return _Fragment(0, {p: 1}, {p: 1})

    def link(self, last: dict[int, int], first: dict[int, int]) -> None:
        for p, m in last.items():
            for q, n in first.items():
                self.follow[p][q] = min(_MANY, self.follow[p].get(q, 0) + m * n)

    def concat(self, a: _Fragment, b: _Fragment) -> _Fragment:
        self.link(a.last, b.first)
        out = _Fragment(min(_MANY, a.empty * b.empty))
        _add(out.first, a.first)
        _add(out.first, b.first, a.empty)
        _add(out.last, b.last)
        _add(out.last, a.last, b.empty)
        return out

    def either(self, parts: Sequence[_Fragment]) -> _Fragment:
        out = _Fragment(min(_MANY, sum(p.empty for p in parts)))
        for part in parts:
            _add(out.first, part.first)
            _add(out.last, part.last)
        return out

    def loop(self, body: _Fragment, at_least_once: bool) -> _Fragment:
        """`body+` or `body*`. `re` ends a loop after an empty iteration, so that adds one way to end."""
        self.link(body.last, body.first)
        out = _Fragment(min(_MANY, body.empty + (0 if at_least_once else 1)), dict(body.first))
        _add(out.last, body.last, 1 + body.empty)
        return out

    def sequence(self, items: list[Any]) -> _Fragment:
        out = _Fragment(1)
        i = 0
        while i < len(items):
            op, av = items[i]
            merged = self._negated_char(items, i)
            if merged is not None:
                part, i = self.position(merged), i + 2
            else:
                part, i = self.item(op, av), i + 1
            out = self.concat(out, part)
        return out

    def _negated_char(self, items: list[Any], i: int) -> Charset | None:
        """`(?!X)Y` of single characters X and Y (jsregex's `[^\\d\\s]` and case partners): Y minus X."""
        if i + 1 >= len(items) or items[i][0] is not sre.ASSERT_NOT or items[i][1][0] != 1:
            return None
        body, (next_op, next_av) = items[i][1][1], items[i + 1]
        if next_op is sre.SUBPATTERN and next_av[0] is None and len(next_av[3]) == 1:
            next_op, next_av = next_av[3][0]
        taken = _charset(next_op, next_av)
        excluded = _single_chars(list(body))
        if taken is None or excluded is None:
            return None
        return _intersect(taken, _complement(excluded))

    def item(self, op: Any, av: Any) -> _Fragment:
        chars = _charset(op, av)
        if chars is not None:
            return self.position(chars)
        if op is sre.SUBPATTERN:
            return self.sequence(list(av[3]))
        if op is sre.BRANCH:
            if all(alt and all(o in (sre.ASSERT, sre.ASSERT_NOT) for o, _ in alt) for alt in av[1]):
                return _Fragment(1)  # \b and \B spelled out: alternatives that exclude each other
            return self.either([self.sequence(list(alt)) for alt in av[1]])
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            return self.repeat(*av)
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            if not _can_repeat(av[1]):
                return _Fragment(1)
            self.inner.append(list(av[1]))
            return self.loop(self.position(_ANY), at_least_once=False)  # it scans ahead at every try
        if op is sre.AT:
            return _Fragment(1)
        raise TooComplex(f"unexpected {op}")  # backreferences and the like: jsregex refuses them first

    def repeat(self, low: int, high: int, body: list[Any]) -> _Fragment:
        """`x{low,high}`. A count above 1 is read as `+` (or `*` when `low` is 0): the constant factors of a
        bounded repetition multiply (`(?:a|a){1,3}` is 14 ways to take "aaa", `.{1,3}a*` three loops'
        worth of choices), and a pattern the check passed as quadratic took a second on 1 KiB. Only
        `c{n}` of one character class is kept exact (it adds no choice)."""
        if high == 0:
            return _Fragment(1)
        if high == 1:
            once = self.sequence(list(body))
            return once if low == 1 else self.either([once, _Fragment(1)])
        if low == high and low <= _EXPAND and _single_chars(list(body)) is not None:
            out = _Fragment(1)
            for _ in range(low):
                out = self.concat(out, self.sequence(list(body)))
            return out
        return self.loop(self.sequence(list(body)), at_least_once=low > 0)


def _single_chars(items: list[Any]) -> Charset | None:
    """The characters a sub-pattern of one character takes (a class or an alternation of them), else None."""
    if len(items) != 1:
        return None
    op, av = items[0]
    if op is sre.BRANCH:
        parts = [_single_chars(list(alt)) for alt in av[1]]
        return None if any(p is None for p in parts) else _normalise(r for p in parts if p for r in p)
    return _charset(op, av)


def _can_repeat(items: Iterable[Any]) -> bool:
    """Whether a sub-pattern can take text of unbounded length (a lookahead over it scans far)."""
    for op, av in items:
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and (av[1] == sre.MAXREPEAT or _can_repeat(av[2])):
            return True
        if op is sre.SUBPATTERN and _can_repeat(av[3]):
            return True
        if op is sre.BRANCH and any(_can_repeat(alt) for alt in av[1]):
            return True
    return False


def _anchored(items: list[Any]) -> bool:
    """Whether the pattern starts with `^`: `search` then fails at once after the first position."""
    return (
        bool(items) and items[0][0] is sre.AT and items[0][1] in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
    )


Node = TypeVar("Node", int, tuple[int, int])


def _components(nodes: Iterable[Node], succ: Callable[[Node], Iterable[Node]]) -> list[list[Node]]:
    """Strongly connected components (iterative Tarjan), in reverse topological order."""
    index: dict[Node, int] = {}
    low: dict[Node, int] = {}
    stack: list[Node] = []
    on_stack: set[Node] = set()
    out: list[list[Node]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                out.append(component)
    return out


class _Checker:
    """Ambiguity of one automaton: exponential, else the polynomial degree."""

    def __init__(self, automaton: _Automaton, budget: list[int]) -> None:
        self.sets, self.follow, self.budget = automaton.sets, automaton.follow, budget

    def _spend(self, steps: int = 1) -> None:
        self.budget[0] -= steps
        if self.budget[0] < 0:
            raise TooComplex("budget")

    def run(self) -> tuple[bool, int]:
        n = len(self.sets)
        components = _components(range(n), lambda p: self.follow[p])
        loops = [c for c in components if len(c) > 1 or c[0] in self.follow[c[0]]]
        if any(self._exponential(set(c)) for c in loops):
            return True, 0
        return False, self._degree(components, loops)

    def _exponential(self, scc: set[int]) -> bool:
        """Two distinct paths with one text from a state of `scc` back to it (product of scc with itself)."""

        def succ(pair: tuple[int, int]) -> Iterator[tuple[int, int]]:
            a, b = pair
            for a2 in self.follow[a]:
                if a2 not in scc:
                    continue
                for b2 in self.follow[b]:
                    self._spend()
                    if b2 in scc and _intersect(self.sets[a2], self.sets[b2]):
                        yield a2, b2

        diagonal = [(p, p) for p in scc]
        for component in _components(diagonal, lambda pair: list(succ(pair))):
            members = set(component)
            if not any(a == b for a, b in members):
                continue
            if any(a != b for a, b in members):
                return True
            for a, _ in members:  # one state's self-pairs: a doubled edge inside is two ways
                if any(self.follow[a].get(b, 0) >= _MANY for b, _ in members):
                    return True
        return False

    def _degree(self, components: list[list[int]], loops: list[list[int]]) -> int:
        """Longest chain of loops, each reaching the next with a text both take again (IDA pairs)."""
        of = {p: i for i, c in enumerate(components) for p in c}
        reverse: list[list[int]] = [[] for _ in self.sets]
        for p, nexts in enumerate(self.follow):
            for q in nexts:
                reverse[q].append(p)
        ahead = {of[c[0]]: self._reach(c, self.follow.__getitem__) for c in loops}
        behind = {of[c[0]]: self._reach(c, reverse.__getitem__) for c in loops}
        ida: dict[int, set[int]] = {}
        for i in ahead:
            for j in ahead:
                if i != j and components[j][0] in ahead[i]:
                    between = ahead[i] & behind[j]
                    if self._pair(set(components[i]), between, set(components[j])):
                        ida.setdefault(j, set()).add(i)
        preds: list[set[int]] = [set() for _ in components]
        for p, nexts in enumerate(self.follow):
            for q in nexts:
                if of[p] != of[q]:
                    preds[of[q]].add(of[p])
        best: list[int] = [0] * len(components)
        for k in reversed(range(len(components))):  # Tarjan lists sinks first: this visits sources first
            best[k] = max([best[i] for i in preds[k]] + [best[i] + 1 for i in ida.get(k, ())] + [0])
        return max(best, default=0)

    def _reach(self, sources: Iterable[int], succ: Any) -> set[int]:
        seen, todo = set(sources), list(sources)
        while todo:
            for q in succ(todo.pop()):
                self._spend()
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
        return seen

    def _pair(self, first: set[int], between: set[int], second: set[int]) -> bool:
        """Some p of `first`, q of `second` and text w with paths p->p, p->q and q->q all reading w."""
        return any(self._triple(p, q, first, between, second) for p in first for q in second)

    def _triple(self, p: int, q: int, a: set[int], between: set[int], c: set[int]) -> bool:
        start, goal = (p, p, q), (p, q, q)
        seen, todo = {start}, [start]
        while todo:
            x, y, z = todo.pop()
            for x2 in self.follow[x]:
                if x2 not in a:
                    continue
                for y2 in self.follow[y]:
                    if y2 not in between:
                        continue
                    common = _intersect(self.sets[x2], self.sets[y2])
                    if not common:
                        continue
                    for z2 in self.follow[z]:
                        self._spend()
                        if z2 in c and _intersect(common, self.sets[z2]):
                            state = (x2, y2, z2)
                            if state == goal:
                                return True
                            if state not in seen:
                                seen.add(state)
                                todo.append(state)
        return False


def _analyse(items: list[Any], search: bool, budget: list[int]) -> tuple[bool, int]:
    automaton = _Automaton()
    if search and not _anchored(items):  # search tries every start: a lazy [\s\S]*? in front
        automaton.concat(automaton.loop(automaton.position(_ANY), False), automaton.sequence(items))
    else:
        automaton.sequence(items)
    exponential, degree = _Checker(automaton, budget).run()
    for body in automaton.inner:  # a lookahead's body is matched at each try: its own cost counts too
        inner_exponential, inner_degree = _analyse(body, False, budget)
        exponential, degree = exponential or inner_exponential, max(degree, inner_degree)
    return exponential, degree


def backtracking_problem(source: str) -> str | None:
    """Why `re.search(source, text)` can take more than quadratic time in len(text), or None when it cannot.

    `source` is a pattern as `re` reads it (jsregex's translation), compiled without flags.
    """
    try:
        exponential, degree = _analyse(list(_parser.parse(source)), True, [BUDGET])
    except TooComplex:
        return (
            "it is too complex to check for slow matching (split it into several conditions joined with $and "
            "or $or)"
        )
    except RecursionError:
        return "it nests too deeply to check for slow matching"
    if exponential:
        return (
            "its matching time can grow exponentially with the attribute's length (a repeated part can match "
            "the same text in more than one way, as in (a+)+ or (a|b|ab)*); write it so that each character "
            "can be taken one way only"
        )
    if degree >= 2:
        return (
            f"its matching time can grow with the attribute's length to the power {degree + 1} (quantifiers "
            "in a row that can take the same characters, as in .*.*, \\d+\\d+ or .*foo.*bar, where a leading "
            ".* repeats what the search does anyway); drop a leading .*, use classes that exclude the next "
            "character ([^,]*,), or split it into conditions joined with $and"
        )
    return None
