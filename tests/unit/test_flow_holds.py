"""engine/holds.describe: what a held queued run says, for each reason, before and after its
time."""

from __future__ import annotations

import json

import pytest

from stepline_server.engine.holds import describe
from stepline_server.flow import Batching, FlowControl
from stepline_server.store.holds import Hold

NOW = 1_000_000
CONFIG = json.dumps({"flow": FlowControl(batching=Batching(max_size=5, timeout_ms=1000))
                     .to_json()})


def hold(reason: str, due: int, *, key_value: str | None = None, config: str | None = None,
         events: int = 0) -> Hold:
    return Hold(reason=reason, due_at_ms=due, key_value=key_value, config=config, events=events)


@pytest.mark.parametrize(("held", "told"), [
    (hold("concurrency", 2**62, key_value="acme"), ("waiting for concurrency key acme", None)),
    (hold("concurrency", 2**62, key_value=""), ("waiting for concurrency", None)),
    (hold("throttle", NOW + 5), ("throttled", NOW + 5)),
    (hold("debounce", NOW + 5), ("debounced", NOW + 5)),
    (hold("priority", NOW + 5), ("delayed by priority", NOW + 5)),
    (hold("batch", NOW + 5, config=CONFIG, events=3), ("batching 3/5", NOW + 5)),
])
def test_each_reason_is_told(held: Hold, told: tuple[str, int | None]) -> None:
    assert describe(held, NOW) == told


@pytest.mark.parametrize("reason", ["throttle", "debounce", "priority", "batch"])
def test_a_timed_hold_whose_time_came_is_not_held(reason: str) -> None:
    """The run is due: it only waits for a worker, like any run."""
    assert describe(hold(reason, NOW, config=CONFIG), NOW) is None
