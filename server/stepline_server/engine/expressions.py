"""CEL over events: trigger filters (variable `event`), wait and cancel matches (`event`, `async`).

Also finds the equality a match pins (`async.data.userId == event.data.userId`), so pending waits
can be indexed by key instead of evaluating every wait against every event.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from stepline_server.engine import cel_cost
from stepline_server.engine.cel_cost import OPEN as _OPEN
from stepline_server.engine.cel_cost import Token as _Token
from stepline_server.engine.cel_cost import Untokenizable as _Untokenizable
from stepline_server.engine.cel_cost import tokens as _tokens
from stepline_server.errors import InvalidArgument
from stepline_server.model import EventRecord

TRIGGER_VARIABLES = frozenset({"event"})
MATCH_VARIABLES = frozenset({"event", "async"})
MAX_EXPRESSION_LENGTH = 4096
_CACHE_SIZE = 4096

# CEL's type names (`type(x) == int`) are reported as variables by the compiler.
_TYPE_NAMES = frozenset({"bool", "bytes", "double", "int", "list", "map", "null_type", "string",
                         "type", "uint"})
# Macros whose first argument binds a name (`items.exists(i, i > 1)`), also reported as variables.
_MACROS = cel_cost.MACROS


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression; build it with compile_expression()."""

    source: str
    variables: frozenset[str]  # the free variables it reads
    _program: cel.Program = dataclasses.field(repr=False, compare=False)

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """True only when the expression evaluates to boolean true.

        A runtime error (a missing key, a type mismatch, an overflow) or a non-bool result is
        False: one event with an odd payload must not break matching for the others.
        """
        context = variables if isinstance(variables, dict) else dict(variables)
        try:
            return self._program.execute(context) is True
        except Exception:
            return False

    def value(self, variables: Mapping[str, Any]) -> Any:
        """What the expression evaluates to; None when evaluating fails (flow control keys)."""
        context = variables if isinstance(variables, dict) else dict(variables)
        try:
            return self._program.execute(context)
        except Exception:
            return None

    def matches_within(self, variables: Mapping[str, Any], budget_ns: int) -> bool | None:
        """`matches` on what the expression reads of `variables`; None, without evaluating,
        when its estimated cost is over `budget_ns` (see cel_cost.py)."""
        shape = cel_cost.shape(self.source)
        if shape.nesting:  # stored before such expressions were refused at registration
            return None
        pruned = cel_cost.prune(variables, shape.paths)
        if cel_cost.estimate_ns(shape, pruned, budget_ns) > budget_ns:
            return None
        return self.matches(pruned)


def compile_expression(source: str, field: str, allowed: frozenset[str]) -> Expression:
    """Compile `source`, accepting only the variables in `allowed`.

    Raises InvalidArgument(field, ...) for an empty or too long source, a syntax error (with its
    line and column) or a variable outside `allowed`.
    """
    if not source.strip():
        raise InvalidArgument(field, "the expression is empty; expected a CEL expression such as "
                                     'event.data.plan == "pro"')
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise InvalidArgument(field, f"the expression is {len(source)} characters long; "
                                     f"the limit is {MAX_EXPRESSION_LENGTH}")
    if "\x00" in source:  # stored as text, where PostgreSQL refuses NUL
        raise InvalidArgument(field, "contains a NUL character (\\u0000); write it as \"\\0\" "
                                     "inside a string literal")
    try:
        expression = _compile(source)
    except ValueError as exc:
        raise InvalidArgument(field, _syntax_message(source, str(exc))) from None
    if cel_cost.shape(source).nesting:
        raise InvalidArgument(field, "comprehensions (all, exists, exists_one, map, filter) may "
                                     "not nest: their cost is the product of the lists' sizes; "
                                     "test each list in its own comprehension")
    unknown = sorted(expression.variables - allowed)
    if unknown:
        names = ", ".join(unknown)
        raise InvalidArgument(field, f"unknown variable{'s' if len(unknown) > 1 else ''} {names}; "
                                     f"this expression may use only {', '.join(sorted(allowed))}")
    return expression


