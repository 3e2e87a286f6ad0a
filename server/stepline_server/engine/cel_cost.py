"""What a CEL expression costs on an event, bounded before it runs.

Filters run on the writer thread, and the CEL library is native code that holds the GIL: while
one runs, every write waits, and nothing can interrupt it. Measured on the 2-core development
machine with this library (common-expression-language 0.10):

- each reference to `event` or `async` copies that variable's whole value: `size(event.data.l)`
  costs ~10 ms per reference for a list of 100,000 numbers, however little of it is read;
- a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) costs ~0.3-0.4 µs per
  element, plus those copies for every reference to a variable inside its body;
- `map` and `filter` build their result one element at a time, copying it each time: 4,000
  elements cost 0.5 s;
- so `event.data.l.all(a, event.data.l.all(b, a >= 0))` on a 17 KB event took 4.3 s.

Hence two bounds. At registration, comprehensions may not nest (their cost multiplies). Before
each evaluation, the variables are cut down to the paths the expression reads (`event.data.plan`
copies one string, not the event), and the cost is estimated from the expression's shape and
the size of what is left; an evaluation over the budget does not run and counts as no match.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cel

# Costs in nanoseconds: about twice the best times measured, as the writer shares the machine.
# Sizes are in units of a number's cost:
# a string costs ~8 times as much to convert, a list or an object ~12 times.
_CONVERT_NS = 250  # a unit turned into a CEL value
_COPY_NS = 40  # a unit copied by a variable reference
_ITERATION_NS = 800  # one element of a comprehension
_ACCUMULATE_NS = 40  # map/filter: per element, per unit already in the result
_STRING_UNITS = 8
_CONTAINER_UNITS = 12
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_ACCUMULATING = frozenset({"map", "filter"})
VARIABLES = frozenset({"event", "async"})


# -- tokens -------------------------------------------------------------------------------------
# A tokenizer just good enough for sources that CEL already accepted: to split them into
# top-level conjuncts (expressions.py), and to find comprehensions and variable paths (here).
# String bodies are scanned by hand so quoted `&&`, `(` or `event` stay inside them.
_TOKEN = re.compile(r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:'''|\"\"\"|'|\"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d+|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|.)
""", re.VERBOSE | re.DOTALL)
OPEN = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string, number, ident or op
    text: str


class Untokenizable(Exception):
    pass


def tokens(source: str) -> Iterator[Token]:
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        assert m is not None and m.lastgroup is not None  # `.` matches any character
        kind, pos = m.lastgroup, m.end()
        if kind == "string":
            quote = m.group().lstrip("rRbB")
            raw = "r" in m.group().lower()[: -len(quote)]
            pos = _string_end(source, pos, quote, raw)
            yield Token(kind, source[m.start():pos])
        elif kind != "space":
            yield Token(kind, m.group())


def _string_end(source: str, pos: int, quote: str, raw: bool) -> int:
    while pos < len(source):
        if not raw and source[pos] == "\\":
            pos += 2
        elif source.startswith(quote, pos):
            return pos + len(quote)
        else:
            pos += 1
    raise Untokenizable(source)


# -- shape --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Loop:
    """One comprehension: variable references in its body, and whether it accumulates."""

    references: int
    accumulates: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """What an expression's cost depends on, read once from its source."""

    paths: tuple[tuple[str, ...], ...]  # what it reads: ("event", "data", "plan")
    references: int  # variable references outside comprehension bodies
    loops: tuple[Loop, ...]
    nesting: int  # comprehensions inside comprehensions: 0 when none nest


@functools.lru_cache(maxsize=4096)
def shape(source: str) -> Shape:
    """The shape of a source CEL accepted. One that does not tokenize reads everything."""
    try:
        found = list(tokens(source))
    except Untokenizable:
        return Shape(paths=tuple((v,) for v in sorted(VARIABLES)), references=len(source),
                     loops=(), nesting=0)
    scan = _Scan(found)
    scan.walk(0, len(found), 0)
    return Shape(paths=tuple(sorted(set(scan.paths))), references=scan.outside,
                 loops=tuple(scan.loops), nesting=scan.nesting)


