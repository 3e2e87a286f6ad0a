"""An Inngest function config's debounce and batchEvents as Stepline's flow control settings,
refused with InvalidArgument naming the field (in the SDKs' spelling) when Stepline cannot
honour them."""

from __future__ import annotations

from typing import Any

import pytest

from stepline_server.bridge.inngest_register import registration
from stepline_server.errors import InvalidArgument
from stepline_server.flow import Batching, Debounce


def _register(**settings: Any) -> Any:
    fn = {"id": "shop-f", "triggers": [{"event": "shop/e"}], **settings}
    return registration({"appName": "shop", "url": "http://127.0.0.1:9/api/inngest",
                         "functions": [fn]}, dev=True)


def test_debounce_and_batch_events_are_enforced_settings() -> None:
    found = _register(debounce={"period": "5s", "key": "event.data.user", "timeout": "1m"})
    assert found.specs[0].flow.debounce == Debounce(period_ms=5000, key="event.data.user",
                                                    timeout_ms=60_000)
    found = _register(batchEvents={"maxSize": 10, "timeout": "2s"})
    assert found.specs[0].flow.batching == Batching(max_size=10, timeout_ms=2000)
    found = _register(batchEvents={"maxSize": 10})  # Inngest's default timeout
    assert found.specs[0].flow.batching == Batching(max_size=10, timeout_ms=60_000)


@pytest.mark.parametrize(("settings", "field"), [
    ({"batchEvents": {"maxSize": 10, "timeout": "2s", "if": "event.data.x == 1"}},
     "functions[0].batchEvents.if"),
    ({"batchEvents": {"maxSize": "ten", "timeout": "2s"}}, "functions[0].batchEvents.maxSize"),
    ({"batchEvents": {"maxSize": 10, "timeout": "1h"}}, "functions[0].batchEvents.timeout"),
    ({"debounce": {"period": "soon"}}, "functions[0].debounce.period"),
    ({"debounce": {"period": "5s", "key": "event.data.("}}, "functions[0].debounce.key"),
    ({"debounce": {"period": "5s"}, "batchEvents": {"maxSize": 10, "timeout": "2s"}},
     "functions[0].batchEvents"),
])
def test_settings_stepline_cannot_honour_are_refused(settings: dict[str, Any],
                                                     field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _register(**settings)
    assert caught.value.field == field, caught.value