def compiled(source: str) -> Expression:
    """A stored expression, checked when it was registered, compiled (and cached)."""
    return _compile(source)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(source: str) -> Expression:
    program = cel.compile(source)
    free = frozenset(program.variables()) - _TYPE_NAMES - _bound_names(source)
    return Expression(source, free, program)


def _syntax_message(source: str, text: str) -> str:
    """CEL's first error as one line: 'syntax error at 1:4: mismatched input ...'."""
    prefix = f"Failed to parse expression '{source}': "
    if text.startswith(prefix):  # the echoed source could itself contain "ERROR: <input>"
        text = text[len(prefix):]
    errors = re.findall(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)", text)
    if not errors:
        return f"invalid CEL: {text.splitlines()[0] if text else 'unknown error'}"
    line, column, detail = errors[0]
    detail = detail.removeprefix("Syntax error: ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"syntax error at {line}:{column}: {detail}{more}"


def event_variables(record: EventRecord) -> dict[str, Any]:
    """The CEL value of an event: {"id", "name", "data", "ts" (ms), "user"} with JSON parsed."""
    return {
        "id": record.id,
        "name": record.name,
        "data": json.loads(record.data) if record.data else {},
        "ts": record.ts_ms,
        "user": json.loads(record.user) if record.user else {},
    }


# -- equality keys --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EqualityKey:
    """An equality every match must satisfy: async.<async_path> == event.<event_path> or literal."""

    async_path: tuple[str, ...]
    event_path: tuple[str, ...] | None
    literal: str | None  # canonical JSON of the literal, when there is no event_path


def equality_key(expression: Expression) -> EqualityKey | None:
    """The first top-level `&&` conjunct of the form `async.<path> == event.<path>` or
    `async.<path> == <literal>` (either order), or None.

    Sound: when this returns a key, the expression can only be true if key_for_wait() and
    key_for_event() give the same string. Path segments never contain "." (callers may join them).
    """
    return _equality_key(expression.source)


def key_for_wait(key: EqualityKey, trigger: Mapping[str, Any]) -> str | None:
    """The key a wait is stored under, from its run's trigger event variables.

    None when the value is missing or not a scalar: the wait must then be stored without a key
    and evaluated against every event of its name.
    """
    if key.literal is not None:
        value: str | None = key.literal
    elif key.event_path is not None:
        value = _scalar_at(trigger, key.event_path)
    else:
        value = None
    return None if value is None else f"{'.'.join(key.async_path)}={value}"


def key_for_event(path: tuple[str, ...], candidate: Mapping[str, Any]) -> str | None:
    """The key an incoming event's variables give at `path` (an EqualityKey's async_path).

    None when the value is missing or not a scalar: then no keyed wait on this path can match it.
    """
    value = _scalar_at(candidate, path)
    return None if value is None else f"{'.'.join(path)}={value}"


def _scalar_at(variables: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    value: Any = variables
    for segment in path:
        if not isinstance(value, Mapping) or segment not in value:
            return None
        value = value[segment]
    return _canonical(value)


def _canonical(value: Any) -> str | None:
    """Canonical JSON of a scalar, equal for any two values CEL finds equal.

    CEL compares int, uint and double across types, converting to double (so int 2**53 + 1 equals
    double 2**53), and the bindings turn ints beyond 64 bits into doubles. So every number is keyed
    by its double value, written as an int when integral: 1, 1.0 and 1u share a key. Bool is
    checked first (a Python bool is an int); CEL never finds true equal to 1.
    """
    if value is None or isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond double range
            number = math.inf if value > 0 else -math.inf
        if number.is_integer():
            return str(int(number))
        return json.dumps(number)
    return None


def _bound_names(source: str) -> frozenset[str]:
    """Names bound by comprehension macros: the `i` in `items.exists(i, i > 1)`."""
    try:
        tokens = list(_tokens(source))
    except _Untokenizable:
        return frozenset()
    return frozenset(
        tokens[i + 2].text for i in range(1, len(tokens) - 3)
        if tokens[i - 1].text == "." and tokens[i].kind == "ident" and tokens[i].text in _MACROS
        and tokens[i + 1].text == "(" and tokens[i + 2].kind == "ident"
        and tokens[i + 3].text == ","
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _equality_key(source: str) -> EqualityKey | None:
    try:
        conjuncts = _conjuncts(list(_tokens(source)))
    except _Untokenizable:
        return None
    for conjunct in conjuncts or ():
        key = _equality(conjunct)
        if key is not None:
            return key
    return None


def _conjuncts(tokens: list[_Token]) -> list[list[_Token]] | None:
    """The top-level `&&` operands (parentheses flattened); None if a `||` or `?:` is on top."""
    parts: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "op" and depth == 0 and token.text in ("||", "?"):
            return None
        if token.kind == "op" and depth == 0 and token.text == "&&":
            parts.append([])
            continue
        if token.kind == "op" and token.text in _OPEN:
            depth += 1
        elif token.kind == "op" and token.text in _OPEN.values():
            depth -= 1
        parts[-1].append(token)
    flat: list[list[_Token]] = []
    for part in parts:
        inner = _conjuncts(part[1:-1]) if _parenthesized(part) else None
        flat.extend(inner if inner is not None else [part])
    return flat


def _parenthesized(tokens: list[_Token]) -> bool:
    """True when the first token is a `(` closed by the last token."""
    if len(tokens) < 2 or tokens[0].text != "(" or tokens[-1].text != ")":
        return False
    depth = 0
    for i, token in enumerate(tokens):
        if token.kind == "op" and token.text in _OPEN:
            depth += 1
        elif token.kind == "op" and token.text in _OPEN.values():
            depth -= 1
            if depth == 0:
                return i == len(tokens) - 1
    return False


_Operand = tuple[str, tuple[str, ...] | str]  # ("async" | "event", path) or ("literal", json)


def _equality(tokens: list[_Token]) -> EqualityKey | None:
    """An EqualityKey when the tokens are exactly `<operand> == <operand>`."""
    for i, token in enumerate(tokens):
        if token.kind == "op" and token.text == "==":
            left, right = _operand(tokens[:i]), _operand(tokens[i + 1:])
            break
    else:
        return None
    if left is None or right is None:
        return None
    if left[0] != "async":
        left, right = right, left
    if left[0] != "async" or not isinstance(left[1], tuple):
        return None
    if right[0] == "event" and isinstance(right[1], tuple):
        return EqualityKey(left[1], right[1], None)
    if right[0] == "literal" and isinstance(right[1], str):
        return EqualityKey(left[1], None, right[1])
    return None


def _operand(tokens: list[_Token]) -> _Operand | None:
    """A path (`async.data.userId`, `event.data["id"]`) or a scalar literal, else None."""
    if not tokens:
        return None
    if tokens[0].kind == "ident" and tokens[0].text in ("async", "event"):
        path = _path(tokens[1:])
        return None if path is None else (tokens[0].text, path)
    is_literal = (
        (len(tokens) == 1 and tokens[0].kind in ("string", "number"))
        or (len(tokens) == 1 and tokens[0].text in ("true", "false", "null"))
        or (len(tokens) == 2 and tokens[0].text == "-" and tokens[1].kind == "number")
    )
    if not is_literal:
        return None
    try:  # CEL itself decodes the literal, escapes and all
        value = cel.evaluate("".join(t.text for t in tokens))
    except Exception:
        return None
    canonical = _canonical(value)
    return None if canonical is None else ("literal", canonical)


def _path(tokens: list[_Token]) -> tuple[str, ...] | None:
    """`.a.b["c"]` as ("a", "b", "c"); None for anything else or a segment containing '.'."""
    segments: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i].text == "." and i + 1 < len(tokens) and tokens[i + 1].kind == "ident":
            segments.append(tokens[i + 1].text)
            i += 2
        elif (tokens[i].text == "[" and i + 2 < len(tokens) and tokens[i + 1].kind == "string"
              and tokens[i + 2].text == "]"):
            try:
                key = cel.evaluate(tokens[i + 1].text)
            except Exception:
                return None
            if not isinstance(key, str) or "." in key:
                return None
            segments.append(key)
            i += 3
        else:
            return None
    return tuple(segments) if segments else None
