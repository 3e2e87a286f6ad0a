"""`@app.function(...)` flow control options: the FunctionConfig fields they produce, and the
server's bounds and exclusions checked at decoration time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from google.protobuf import json_format

from stepline import (
    Batch,
    Concurrency,
    Debounce,
    Function,
    InvalidUsageError,
    Priority,
    RateLimit,
    Singleton,
    Stepline,
    Throttle,
)
from stepline.v1 import common_pb2


def _declare(**options: Any) -> Function:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="f", trigger=options.pop("trigger", "e"), **options)
    async def handler(ctx: Any) -> str:
        return "ok"

    return handler


def _config(**options: Any) -> dict[str, Any]:
    """The flow control fields of the FunctionConfig, as JSON (durations as "Ns")."""
    config = json_format.MessageToDict(_declare(**options).to_proto())
    return {k: v for k, v in config.items() if k not in {"id", "name", "retries", "triggers"}}


def test_no_flow_control_sets_no_field() -> None:
    config = _declare().to_proto()
    for name in ("throttle", "rate_limit", "debounce", "priority", "batch_events", "singleton"):
        assert not config.HasField(name)
    assert not config.concurrency and not config.idempotency


def test_every_option_with_its_class() -> None:
    assert _config(
        concurrency=[Concurrency(5, key="event.data.tenant"),
                     Concurrency(100, key='"shared"', scope="env")],
        throttle=Throttle(10, "1m", burst=3, key="event.data.tenant"),
        rate_limit=RateLimit(1, timedelta(hours=1), key="event.data.user"),
        debounce=Debounce("30s", key="event.data.doc", timeout="5m"),
        priority=Priority(run="event.data.vip ? 120 : 0"),
        idempotency="event.data.order_id",
        singleton=Singleton("cancel", key="event.data.user"),
    ) == {
        "concurrency": [{"limit": 5, "key": "event.data.tenant", "scope": "SCOPE_FN"},
                        {"limit": 100, "key": '"shared"', "scope": "SCOPE_ENV"}],
        "throttle": {"limit": 10, "period": "60s", "burst": 3, "key": "event.data.tenant"},
        "rateLimit": {"limit": 1, "period": "3600s", "key": "event.data.user"},
        "debounce": {"period": "30s", "key": "event.data.doc", "timeout": "300s"},
        "priority": {"run": "event.data.vip ? 120 : 0"},
        "idempotency": "event.data.order_id",
        "singleton": {"key": "event.data.user", "mode": "MODE_CANCEL"},
    }


def test_shorthands_and_dicts() -> None:
    assert _config(concurrency=5, batch_events={"max_size": 10, "timeout": 2}) == {
        "concurrency": [{"limit": 5, "scope": "SCOPE_FN"}],
        "batchEvents": {"maxSize": 10, "timeout": "2s"},
    }
    assert _config(priority="event.data.p") == {"priority": {"run": "event.data.p"}}
    assert _config(throttle={"limit": 1, "period": 1}, singleton={"mode": "skip"}) == {
        "throttle": {"limit": 1, "period": "1s", "burst": 1},
        "singleton": {"mode": "MODE_SKIP"},
    }
    config = _declare(batch_events=Batch(3, "1s", key="event.data.k")).to_proto()
    assert config.batch_events == common_pb2.Batching(max_size=3, key="event.data.k",
                                                      timeout={"seconds": 1})
    # A burst of 0 (no starts beyond the steady rate) is sent as such, not as "unset".
    assert _declare(throttle=Throttle(2, "1s", burst=0)).to_proto().throttle.HasField("burst")


@pytest.mark.parametrize(("options", "message"), [
    ({"concurrency": 0}, r"^function 'f': concurrency\.limit: must be an integer between 1 "
                         r"and 100000; got 0"),
    ({"concurrency": [1, 2, 3]}, r"^function 'f': concurrency: at most 2 limits; got 3"),
    ({"concurrency": [5, Concurrency(2, scope="env")]},
     r"^function 'f': concurrency\[1\]\.key: a key is required with scope 'env'"),
    ({"concurrency": Concurrency(2, key="k", scope="app")},  # type: ignore[arg-type]
     r"concurrency\.scope: expected \"fn\", \"env\" or \"account\""),
    ({"concurrency": "5"}, r"concurrency: expected stepline\.Concurrency\(\.\.\.\) or a dict"),
    ({"concurrency": {"limit": 1, "keys": "x"}}, r"concurrency: unknown key\(s\) \['keys'\]"),
    ({"throttle": Throttle(0, "1s")}, r"^function 'f': throttle\.limit: must be an integer"),
    ({"throttle": Throttle(1, "500ms")},
     r"^function 'f': throttle\.period: must be between 1s and 7d; got '500ms'"),
    ({"throttle": Throttle(1, "8d")}, r"throttle\.period: must be between 1s and 7d"),
    ({"throttle": Throttle(1, "1s", burst=-1)}, r"throttle\.burst: must be an integer between 0"),
    ({"throttle": {"limit": 1}}, r"^function 'f': throttle: missing a required key"),
    ({"rate_limit": RateLimit(1, "2d")},
     r"^function 'f': rate_limit\.period: must be between 1s and 1d"),
    ({"rate_limit": RateLimit(1, "soon")}, r"rate_limit\.period: expected seconds"),
    ({"debounce": Debounce("0.5s")}, r"^function 'f': debounce\.period: must be between 1s"),
    ({"debounce": Debounce("10s", timeout="5s")},
     r"^function 'f': debounce\.timeout: must be between 10s and 7d; got '5s'"),
    ({"batch_events": Batch(1, "1s")},
     r"^function 'f': batch_events\.max_size: must be an integer between 2 and 1000; got 1"),
    ({"batch_events": Batch(5, "11m")},
     r"^function 'f': batch_events\.timeout: must be between 1s and 10m"),
    ({"batch_events": Batch(5, "1s"), "debounce": Debounce("1s")},
     r"^function 'f': batch_events cannot be combined with debounce"),
    ({"batch_events": Batch(5, "1s"), "priority": "1"},
     r"batch_events cannot be combined with priority"),
    ({"batch_events": Batch(5, "1s"), "singleton": Singleton()},
     r"batch_events cannot be combined with singleton"),
    ({"batch_events": Batch(5, "1s"), "cancel_on": [{"event": "stop"}]},
     r"batch_events cannot be combined with cancel_on"),
    ({"singleton": Singleton("drop")},  # type: ignore[arg-type]
     r"^function 'f': singleton\.mode: expected \"skip\" or \"cancel\"; got 'drop'"),
    ({"idempotency": ""}, r"^function 'f': idempotency: expected a CEL expression"),
    ({"priority": Priority(run="x" * 1025)}, r"^function 'f': priority\.run: at most 1024"),
    ({"throttle": Throttle(1, "1s", key=7)},  # type: ignore[arg-type]
     r"throttle\.key: expected a CEL expression"),
])
def test_bad_values_are_refused_at_decoration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        _declare(**options)


def test_failure_companion_has_no_flow_control() -> None:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="f", trigger="e", concurrency=1, on_failure=lambda ctx: None)
    async def handler(ctx: Any) -> None:
        return None

    assert len(app.functions["f"].to_proto().concurrency) == 1
    assert not app.functions["f-failure"].to_proto().concurrency
