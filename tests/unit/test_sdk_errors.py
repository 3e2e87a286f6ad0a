"""Bad arguments to the SDK's public API raise InvalidUsageError (a ValueError too), naming the
argument and what was expected."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from stepline import InvalidUsageError, NonRetriableError, RetryAfterError, Stepline, Worker


def _app_with_a_function() -> Stepline:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="f", trigger="t/go")
    async def handler(ctx: Any) -> None:
        return None

    return app


@pytest.mark.parametrize("app_id", ["", None, 7])
def test_an_app_needs_an_id(app_id: Any) -> None:
    with pytest.raises(InvalidUsageError, match=r"app_id: expected a non-empty string; got "):
        Stepline(app_id)


@pytest.mark.parametrize("slots", [0, -1, True, 2.0, "4"])
def test_a_worker_needs_at_least_one_slot(slots: Any) -> None:
    app = _app_with_a_function()
    with pytest.raises(InvalidUsageError, match=r"slots: expected an integer of at least 1; got"):
        app.worker(slots=slots)
    with pytest.raises(InvalidUsageError, match="slots"):
        Worker(app, slots=slots)


def test_a_worker_needs_functions_to_serve() -> None:
    app = Stepline("empty", url="127.0.0.1:1")
    with pytest.raises(InvalidUsageError, match=r"app 'empty' has no functions to serve"):
        app.worker()


@pytest.mark.parametrize("delay", [math.nan, math.inf, "soon", None])
def test_retry_after_needs_a_finite_delay(delay: Any) -> None:
    with pytest.raises(InvalidUsageError, match=r"delay: expected a finite number of "
                                                r"seconds or a timedelta; got "):
        RetryAfterError("429", delay)


def test_retry_after_takes_seconds_or_a_timedelta() -> None:
    assert RetryAfterError("429", 0).delay_seconds == 0
    assert RetryAfterError("429", 2.5).delay_seconds == 2.5
    assert RetryAfterError("429", timedelta(minutes=1)).delay_seconds == 60


@pytest.mark.parametrize("delay", [-0.5, timedelta(seconds=-1)])
def test_a_retry_after_a_time_already_past_is_due_at_once(delay: Any) -> None:
    assert RetryAfterError("429", delay).delay_seconds == 0


def test_invalid_usage_is_still_a_value_error_and_not_retried() -> None:
    # Code that caught the ValueError these calls used to raise keeps working.
    with pytest.raises(ValueError, match="app_id"):
        Stepline("")
    assert issubclass(InvalidUsageError, NonRetriableError)


@pytest.mark.parametrize(("event", "message"), [
    ({"name": "e", "data": {"x": math.inf}}, r"event\.data: not JSON-serializable"),
    ({"name": "e" * 257}, r"event\.name: longer than 256 characters"),
    ({"name": "e\x00"}, r"event\.name: contains a NUL character"),
    ({"name": "e", "id": "i" * 129}, r"event\.id: longer than 128 characters"),
])
def test_events_the_server_would_refuse_are_refused_before_sending(event: dict[str, Any],
                                                                  message: str) -> None:
    app = Stepline("app", url="127.0.0.1:1")  # nothing listens: the check comes first
    with pytest.raises(InvalidUsageError, match=message):
        app.send_sync(event["name"], event.get("data", {}), id=event.get("id"))
