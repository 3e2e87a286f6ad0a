"""CEL trigger filters and wait matches: compiling, evaluating, and the equality keys of waits."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from stepline_server.engine.expressions import (
    MATCH_VARIABLES,
    MAX_EXPRESSION_LENGTH,
    TRIGGER_VARIABLES,
    EqualityKey,
    Expression,
    compile_expression,
    equality_key,
    event_variables,
    key_for_event,
    key_for_wait,
)
from stepline_server.errors import InvalidArgument
from stepline_server.model import EventRecord


def trigger(src: str) -> Expression:
    return compile_expression(src, "triggers[0].expression", TRIGGER_VARIABLES)


def match(src: str) -> Expression:
    return compile_expression(src, "wait.if", MATCH_VARIABLES)


def event(data: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "e1", "name": "app/x", "data": data, "ts": 1000, "user": {}, **extra}


def key_of(src: str) -> EqualityKey | None:
    return equality_key(match(src))


# -- compiling and evaluating -------------------------------------------------------------------
def test_trigger_filter_true_and_false() -> None:
    expr = trigger('event.data.plan == "pro" && event.data.amount > 100')
    assert expr.matches({"event": event({"plan": "pro", "amount": 150})})
    assert not expr.matches({"event": event({"plan": "pro", "amount": 50})})
    assert not expr.matches({"event": event({"plan": "free", "amount": 150})})


def test_runtime_errors_and_non_bool_results_are_false() -> None:
    assert not trigger("event.data.missing == 1").matches({"event": event({})})
    assert not trigger("event.data.x > 1").matches({"event": event({"x": "text"})})
    assert not trigger("event.data.x + 1").matches({"event": event({"x": 1})})
    assert not trigger("event.data.x / 0 == 1").matches({"event": event({"x": 1})})
    assert trigger("has(event.data.x) || true").matches({"event": event({})})


def test_event_variables_parse_json() -> None:
    record = EventRecord(id="e1", name="app/signup", data='{"userId": "u1", "n": 2}', ts_ms=1234,
                         user='{"ip": "x"}')
    assert event_variables(record) == {"id": "e1", "name": "app/signup",
                                       "data": {"userId": "u1", "n": 2}, "ts": 1234,
                                       "user": {"ip": "x"}}
    assert event_variables(EventRecord(id="e2", name="a", data="null", ts_ms=1))["user"] == {}
    expr = trigger('event.name == "app/signup" && event.user.ip == "x" && event.ts == 1234')
    assert expr.matches({"event": event_variables(record)})


def test_syntax_error_names_the_field_and_position() -> None:
    with pytest.raises(InvalidArgument) as caught:
        trigger("event.data.x ==")
    assert caught.value.field == "triggers[0].expression"
    message = str(caught.value)
    assert "syntax error at 1:16" in message
    assert "\n" not in message
    with pytest.raises(InvalidArgument, match="syntax error at 1:6"):
        trigger("a == 'unterminated")


def test_unknown_variables_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown variable foo; .* only event") as caught:
        trigger("foo.bar == 1")
    assert caught.value.field == "triggers[0].expression"
    with pytest.raises(InvalidArgument, match=r"unknown variable async; .* only event$"):
        trigger("async.data.x == event.data.x")
    with pytest.raises(InvalidArgument, match=r"unknown variables a, b; .* only async, event$"):
        match("a == b")


def test_macro_bound_names_and_type_names_are_not_variables() -> None:
    expr = trigger("event.data.items.exists(i, i > 2) && type(event.data.n) == int")
    assert expr.variables == {"event"}
    assert expr.matches({"event": event({"items": [1, 3], "n": 1})})
    assert not expr.matches({"event": event({"items": [1, 2], "n": 1})})


def test_empty_and_too_long_are_rejected() -> None:
    for src in ("", "   \n"):
        with pytest.raises(InvalidArgument, match="empty"):
            trigger(src)
    long = "event.data.x == " + " + ".join(["1"] * MAX_EXPRESSION_LENGTH)
    with pytest.raises(InvalidArgument, match=f"limit is {MAX_EXPRESSION_LENGTH}"):
        trigger(long)


def test_compiled_expressions_are_cached() -> None:
    assert match("async.data.a == 1") is match("async.data.a == 1")


# -- equality keys ------------------------------------------------------------------------------
def test_equality_key_both_orders() -> None:
    expected = EqualityKey(("data", "userId"), ("data", "uid"), None)
    assert key_of("async.data.userId == event.data.uid") == expected
    assert key_of("event.data.uid == async.data.userId") == expected


def test_equality_key_literals() -> None:
    assert key_of('async.data.userId == "u1"') == EqualityKey(("data", "userId"), None, '"u1"')
    assert key_of("42 == async.data.n") == EqualityKey(("data", "n"), None, "42")
    assert key_of("async.data.n == -7") == EqualityKey(("data", "n"), None, "-7")
    assert key_of("async.data.ok == true") == EqualityKey(("data", "ok"), None, "true")
    assert key_of("async.data.n == 2.0") == EqualityKey(("data", "n"), None, "2")
    assert key_of(r"async.data.s == 'a\'\u00e9'") == EqualityKey(("data", "s"), None,
                                                                  json.dumps("a'é"))
    assert key_of("async.data.s == b'x'") is None  # bytes never equal a JSON value


def test_equality_key_in_conjunctions_and_parens() -> None:
    key = EqualityKey(("data", "id"), ("data", "id"), None)
    assert key_of("async.data.n > 1 && async.data.id == event.data.id") == key
    assert key_of("(async.data.n > 1 && ((async.data.id == event.data.id))) && true") == key
    assert key_of('async.data["id"] == event["data"].id') == key
    assert key_of('async.data["a.b"] == event.data.x') is None  # segments never contain "."


def test_no_equality_key() -> None:
    for src in (
        "async.data.id == event.data.id || async.data.force",
        "async.data.x > 1 && (async.data.id == event.data.id || true)",
        "async.data.id == event.data.id && false ? true : true",
        "async.data.id != event.data.id",
        "!(async.data.id == event.data.id)",
        "async.data.id == event.data.id == false",
        "async.data.id == event.data.id + 1",
        "async.data.id == async.data.other",
        "event.data.id == 1",
        "async.data.tags == [1]",
        "async.data.id.size() == 2",
        "async == event",
        "size(async.data.id) == size(event.data.id)",
        "async.data.items.exists(x, x == 1)",
    ):
        assert key_of(src) is None, src


def test_quoted_operators_stay_inside_strings() -> None:
    key = EqualityKey(("data", "id"), ("data", "id"), None)
    assert key_of('async.data.s != "a || b" && async.data.id == event.data.id') == key
    assert key_of('async.data.s == "x && y == z"') == EqualityKey(("data", "s"), None,
                                                                   '"x && y == z"')
    assert key_of(r'async.data.s == "q\" || "') == EqualityKey(("data", "s"), None, r'"q\" || "')
    raw = key_of("async.data.s == r'\\' && async.data.id == event.data.id")  # r'\' is one \\
    assert raw == EqualityKey(("data", "s"), None, json.dumps("\\"))
    assert key_of('async.data.s == """a " || b""" && async.data.id == event.data.id') is not None


