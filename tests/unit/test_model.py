"""A stored function's config (FunctionSpec.config_json) reads back as the spec declared."""

from __future__ import annotations

import pytest

from stepline_server.model import (
    CancelOn,
    CronTrigger,
    EventTrigger,
    FunctionSpec,
    function_spec_from_config,
)


@pytest.mark.parametrize("spec", [
    FunctionSpec("plain", "plain", (EventTrigger("user/signup"),), 3),
    FunctionSpec("full", "Full name", (
        EventTrigger("order/paid", 'event.data.plan == "pro"'),
        CronTrigger("0 9 * * MON", "Europe/Paris"), CronTrigger("*/5 * * * *")), 0,
        (CancelOn("order/refunded", "event.data.id == async.data.id", 3_600_000),
         CancelOn("order/voided")), 60_000, None),
    FunctionSpec("finish-only", "finish-only", (EventTrigger("e"),), 100, (), None, 1),
])
def test_config_round_trip(spec: FunctionSpec) -> None:
    assert function_spec_from_config(spec.id, spec.config_json()) == spec
