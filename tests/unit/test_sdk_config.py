"""`@app.function(...)`: triggers, cancel_on, timeouts and on_failure as FunctionConfig protos."""

from __future__ import annotations

from typing import Any

import pytest

from stepline import (
    CancelOn,
    Function,
    InvalidUsageError,
    Stepline,
    on_cron,
    on_event,
)
from stepline._function import cel_string
from stepline.v1 import common_pb2


def _declare(**options: Any) -> tuple[Stepline, Function]:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id=options.pop("id", "f"), **options)
    async def handler(ctx: Any) -> str:
        return "ok"

    return app, handler


def _triggers(config: common_pb2.FunctionConfig) -> list[tuple[str, str, str]]:
    result = []
    for t in config.triggers:
        if t.WhichOneof("kind") == "event":
            result.append(("event", t.event.name, t.event.expression))
        else:
            result.append(("cron", t.cron.schedule, t.cron.timezone))
    return result


def test_plain_declaration() -> None:
    app, fn = _declare(trigger="user/signup", name="Welcome", retries=5)
    assert isinstance(fn, Function) and fn.id == "f" and app.functions == {"f": fn}
    config = fn.to_proto()
    assert (config.id, config.name, config.retries) == ("f", "Welcome", 5)
    assert config.HasField("retries")
    assert _triggers(config) == [("event", "user/signup", "")]
    assert not config.cancel_on and not config.HasField("timeouts")


def test_decorated_function_still_calls_the_handler() -> None:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="sync-fn", trigger="e")
    def handler(ctx: Any) -> str:
        return f"got {ctx}"

    assert handler("ctx") == "got ctx" and not handler.is_async


def test_trigger_forms_mix() -> None:
    _, fn = _declare(trigger=[
        "a/plain",
        on_event("a/filtered", if_="event.data.total > 100"),
        {"event": "a/dict", "if": 'event.data.plan == "pro"'},
        {"event": "a/dict-plain"},
        on_cron("0 9 * * MON", tz="Europe/Paris"),
        {"cron": "TZ=America/New_York 30 8 * * *"},
        {"cron": "*/5 * * * *", "tz": "UTC"},
    ])
    assert _triggers(fn.to_proto()) == [
        ("event", "a/plain", ""),
        ("event", "a/filtered", "event.data.total > 100"),
        ("event", "a/dict", 'event.data.plan == "pro"'),
        ("event", "a/dict-plain", ""),
        ("cron", "0 9 * * MON", "Europe/Paris"),
        ("cron", "TZ=America/New_York 30 8 * * *", ""),
        ("cron", "*/5 * * * *", "UTC"),
    ]
    _, single = _declare(trigger=on_cron("0 0 * * *"))
    assert _triggers(single.to_proto()) == [("cron", "0 0 * * *", "")]


def test_cancel_on_and_timeouts() -> None:
    _, fn = _declare(
        trigger="cart/created",
        cancel_on=[{"event": "cart/checked-out", "if": "async.data.id == event.data.id",
                    "timeout": "1h"},
                   CancelOn("cart/deleted"),
                   CancelOn("cart/expired", timeout=90)],
        timeouts={"start": "30s", "finish": "2h30m"})
    config = fn.to_proto()
    cancels = [(c.event, c.expression, c.timeout.ToMilliseconds() if c.HasField("timeout")
                else None) for c in config.cancel_on]
    assert cancels == [("cart/checked-out", "async.data.id == event.data.id", 3_600_000),
                       ("cart/deleted", "", None), ("cart/expired", "", 90_000)]
    assert config.timeouts.start.ToMilliseconds() == 30_000
    assert config.timeouts.finish.ToMilliseconds() == 9_000_000
    _, only_finish = _declare(trigger="x", timeouts={"finish": 5})
    timeouts = only_finish.to_proto().timeouts
    assert not timeouts.HasField("start") and timeouts.finish.ToMilliseconds() == 5000