class _Scan:
    """Walks tokens, counting variable references per comprehension level."""

    def __init__(self, found: list[Token]) -> None:
        self.tokens = found
        self.paths: list[tuple[str, ...]] = []
        self.outside = 0
        self.loops: list[Loop] = []
        self.nesting = 0

    def walk(self, start: int, end: int, depth: int) -> int:
        """Variable references in tokens[start:end] outside nested comprehension bodies."""
        found, i = 0, start
        while i < end:
            if self._is_macro(i, end):
                close = _closing(self.tokens, i + 2, end)
                body = _after_first_comma(self.tokens, i + 3, close)
                self.nesting = max(self.nesting, depth)
                inner = self.walk(body, close, depth + 1)
                self.loops.append(Loop(references=inner,
                                       accumulates=self.tokens[i + 1].text in _ACCUMULATING))
                i = close + 1
                continue
            token = self.tokens[i]
            if token.kind == "ident" and token.text in VARIABLES and not (
                    i > 0 and self.tokens[i - 1].text == "."):
                found += 1
                self.paths.append(_read_path(self.tokens, i, end))
            i += 1
        if depth == 0:
            self.outside = found
        return found

    def _is_macro(self, i: int, end: int) -> bool:
        t = self.tokens
        return (i + 2 < end and t[i].text == "." and t[i + 1].kind == "ident"
                and t[i + 1].text in MACROS and t[i + 2].text == "(")


def _closing(found: list[Token], open_at: int, end: int) -> int:
    depth = 0
    for j in range(open_at, end):
        text = found[j].text if found[j].kind == "op" else ""
        if text in OPEN:
            depth += 1
        elif text in OPEN.values():
            depth -= 1
            if depth == 0:
                return j
    return end - 1


def _after_first_comma(found: list[Token], start: int, close: int) -> int:
    depth = 0
    for j in range(start, close):
        text = found[j].text if found[j].kind == "op" else ""
        if text in OPEN:
            depth += 1
        elif text in OPEN.values():
            depth -= 1
        elif text == "," and depth == 0:
            return j + 1
    return start


def _read_path(found: list[Token], i: int, end: int) -> tuple[str, ...]:
    """`event.data["a"].b` as ("event", "data", "a", "b"), stopping before a call, an index
    that is not a string literal, or anything else."""
    path = [found[i].text]
    k = i + 1
    while k + 1 < end:
        if (found[k].text == "." and found[k + 1].kind == "ident"
                and not (k + 2 < end and found[k + 2].text == "(")):
            path.append(found[k + 1].text)
            k += 2
        elif (found[k].text == "[" and found[k + 1].kind == "string" and k + 2 < end
              and found[k + 2].text == "]"):
            key = _string_value(found[k + 1].text)
            if key is None:
                break
            path.append(key)
            k += 3
        else:
            break
    return tuple(path)


def _string_value(literal: str) -> str | None:
    try:  # CEL itself decodes the literal, escapes and all
        value = cel.evaluate(literal)
    except Exception:
        return None
    return value if isinstance(value, str) else None


# -- evaluation ---------------------------------------------------------------------------------
def prune(variables: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """The variables cut down to `paths`: what is read is kept whole, and only that."""
    grouped: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        grouped.setdefault(path[0], []).append(path[1:])
    return {name: _keep(variables[name], rests) for name, rests in grouped.items()
            if name in variables}


def _keep(value: Any, rests: list[tuple[str, ...]]) -> Any:
    if any(not rest for rest in rests) or not isinstance(value, dict):
        return value
    grouped: dict[str, list[tuple[str, ...]]] = {}
    for rest in rests:
        grouped.setdefault(rest[0], []).append(rest[1:])
    return {key: _keep(value[key], more) for key, more in grouped.items() if key in value}


def estimate_ns(found: Shape, variables: Mapping[str, Any], budget_ns: int) -> int:
    """The estimated cost of evaluating on these (pruned) variables; once it is sure to be
    over `budget_ns` it stops counting and returns more than the budget."""
    per_unit = _CONVERT_NS + _COPY_NS * found.references
    units, longest = _size(variables, budget_ns // per_unit + 1)
    cost = per_unit * units
    for loop in found.loops:
        cost += longest * (_ITERATION_NS + _COPY_NS * units * loop.references)
        if loop.accumulates:
            cost += _ACCUMULATE_NS * longest * units
    return cost


def _size(root: Any, limit: int) -> tuple[int, int]:
    """The size of `root` in units (a number 1, a string or an object's key 8, a list or an
    object 12, as they cost to convert), and its longest list or object. Counting stops past
    `limit` units."""
    units, longest = 0, 0
    stack = [root]
    while stack and units <= limit:
        value = stack.pop()
        if isinstance(value, dict):  # its keys are strings too
            units += _CONTAINER_UNITS + _STRING_UNITS * len(value)
            longest = max(longest, len(value))
            stack.extend(value.values())
        elif isinstance(value, list):
            units += _CONTAINER_UNITS
            longest = max(longest, len(value))
            stack.extend(value)
        else:
            units += _STRING_UNITS if isinstance(value, str) else 1
    return units, longest
