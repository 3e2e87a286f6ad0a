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
    FunctionSpec(id="plain", name="plain", triggers=(EventTrigger("user/signup"),), retries=3),
    FunctionSpec(id="full", name="Full name", triggers=(
        EventTrigger("order/paid", 'event.data.plan == "pro"'),
        CronTrigger("0 9 * * MON", "Europe/Paris"), CronTrigger("*/5 * * * *")), retries=0,
        cancel_on=(CancelOn("order/refunded", "event.data.id == async.data.id", 3_600_000),
                   CancelOn("order/voided")), start_timeout_ms=60_000, finish_timeout_ms=None),
    FunctionSpec(id="finish-only", name="finish-only", triggers=(EventTrigger("e"),),
                 retries=100, finish_timeout_ms=1),
])
def test_config_round_trip(spec: FunctionSpec) -> None:
    assert function_spec_from_config(spec.id, spec.config_json()) == spec