def test_on_failure_registers_a_companion() -> None:
    app = Stepline("app", url="127.0.0.1:1")

    def handle(ctx: Any) -> str:
        return "handled"

    @app.function(id="charge", trigger="order/placed", name="Charge card", retries=2,
                  on_failure=handle, timeouts={"finish": "1m"})
    async def charge(ctx: Any) -> None:
        return None

    assert list(app.functions) == ["charge", "charge-failure"]
    companion = app.functions["charge-failure"]
    assert companion.handler is handle and not companion.is_async
    config = companion.to_proto()
    assert (config.id, config.name, config.retries) == (
        "charge-failure", "Charge card (on failure)", 2)
    # The system event names the failed function by full name: only this app's sets it off.
    assert _triggers(config) == [
        ("event", "stepline/function.failed", 'event.data.function_id == "app:charge"')]
    assert (companion.app_id, companion.full_name) == ("app", "app:charge-failure")
    assert not config.HasField("timeouts") and not config.cancel_on
    # The worker's Hello and register() declare both.
    assert [f.id for f in app._register_request().functions] == ["charge", "charge-failure"]


def test_cel_strings_escape_quotes_and_backslashes() -> None:
    assert cel_string('we"ird\\id') == '"we\\"ird\\\\id"'


@pytest.mark.parametrize(("app_id", "function_id", "message"), [
    ("team:a", "f", r"^app_id: 'team:a' is not a valid app id: use at most 128 letters, digits "
                    r"and _ \. -"),
    ("team/a", "f", r"^app_id: 'team/a' is not a valid app id"),
    ("-a", "f", r"^app_id: '-a' is not a valid app id"),
    ("a" * 129, "f", r"^app_id: 'a{129}' is not a valid app id"),
    ("app", "other:f", r"^function id: 'other:f' is not a valid function id: .*\(no ':'"),
    ("app", 'we"ird', r"^function id: 'we\"ird' is not a valid function id"),
])
def test_ids_follow_the_servers_rules(app_id: str, function_id: str, message: str) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        Stepline(app_id, url="127.0.0.1:1").function(id=function_id, trigger="x")


@pytest.mark.parametrize(("options", "message"), [
    ({"trigger": None}, r"^function 'f': trigger: a trigger is required"),
    ({"trigger": []}, r"^function 'f': trigger: expected an event name"),
    ({"trigger": ""}, r"^function 'f': trigger\[0\]: expected a non-empty string; got ''"),
    ({"trigger": [on_event("")]}, r"^function 'f': trigger\[0\]\.event: expected a non-empty"),
    ({"trigger": [{"event": "a", "when": "x"}]},
     r"^function 'f': trigger\[0\]: unknown key\(s\) \['when'\]"),
    ({"trigger": [{"event": "a", "cron": "* * * * *"}]}, r"exactly one of \"event\""),
    ({"trigger": [{"cron": ""}]}, r"^function 'f': trigger\[0\]\.cron: expected a non-empty"),
    ({"trigger": [42]}, r"^function 'f': trigger\[0\]: expected an event name"),
    ({"trigger": "x", "retries": -1}, r"retries must be a non-negative integer; got -1"),
    ({"trigger": "x", "retries": True}, r"retries must be a non-negative integer; got True"),
    ({"trigger": "x", "timeouts": {"finish": "soon"}},
     r"^function 'f': timeouts\.finish: expected .*got 'soon'"),
    ({"trigger": "x", "timeouts": {"start": 0}}, r"^function 'f': timeouts\.start: must be at"),
    ({"trigger": "x", "timeouts": {"end": "1h"}}, r"^function 'f': timeouts: unknown key"),
    ({"trigger": "x", "cancel_on": [{"event": ""}]},
     r"^function 'f': cancel_on\[0\]\.event: expected a non-empty string"),
    ({"trigger": "x", "cancel_on": [{"if": "true"}]}, r"cancel_on\[0\]\.event: expected"),
    ({"trigger": "x", "cancel_on": [{"event": "y", "timeout": "-1s"}]},
     r"cancel_on\[0\]\.timeout: .*got '-1s'"),
    ({"trigger": "x", "cancel_on": [{"event": "y", "expr": "z"}]},
     r"cancel_on\[0\]: unknown key\(s\) \['expr'\]"),
    ({"trigger": "x", "on_failure": "not callable"}, r"on_failure must be a function"),
    ({"id": "", "trigger": "x"}, r"^function id: expected a non-empty string"),
])
def test_config_errors_at_decoration_time(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        _declare(**options)


def test_duplicate_ids_including_companions_are_refused() -> None:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="f-failure", trigger="x")
    async def first(ctx: Any) -> None:
        return None

    with pytest.raises(InvalidUsageError, match="'f-failure' is already declared"):
        @app.function(id="f", trigger="y", on_failure=lambda ctx: None)
        async def second(ctx: Any) -> None:
            return None
    assert list(app.functions) == ["f-failure"]  # nothing half-declared