def test_keys_agree_for_matching_pair_and_differ_otherwise() -> None:
    key = key_of("async.data.userId == event.data.userId")
    assert key is not None
    run_trigger = event({"userId": "u1"})
    wait = key_for_wait(key, run_trigger)
    assert wait == 'data.userId="u1"'
    assert key_for_event(key.async_path, event({"userId": "u1", "x": 1})) == wait
    assert key_for_event(key.async_path, event({"userId": "u2"})) != wait
    assert key_for_event(key.async_path, event({})) is None
    assert key_for_event(key.async_path, event({"userId": {"a": 1}})) is None
    assert key_for_wait(key, event({})) is None
    literal = key_of('async.data.userId == "u1"')
    assert literal is not None
    assert key_for_wait(literal, {}) == wait


def test_numbers_key_by_double_value() -> None:
    key = EqualityKey(("data", "v"), ("data", "v"), None)
    assert key_for_wait(key, event({"v": 1})) == key_for_event(key.async_path, event({"v": 1.0}))
    assert key_for_wait(key, event({"v": -0.0})) == key_for_wait(key, event({"v": 0}))
    assert key_for_wait(key, event({"v": True})) != key_for_wait(key, event({"v": 1}))


# The keys must agree whenever the expression is true; values chosen where CEL's equality is
# subtle: int/double, the 2**53 boundary, uint range, bool vs int, null, containers.
VALUES: list[Any] = [1, 1.0, 1.5, True, False, 0, -0.0, "1", "", None, 2**53, 2**53 + 1,
                     float(2**53), 2**63, 2**63 + 1, 2**64, 2**64 + 1, -(2**63) - 1,
                     [1], {"a": 1}, {"a": 1.0}, "é"]
EXPRESSIONS = [
    "async.data.v == event.data.v",
    "event.data.v == async.data.v && async.name == event.name",
    "(async.data.v == event.data.v)",
    'async.data.v == 1 && async.data["v"] == event["data"]["v"]',
    "async.data.v == 1.0",
    "async.data.v == 1u",
    "async.data.v == 9007199254740992",
    "async.data.v == true",
    "async.data.v == null",
    "async.data.v == '1'",
    "async.data.v == -0.0",
    "async.data.v == 18446744073709551615u",
]


def test_keys_are_sound() -> None:
    checked = 0
    for src, (a, b) in itertools.product(EXPRESSIONS, itertools.product(VALUES, repeat=2)):
        expr = match(src)
        key = equality_key(expr)
        assert key is not None, src
        run_trigger, candidate = event({"v": a}), event({"v": b})
        if not expr.matches({"event": run_trigger, "async": candidate}):
            continue
        checked += 1
        wait = key_for_wait(key, run_trigger)
        # An unkeyed wait is checked against every event; a keyed one only under its key.
        assert wait is None or wait == key_for_event(key.async_path, candidate), (src, a, b)
    assert checked > len(VALUES)
