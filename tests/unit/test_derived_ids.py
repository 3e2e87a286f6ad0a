"""Ids that the SDK and the server derive on their own must agree: the id of an event a step sends
without one (the server derives it when the SDK left it out; the SDK, for its replay), and the
span id of a step's attempt (the worker parents its spans under the server's)."""

from __future__ import annotations

import random
import string

import pytest

from stepline import _events as sdk_events
from stepline import _tracing as sdk_tracing
from stepline_server import ids
from stepline_server.telemetry import traceparent

_ALPHABET = string.ascii_letters + string.digits + ":/_.-é "


def _text(rng: random.Random, longest: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, longest)))


@pytest.mark.parametrize("seed", range(20))
def test_the_sdk_and_the_server_derive_the_same_ids(seed: int) -> None:
    rng = random.Random(seed)
    run_id, step_id = ids.new_id(), _text(rng, 40)
    index, lease = rng.randint(0, 1000), rng.randint(1, 2**40)
    assert sdk_events.sent_event_id(run_id, step_id, index) == ids.sent_event_id(
        run_id, step_id, index)
    assert sdk_tracing.step_span_id(run_id, step_id, lease) == traceparent.step_span_id(
        run_id, step_id, lease)


def test_derived_ids_depend_on_every_part() -> None:
    base = ids.sent_event_id("r", "s", 0)
    assert len({base, ids.sent_event_id("r", "s", 1), ids.sent_event_id("r", "t", 0),
                ids.sent_event_id("q", "s", 0)}) == 4
    assert ids.invoke_event_id("r", "s") != ids.invoke_event_id("r", "t")
